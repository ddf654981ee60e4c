"""Per-request metrics, fed from the finished usage records.

`RequestMetrics.observe` is a `Recorder` listener: it runs on the event loop once per request,
so it adds numbers to plain dicts and lists and nothing else; the Prometheus families are built
from them when `/metrics` is scraped (`collect`). prometheus_client's own Counter and Histogram
take a lock and walk their buckets in Python on every update: about 3.5 µs per counter and 7 µs
per histogram observation on this project's machines, ~40 µs for the dozen updates of one
request, against ~2 µs for the same updates here (`bench/metrics_listener.py`). Updates and
scrapes both run on the event loop's thread, so nothing here needs a lock; `collect` copies each
dict before walking it all the same, so a scrape from another thread cannot trip over an update.

Label values a caller controls (team, model, user) are capped: the first N distinct values keep
their name, later ones are counted under `other`, so made-up claims or model names cannot grow
the series without bound.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import product
from typing import Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from agent.metrics import semconv
from agent.records import Dialect, Operation, Outcome, UsageRecord, UsageSource

OTHER: Final = "other"  # the label value of everything past a cap
NONE: Final = ""  # no team, no model: an empty label, which Prometheus treats as absent

GEN_AI_LABELS: Final = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "team")
TOKEN_TYPES: Final = ("input", "output", "cached", "reasoning")


class StoreState(Protocol):
    """What the store gauges read (agent.store.writer.UsageStore)."""

    @property
    def queue_depth(self) -> int: ...

    @property
    def spilled_total(self) -> int: ...


class CappedLabel:
    """The first `limit` distinct values of a label as themselves, every later one as `other`.
    Values past the cap are not remembered, so the table cannot grow past `limit`."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str | None, str] = {None: NONE, "": NONE}

    def __call__(self, value: str | None) -> str:
        label = self.seen.get(value)
        if label is None:
            if len(self.seen) - 2 >= self.limit:
                return OTHER
            label = self.seen[value] = value  # type: ignore[assignment]
        return label


