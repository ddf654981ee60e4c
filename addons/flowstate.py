"""One flow's state, kept on the flow under one `flow.metadata` key.

Every addon that needs to know what happened to a flow so far reads and writes this object:
auth puts the caller on the record, the meter adds what it parsed and counted, the recorder
counts the flow in flight and submits the record once. It is created by whichever addon
touches the flow first (`state_of`), so any of them also works alone under `mitmdump -s`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from mitmproxy import http

from addons import headers as hdr
from agent.records import REQUEST_ID_HEADER, UsageRecord, is_valid_request_id, new_request_id
from agent.wire.request import RequestInfo

if TYPE_CHECKING:
    from addons.meter import StreamRelay
    from agent.quota.ledger import Decision

KEY: Final = "sidemeter"
REQUEST_ID_KEY: Final = REQUEST_ID_HEADER.lower().encode()


class FlowState:
    """What the sidecar knows about one flow: created once per request, read by every hook."""

    __slots__ = (
        "id_replaced",
        "in_flight",
        "info",
        "quota",
        "record",
        "recorded",
        "stream",
        "usage_injected",
    )

    def __init__(self, record: UsageRecord) -> None:
        self.record = record  # the usage record, filled in as the exchange happens
        self.info: RequestInfo | None = None  # the parsed request, once the body is in
        self.stream: StreamRelay | None = None  # the per-chunk callback of a streamed response
        self.usage_injected = False  # we asked for usage: the stream needs the added chunk removed
        self.in_flight = False  # counted in the recorder's in-flight requests
        self.recorded = False  # the record went to the store: an error after a response must not count twice
        self.id_replaced = False  # the client's X-Request-ID was invalid: the response says so
        self.quota: Decision | None = None  # the quota's answer; its reservation until reconciled


def state_of(flow: http.HTTPFlow) -> FlowState:
    """The flow's state, created on first use (with the client's request id, or a new one)."""
    state = flow.metadata.get(KEY)
    if state is None:
        state = start(flow, hdr.get(flow.request.headers, REQUEST_ID_KEY))
    return state


def start(flow: http.HTTPFlow, sent_id: str | None) -> FlowState:
    """A new state for `flow` whose request came with request id `sent_id` (None: without); an
    invalid one is replaced by a generated id."""
    kept = sent_id if sent_id is not None and is_valid_request_id(sent_id) else None
    state = FlowState(UsageRecord(request_id=kept or new_request_id()))
    state.id_replaced = sent_id is not None and kept is None
    flow.metadata[KEY] = state
    return state


def record_of(flow: http.HTTPFlow) -> UsageRecord:
    """The flow's usage record (created on first use)."""
    return state_of(flow).record
