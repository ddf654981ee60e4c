"""Price each finished request: its record's `cost` by the `[[prices]]` table.

Runs after the meter (which has counted the tokens and timed the request) and before the quota
(which reconciles a cost budget with the exact cost) and the recorder (which stores it), in the
hook that ends the flow: `response` or `error`, whichever comes first. A dict lookup per model
once a model has been seen, a few multiplications: nothing else on the request path.

Standalone: `mitmdump ... -s addons/meter.py -s addons/price.py -s addons/record.py` reads the
[[prices]] tables and the currency of ./sidemeter.toml.
"""

from __future__ import annotations

from mitmproxy import exceptions, http

from addons.flowstate import state_of
from agent.config import ConfigError, load
from agent.prices import PriceTable


class Pricer:
    """Sets `cost` on the record of every flow as it ends (None when no price matches its model).

    The runtime passes its price table; under `mitmdump -s` it comes from ./sidemeter.toml."""

    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table
        self._from_config = table is None

    def configure(self, updated: set[str]) -> None:
        if not self._from_config:
            return
        self._from_config = False  # the file is read once, when the addon is loaded
        try:
            self.table = load().price_table
        except ConfigError as e:
            raise exceptions.OptionsError(f"prices: {e}") from None

    def response(self, flow: http.HTTPFlow) -> None:
        self._price(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._price(flow)

    def _price(self, flow: http.HTTPFlow) -> None:
        table = self.table
        if table is None:
            return
        state = state_of(flow)
        if state.recorded:
            return  # an error after the response: the record has gone with its cost
        rec = state.record
        rec.cost = table.cost_of(rec)


addons = [Pricer()]
