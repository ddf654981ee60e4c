"""The pricer's hooks on crafted flows: the record's cost from the meter's counts, once per
flow, and its table read from ./sidemeter.toml under plain `mitmdump -s`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons.flowstate import state_of
from addons.price import Pricer
from agent.prices import Price, PriceTable


def test_the_record_is_priced_when_the_flow_ends_and_only_then() -> None:
    pricer = Pricer(PriceTable([Price("m*", input_per_million=3, output_per_million=6)], "EUR"))
    f = tflow.tflow(resp=True)
    rec = state_of(f).record
    rec.model, rec.prompt_tokens, rec.completion_tokens = "m1", 1000, 500
    pricer.response(f)
    assert rec.cost == (1000 * 3 + 500 * 6) / 1e6
    state_of(f).recorded = True  # the recorder has stored it: an error after it changes nothing
    rec.completion_tokens = 900
    pricer.error(f)
    assert rec.cost == (1000 * 3 + 500 * 6) / 1e6
    other = tflow.tflow(err=True)
    state_of(other).record.model = "unpriced"
    pricer.error(other)
    assert state_of(other).record.cost is None


def test_standalone_it_reads_the_prices_of_sidemeter_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sidemeter.toml").write_text('currency = "EUR"\n[[prices]]\nmodel = "m"\ngpu_hour = 3.6\n')
    pricer = Pricer()
    with taddons.context(pricer) as tctx:
        tctx.configure(pricer)
        assert pricer.table is not None and pricer.table.currency == "EUR"
        assert pricer.table.price_for("m").gpu_hour == 3.6  # type: ignore[union-attr]
    (tmp_path / "sidemeter.toml").write_text('[[prices]]\nmodel = "m"\ngpu_hour = 3.6\n')
    broken = Pricer()
    with (
        taddons.context(broken) as tctx,
        pytest.raises(exceptions.OptionsError, match="prices need a currency"),
    ):
        tctx.configure(broken)