class Buckets:
    """One histogram series: a count per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)
        self.sum = 0.0


class HistogramSeries:
    """Every series of one histogram family, by label values."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[tuple[str, ...], Buckets] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        b = self.series.get(labels)
        if b is None:
            b = self.series[labels] = Buckets(len(self.bounds))
        b.counts[bisect_left(self.bounds, value)] += 1  # bucket `le` holds value <= le
        b.sum += value

    def family(self, name: str, doc: str, label_names: Sequence[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=label_names)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, b in list(self.series.items()):
            counts, running, buckets = list(b.counts), 0, []
            for le, n in zip(les, counts, strict=True):
                running += n
                buckets.append((le, running))
            fam.add_metric(labels, buckets, b.sum)
        return fam


def _add(table: dict[tuple[str, ...], float], key: tuple[str, ...], amount: float) -> None:
    table[key] = table.get(key, 0) + amount


def _counter(name: str, doc: str, labels: Sequence[str], table: dict[tuple[str, ...], float]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, value in list(table.items()):
        fam.add_metric(key, value)
    return fam


def error_type(rec: UsageRecord) -> str:
    """`error.type` of a failed request: the HTTP status the client got when it is an error
    status (`429`, `502`), else the outcome (`client_cancelled`, `upstream_error` for a stream
    cut after a 200). Both are small closed sets."""
    if rec.status is not None and rec.status >= 400:
        return str(rec.status)
    return str(rec.outcome)


class RequestMetrics:
    """The per-request series of one sidecar, and the gauges read from it at scrape time."""

    def __init__(
        self,
        *,
        max_teams: int = 50,
        max_models: int = 50,
        user_label: bool = False,
        max_users: int = 100,
        latest_semconv: bool | None = None,
        in_flight: Callable[[], int] | None = None,
        store: StoreState | None = None,
        currency: str | None = None,
    ) -> None:
        self.team = CappedLabel(max_teams)
        self.model = CappedLabel(max_models)
        self.user = CappedLabel(max_users) if user_label else None
        self.latest = semconv.latest_experimental() if latest_semconv is None else latest_semconv
        self.in_flight = in_flight
        self.store = store
        self.currency = currency  # of the price table; None: no prices, no cost series
        # Until something identifies the server (the upstream prober, or an Ollama-only path
        # answered), an OpenAI-compatible upstream is just that.
        self.provider = semconv.OPENAI_COMPATIBLE
        # Every closed label set exists from the start at 0: rate() and alerts see a series
        # before the first request of each kind.
        self.requests: dict[tuple[str, ...], float] = dict.fromkeys(product(Outcome, Operation, Dialect), 0)
        self.tokens: dict[tuple[str, ...], float] = {}
        self.cost: dict[tuple[str, ...], float] = {}
        self.user_requests: dict[tuple[str, ...], float] = {}
        self.user_tokens: dict[tuple[str, ...], float] = {}
        self.estimated = 0
        self.duration = HistogramSeries(semconv.REQUEST_DURATION_BUCKETS)
        self.ttft = HistogramSeries(semconv.TIME_TO_FIRST_TOKEN_BUCKETS)
        self.tpot = HistogramSeries(semconv.TIME_PER_OUTPUT_TOKEN_BUCKETS)
        self.token_usage = HistogramSeries(semconv.TOKEN_BUCKETS)  # default names
        self.input_tokens = HistogramSeries(semconv.TOKEN_BUCKETS)  # latest names
        self.output_tokens = HistogramSeries(semconv.TOKEN_BUCKETS)
        self.usage: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in _USAGE_COUNTERS}

    def set_upstream_kind(self, kind: str | None) -> None:
        """What the upstream is ("ollama", "vllm", "llama.cpp", ...), once something probed it."""
        self.provider = semconv.provider_name(kind)

    # -- the hot path: one call per finished request ---------------------------------

    def observe(self, rec: UsageRecord) -> None:
        """Count one finished request (a `Recorder` listener)."""
        outcome, operation, dialect = rec.outcome, rec.operation, rec.dialect
        _add(self.requests, (outcome, operation, dialect), 1)
        team, model = self.team(rec.team), self.model(rec.model)
        p, c = rec.prompt_tokens, rec.completion_tokens
        tokens = self.tokens
        if p is not None:
            _add(tokens, ("input", model, team), p)
        if c is not None:
            _add(tokens, ("output", model, team), c)
        if rec.cached_tokens:
            _add(tokens, ("cached", model, team), rec.cached_tokens)
        if rec.reasoning_tokens:
            _add(tokens, ("reasoning", model, team), rec.reasoning_tokens)
        if rec.cost is not None:
            _add(self.cost, (team, model), rec.cost)
        if rec.usage_source == UsageSource.ESTIMATED:
            self.estimated += 1
        if self.user is not None:
            self._observe_user(rec, p, c)

        op = semconv.OPERATION_NAMES.get(operation)
        if op is None:
            return  # not a GenAI operation
        ok = outcome == Outcome.OK
        if dialect == Dialect.OLLAMA and ok:
            self.provider = semconv.OLLAMA  # only Ollama answers /api/*: its /v1 is Ollama too
        base = (op, self.provider, model, team)
        latency = rec.latency_ms
        if latency is not None:
            self.duration.observe((*base, "" if ok else error_type(rec)), latency / 1000)
            ttft = rec.ttft_ms
            if ok and ttft is not None:
                self.ttft.observe(base, ttft / 1000)
                if c is not None and c > 1 and latency > ttft:
                    self.tpot.observe(base, (latency - ttft) / 1000 / (c - 1))
        if self.latest:
            self._observe_latest(rec, base, p, c)
        else:
            if p is not None:
                self.token_usage.observe((*base, "input"), p)
            if c is not None:
                self.token_usage.observe((*base, "output"), c)

    def _observe_user(self, rec: UsageRecord, p: int | None, c: int | None) -> None:
        assert self.user is not None
        user = self.user(rec.user)
        _add(self.user_requests, (rec.outcome, user), 1)
        if p is not None:
            _add(self.user_tokens, ("input", user), p)
        if c is not None:
            _add(self.user_tokens, ("output", user), c)

    def _observe_latest(self, rec: UsageRecord, base: tuple[str, ...], p: int | None, c: int | None) -> None:
        # The counters are recorded for every inference operation, failed ones too, 0 when no
        # usage arrived; the convention then names the modality `unknown` (the sidecar never
        # knows it: servers report no modality breakdown).
        key = (*base, "unknown")
        usage = self.usage
        _add(usage["input"], key, p or 0)
        _add(usage["output"], key, c or 0)
        if rec.cached_tokens:
            _add(usage["cache_read"], key, rec.cached_tokens)
        if rec.reasoning_tokens:
            _add(usage["reasoning"], key, rec.reasoning_tokens)
        if p is not None:
            self.input_tokens.observe(base, p)
        if c is not None:
            self.output_tokens.observe(base, c)

    # -- scrape time -------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            "sidemeter_requests_total",
            "Requests that reached the sidecar, by outcome, operation and dialect (one per usage record).",
            ("outcome", "operation", "dialect"),
            self.requests,
        )
        yield _counter(
            "sidemeter_tokens_total",
            "Tokens by type (input, output; cached is part of input, reasoning part of output), "
            "model and team, as recorded on the usage records.",
            ("type", "model", "team"),
            self.tokens,
        )
        yield _counter(
            "sidemeter_cost_total",
            f"What requests cost by the [[prices]] table, in {self.currency or 'its currency (none set)'}, "
            "by team and model (requests to a model without a price are not counted).",
            ("team", "model"),
            self.cost,
        )
        currency = GaugeMetricFamily(
            "sidemeter_cost_currency_info",
            "Always 1; the currency of sidemeter_cost_total and of cost budgets as a label.",
            labels=("currency",),
        )
        if self.currency is not None:
            currency.add_metric((self.currency,), 1)
        yield currency
        yield _counter(
            "sidemeter_usage_estimated_total",
            "Requests whose token counts the sidecar estimated because the server reported none.",
            (),
            {(): self.estimated},
        )
        yield _counter(
            "sidemeter_user_requests_total",
            "Requests by outcome and user (only with metrics_user_label = true; "
            "users capped by metrics_max_users).",
            ("outcome", "user"),
            self.user_requests,
        )
        yield _counter(
            "sidemeter_user_tokens_total",
            "Input and output tokens by user (only with metrics_user_label = true).",
            ("type", "user"),
            self.user_tokens,
        )
        yield _gauge(
            "sidemeter_requests_in_flight",
            "Requests received and not finished yet (streams included).",
            self.in_flight() if self.in_flight else 0,
        )
        store = self.store
        yield _gauge(
            "sidemeter_store_queue_depth",
            "Usage records waiting in memory for the store's writer thread.",
            store.queue_depth if store else 0,
        )
        yield _gauge(
            "sidemeter_store_spilled_records",
            "Usage records written to spill files since start, because the queue was full or the "
            "database failing (loaded into the database later: nothing is dropped).",
            store.spilled_total if store else 0,
        )
        gen_ai_errors = (*GEN_AI_LABELS, "error_type")
        yield self.duration.family(
            "gen_ai_server_request_duration_seconds",
            "GenAI request duration as the sidecar saw it: request start to last byte "
            "(error_type set on failures).",
            gen_ai_errors,
        )
        yield self.ttft.family(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first generated content of successful streamed responses.",
            GEN_AI_LABELS,
        )
        yield self.tpot.family(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for successful streamed responses.",
            GEN_AI_LABELS,
        )
        if not self.latest:
            yield self.token_usage.family(
                "gen_ai_client_token_usage",
                "Number of input and output tokens used per GenAI operation.",
                (*GEN_AI_LABELS, "gen_ai_token_type"),
            )
            return
        latest = (*GEN_AI_LABELS, "gen_ai_token_modality")
        for key, (name, doc) in _USAGE_COUNTERS.items():
            yield _counter(name, doc, latest, self.usage[key])
        yield self.input_tokens.family(
            "gen_ai_client_inference_operation_input_tokens",
            "Input tokens per inference operation.",
            GEN_AI_LABELS,
        )
        yield self.output_tokens.family(
            "gen_ai_client_inference_operation_output_tokens",
            "Output tokens per inference operation.",
            GEN_AI_LABELS,
        )

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())


_USAGE_COUNTERS: Final = {
    "input": (
        "gen_ai_client_inference_usage_input_tokens_total",
        "Input (prompt) tokens used, including cached tokens.",
    ),
    "output": (
        "gen_ai_client_inference_usage_output_tokens_total",
        "Output (completion) tokens used, including reasoning tokens.",
    ),
    "cache_read": (
        "gen_ai_client_inference_usage_cache_read_input_tokens_total",
        "Input tokens served from the server's prompt cache (part of the input tokens).",
    ),
    "reasoning": (
        "gen_ai_client_inference_usage_reasoning_output_tokens_total",
        "Output tokens used for reasoning (part of the output tokens).",
    ),
}


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
