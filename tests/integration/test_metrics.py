"""/metrics of a running sidecar in front of the simulated Ollama server (which speaks both
dialects): every family from the start, and figures that agree with the stored records."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

SECRET = "metrics-test-secret-that-is-long-enough-for-hs256"

FAMILIES = {
    "sidemeter_requests": "counter",
    "sidemeter_tokens": "counter",
    "sidemeter_cost": "counter",
    "sidemeter_cost_currency_info": "gauge",
    "sidemeter_quota_remaining_ratio": "gauge",
    "sidemeter_requests_in_flight": "gauge",
    "sidemeter_auth_failures": "counter",
    "sidemeter_upstream_up": "gauge",
    "sidemeter_upstream_probe_duration_seconds": "histogram",
    "sidemeter_store_queue_depth": "gauge",
    "sidemeter_store_spilled_records": "gauge",
    "sidemeter_store_write_duration_seconds": "histogram",
    "sidemeter_store_pruned_records": "counter",
    "sidemeter_usage_estimated": "counter",
    "sidemeter_build_info": "gauge",
    "gen_ai_client_token_usage": "histogram",
    "gen_ai_server_request_duration_seconds": "histogram",
    "gen_ai_server_time_to_first_token_seconds": "histogram",
    "gen_ai_server_time_per_output_token_seconds": "histogram",
}


async def scrape(side: RunningSidecar) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics: sample name -> sorted label items -> value."""
    async with httpx.AsyncClient() as client:
        r = await client.get(side.ops_url + "/metrics")
    assert r.status_code == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, {}).items() if match.items() <= dict(labels).items())


async def test_every_family_is_there_from_the_start(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., object]
) -> None:
    side: RunningSidecar = await start_sidecar(sim_ollama.url)  # type: ignore[assignment]
    async with httpx.AsyncClient() as client:
        text = (await client.get(side.ops_url + "/metrics")).text
    types = {fam.name: fam.type for fam in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, f"{name} missing or not a {kind}"
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text
    samples = await scrape(side)
    # The closed label set is there at 0: 5 outcomes x 5 operations x 2 dialects.
    requests = samples["sidemeter_requests_total"]
    assert len(requests) == 50 and not any(requests.values())
    assert samples["sidemeter_requests_in_flight"][()] == 0
    assert samples["sidemeter_usage_estimated_total"][()] == 0
    assert samples["sidemeter_build_info"][(("version", __import__("agent").__version__),)] == 1


def _token(user: str, team: str) -> str:
    return issue_token(SigningKey.from_secret(SECRET), user, team=team)


async def test_counters_agree_with_the_stored_records(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., object], tmp_path: Path
) -> None:
    side: RunningSidecar = await start_sidecar(sim_ollama.url, auth="jwt", jwt_secret=SECRET)  # type: ignore[assignment]
    before = await scrape(side)
    quant, evals = _token("ann", "quant"), _token("bob", "eval")
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}]}
    sent: list[tuple[str, str, dict[str, object], dict[str, str]]] = [
        ("/api/chat", quant, {**chat, "stream": True}, {}),
        ("/api/chat", quant, {**chat, "stream": False}, {"X-Sim-Tokens": "7"}),
        (
            "/api/generate",
            evals,
            {"model": "llama3.2", "prompt": "hi", "stream": True},
            {"X-Sim-Tokens": "5"},
        ),
        ("/v1/chat/completions", evals, {**chat, "stream": True}, {"X-Sim-Tokens": "9"}),
        ("/v1/chat/completions", quant, {**chat, "stream": False}, {}),
        ("/v1/chat/completions", quant, {**chat, "stream": True}, {"X-Sim-Fault": "error-500"}),
        ("/api/chat", evals, {**chat, "stream": True}, {"X-Sim-Fault": "cut"}),
        ("/v1/embeddings", evals, {"model": "nomic-embed-text", "input": "vector me"}, {}),
        ("/api/tags", quant, {}, {}),
        ("/v1/chat/completions", "", {**chat, "stream": False}, {}),  # no token: 401
        ("/api/chat", "not-a-jwt", {**chat, "stream": False}, {}),  # malformed: 401
    ]
    ids = []
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
        for path, token, body, headers in sent:
            rid = str(uuid.uuid4())
            ids.append(rid)
            h = {"X-Request-ID": rid, **headers}
            if token:
                h["Authorization"] = f"Bearer {token}"
            try:
                if body:
                    await client.post(path, json=body, headers=h)
                else:
                    await client.get(path, headers=h)
            except httpx.HTTPError:
                pass  # the cut stream
    for rid in ids:
        await side.record(rid)  # submitted and stored
    after = await scrape(side)

    db = sqlite3.connect(side.sidecar.config.db.split(":///", 1)[1])
    rows = db.execute(
        "SELECT outcome, operation, dialect, team, model, prompt_tokens, completion_tokens, usage_source "
        f"FROM usage_logs WHERE request_id IN ({','.join('?' * len(ids))})",
        ids,
    ).fetchall()
    db.close()
    assert len(rows) == len(sent)

    def delta(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    assert delta("sidemeter_requests_total") == len(rows)
    for outcome in {r[0] for r in rows}:
        assert delta("sidemeter_requests_total", outcome=outcome) == sum(r[0] == outcome for r in rows)
    for dialect in ("ollama", "openai"):
        assert delta("sidemeter_requests_total", dialect=dialect) == sum(r[2] == dialect for r in rows)
    for team in ("quant", "eval"):
        for kind, col in (("input", 5), ("output", 6)):
            stored = sum(r[col] or 0 for r in rows if r[3] == team)
            assert delta("sidemeter_tokens_total", type=kind, team=team) == stored, (team, kind)
    assert delta("sidemeter_tokens_total", type="output") == sum(r[6] or 0 for r in rows)
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="output") == sum(
        r[6] or 0 for r in rows if r[1] != "other"
    )
    assert delta("sidemeter_usage_estimated_total") == sum(r[7] == "estimated" for r in rows)
    assert delta("sidemeter_auth_failures_total") == sum(r[0] == "rejected" for r in rows) == 2
    inference = [r for r in rows if r[1] != "other"]
    assert delta("gen_ai_server_request_duration_seconds_count") == len(inference)
    failed = delta("gen_ai_server_request_duration_seconds_count", error_type="500")
    assert failed == 1
    # Only Ollama answers /api/*: the /v1 requests after it are labelled ollama too.
    assert delta("gen_ai_server_request_duration_seconds_count", gen_ai_provider_name="ollama") > 0
    assert after["sidemeter_requests_in_flight"][()] == 0


