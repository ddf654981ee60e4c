"""The pieces of agent/metrics that need no sidecar: caps, bucket placement, names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import semconv
from agent.metrics.requests import OTHER, CappedLabel, HistogramSeries, RequestMetrics, error_type
from agent.records import UsageRecord


def test_a_capped_label_keeps_the_first_values_and_forgets_the_rest() -> None:
    cap = CappedLabel(2)
    assert [cap(v) for v in ("a", "b", "c", "a", None, "", "d", "b")] == [
        "a",
        "b",
        OTHER,
        "a",
        "",
        "",
        OTHER,
        "b",
    ]
    assert len(cap.seen) == 4  # a, b and the two spellings of "none": c and d were not remembered


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    h = HistogramSeries((1, 4, 16))
    for v in (1, 2, 4, 16, 17):
        h.observe(("x",), v)
    fam = h.family("t", "t", ("l",))
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name == "t_bucket"}
    assert buckets == {"1.0": 1, "4.0": 3, "16.0": 4, "+Inf": 5}


def test_error_type_is_the_status_or_the_outcome() -> None:
    assert error_type(UsageRecord("a", status=502, outcome="upstream_error")) == "502"
    assert error_type(UsageRecord("b", status=200, outcome="client_cancelled")) == "client_cancelled"


def test_provider_names_and_the_opt_in() -> None:
    assert [semconv.provider_name(k) for k in ("Ollama", "vLLM", "llama.cpp", None, "sglang")] == [
        "ollama",
        "vllm",
        "llama_cpp",
        "openai_compatible",
        "openai_compatible",
    ]
    assert semconv.latest_experimental({"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"})
    assert not semconv.latest_experimental({"OTEL_SEMCONV_STABILITY_OPT_IN": "http"})


def test_the_exposition_parses() -> None:
    metrics = RequestMetrics(latest_semconv=False)
    rec = UsageRecord("r", team="quant", model="m", operation="chat", prompt_tokens=3, completion_tokens=5)
    rec.latency_ms, rec.ttft_ms = 120.0, 20.0
    metrics.observe(rec)
    registry = CollectorRegistry()
    registry.register(metrics)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    tpot = fams["gen_ai_server_time_per_output_token_seconds"]
    assert [s.value for s in tpot.samples if s.name.endswith("_sum")] == [0.025]  # 100 ms over 4 tokens