async def test_team_and_model_labels_are_capped(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., object]
) -> None:
    side: RunningSidecar = await start_sidecar(
        sim_ollama.url, auth="jwt", jwt_secret=SECRET, metrics_max_teams=2, metrics_max_models=1
    )  # type: ignore[assignment]
    ids = []
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
        for i in range(5):
            rid = str(uuid.uuid4())
            ids.append(rid)
            body = {"model": ("llama3.2:latest", "sim-model:latest")[i % 2], "prompt": "hi", "stream": False}
            headers = {"X-Request-ID": rid, "Authorization": f"Bearer {_token('u', f'team-{i}')}"}
            assert (await client.post("/api/generate", json=body, headers=headers)).status_code == 200
    for rid in ids:
        await side.record(rid)
    tokens = (await scrape(side))["sidemeter_tokens_total"]
    teams = {dict(k)["team"] for k in tokens}
    models = {dict(k)["model"] for k in tokens}
    assert teams == {"team-0", "team-1", "other"}
    assert models == {"llama3.2:latest", "other"}


@pytest.mark.parametrize("value", ["gen_ai_latest_experimental", "http,gen_ai_latest_experimental"])
async def test_opt_in_emits_the_latest_token_instruments(
    value: str,
    sim_ollama: SimulatedLLM,
    start_sidecar: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", value)
    side: RunningSidecar = await start_sidecar(sim_ollama.url)  # type: ignore[assignment]
    rid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
        body = {"model": "llama3.2", "prompt": "hi", "stream": False}
        await client.post("/api/generate", json=body, headers={"X-Request-ID": rid, "X-Sim-Tokens": "6"})
    rec = await side.record(rid)
    samples = await scrape(side)
    assert "gen_ai_client_token_usage_sum" not in samples  # replaced, as the convention says
    assert total(samples, "gen_ai_client_inference_usage_output_tokens_total") == rec.completion_tokens == 6
    assert total(samples, "gen_ai_client_inference_usage_input_tokens_total") == rec.prompt_tokens
    assert total(samples, "gen_ai_client_inference_operation_output_tokens_count") == 1
    assert total(samples, "gen_ai_server_request_duration_seconds_count") == 1  # stands in both
