"""The Grafana dashboards, their provisioning and the Prometheus alert rules: well-formed, and
every query proven against a real Prometheus scraping a live sidecar.

Grafana itself is not run here: a dashboard's JSON is checked for what Grafana needs to show it
(datasource variable, unique ids, a query in every panel, variables that resolve), and each of
its PromQL expressions, with the variables substituted as Grafana would, must return data."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import functools
import itertools
import json
import math
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from agent.auth.issue import SigningKey, issue_token
from agent.quota.rules import rules_from_tables
from agent.sim import SimulatedLLM
from tests.support.paths import ROOT
from tests.support.prometheus import (
    CONFIG_DIR,
    PROMTOOL,
    RunningPrometheus,
    needs_prometheus,
    needs_promtool,
    prometheus_config,
    running_prometheus,
)
from tests.support.sidecar import RunningSidecar

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PROVISIONING = ROOT / "grafana" / "provisioning"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
OPS_PANEL = "sidemeter-ops-panel"
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# flavor -> the server's own input and output token counters
SERVER_TOKENS = {
    "vllm": ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"),
    "llamacpp": ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total"),
}
SECRET = "grafana-queries-test-secret-that-is-long-enough"
TEAMS_MODELS = (("quant", "sim-model"), ("finetune", "qwen2.5-coder"), ("eval", "sim-model"))
# Quota rules the traffic never gets near (it must not be refused): the quota gauges have series
# for the team rule's scope and each other user's, so the quota row and rules read real ones.
QUOTAS = rules_from_tables([{"team": "quant", "tokens_per_day": 10**9}, {"requests_per_minute": 10**6}])
QUOTA_METRIC = "sidemeter_quota_remaining_ratio"
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")
T = TypeVar("T")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, the ones inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p["type"] not in ("row", OPS_PANEL))


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard["templating"]["list"])


def referenced(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VARIABLE.finditer(text)}


def substitute(text: str, values: dict[str, str]) -> str:
    """`$name`, `${name}` and `${name:format}` replaced as Grafana does for a Prometheus query
    (a multi-value variable becomes a regex, so one value or `.*` stands for any selection)."""
    table = {**BUILTIN_VARIABLES, **values}
    return _VARIABLE.sub(lambda m: table[m.group(1) or m.group(2)], text)


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in query_panels(dashboard) for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((CONFIG_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# -- the files themselves ----------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_config_and_rules() -> None:
    assert PROMTOOL is not None
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=CONFIG_DIR, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=CONFIG_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_rule_has_for_severity_description_and_a_unit_test() -> None:
    tests = yaml.safe_load((CONFIG_DIR / "alerts_test.yml").read_text())["tests"]
    evaluations = [e for t in tests for e in t["alert_rule_test"]]
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name} has no `for`"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: say what to look at"
        assert rule["annotations"]["summary"], name
        mine = [e for e in evaluations if e["alertname"] == name]
        assert any(e["exp_alerts"] for e in mine), f"{name} is never tested firing"
        assert any(not e["exp_alerts"] for e in mine), f"{name} is never tested not firing"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dash = load(path)
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 39  # Grafana 10.4+
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"

    # No datasource uid is hard-coded: every reference goes through the `datasource` variable.
    def refs(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource" and not (isinstance(value, dict) and value.get("type") == "grafana"):
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    assert all(ref == DATASOURCE_REF for ref in refs(dash)), [r for r in refs(dash) if r != DATASOURCE_REF]
    for panel in all_panels(dash):
        if panel["type"] != "row":
            assert panel.get("datasource") == DATASOURCE_REF, panel["title"]
    for panel in query_panels(dash):
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert all(t["expr"].strip() and t["datasource"] == DATASOURCE_REF for t in targets), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]

    # Panels do not overlap: the top level (rows included) and the inside of each row.
    layers = [dash["panels"]] + [p["panels"] for p in dash["panels"] if p.get("panels")]
    for layer in layers:
        cells: set[tuple[int, int]] = set()
        for panel in layer:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            mine = set(itertools.product(range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])))
            assert not cells & mine, f"{panel['title']!r} overlaps another panel"
            cells |= mine

    # Variables: the Prometheus datasource first, then queries that use only the ones before.
    defined: set[str] = set()
    for var in variables(dash):
        if var["type"] == "datasource":
            assert var["query"] == "prometheus"
        else:
            assert var["type"] == "query" and var["multi"] and var["includeAll"], var["name"]
            assert var["allValue"] == ".*", f"{var['name']}: All must match series without the label too"
            assert _LABEL_VALUES.match(var["query"]["query"]), var["query"]
            assert referenced(var["query"]["query"]) <= defined, var["name"]
        defined.add(var["name"])
    assert "datasource" in defined and {"instance", "team", "model"} <= defined
    for title, expr in expressions(dash):
        assert referenced(expr) <= defined | set(BUILTIN_VARIABLES), f"{title}: {expr}"


def test_overview_embeds_the_ops_panel_and_the_server_row() -> None:
    dash = load(ROOT / "grafana" / "dashboards" / "sidemeter-overview.json")
    (ops,) = [p for p in all_panels(dash) if p["type"] == OPS_PANEL]
    assert ops["options"] == {"apiUrl": "http://localhost:9090", "refreshInterval": 30}
    (row,) = [p for p in dash["panels"] if p["type"] == "row" and p["title"] == "Server vs sidecar"]
    assert row["collapsed"] and row["panels"]
    exprs = " ".join(t["expr"] for p in row["panels"] for t in p["targets"])
    for metric in (*itertools.chain(*SERVER_TOKENS.values()), "sidemeter_tokens_total"):
        assert metric in exprs, metric


def test_overview_quota_row_shows_the_alert_thresholds() -> None:
    """The quota row plots the gauge the quota alerts read, with its colour steps at the two
    thresholds the alerts fire at, so what turns orange or red is what warns or pages."""
    dash = load(ROOT / "grafana" / "dashboards" / "sidemeter-overview.json")
    (row,) = [p for p in dash["panels"] if p["type"] == "row" and p["title"] == "Quotas"]
    after = [p for p in dash["panels"] if p["gridPos"]["y"] > row["gridPos"]["y"]]
    quota = [p for p in after if p["type"] != "row" and p["gridPos"]["y"] == row["gridPos"]["y"] + 1]
    assert {p["type"] for p in quota} == {"timeseries", "bargauge"}
    fired_at = sorted(
        float(m.group(1))
        for rule in alert_rules()
        if (m := re.fullmatch(rf"{QUOTA_METRIC} <= ([\d.]+)", rule["expr"].strip()))
    )
    assert fired_at == [0.05, 0.2]
    for panel in quota:
        assert all(QUOTA_METRIC in t["expr"] for t in panel["targets"]), panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percentunit", 0, 1)
        steps = defaults["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, *fired_at], panel["title"]
        assert [s["color"] for s in steps] == ["red", "orange", "green"], panel["title"]


def test_provisioning_matches_the_dashboards_and_the_readme() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] and source["url"].startswith("http")
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "sidemeter.yml").read_text())["providers"]
    assert provider["type"] == "file"
    ini = configparser.ConfigParser()
    ini.read(ROOT / "grafana" / "grafana.ini")
    assert OPS_PANEL in ini["plugins"]["allow_loading_unsigned_plugins"].split(",")
    plugin_json = ROOT / "grafana" / "plugins" / OPS_PANEL / "src" / "plugin.json"
    if plugin_json.exists():  # built on its own branch: the id the dashboard embeds must be its id
        assert json.loads(plugin_json.read_text())["id"] == OPS_PANEL
    # The README's docker run mounts what provisioning expects, where it expects it.
    readme = (ROOT / "README.md").read_text()
    for mount in (
        "grafana/provisioning:/etc/grafana/provisioning",
        f"grafana/dashboards:{provider['options']['path']}",
        f"grafana/plugins/{OPS_PANEL}/dist:/var/lib/grafana/plugins/{OPS_PANEL}",
        f"GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS={OPS_PANEL}",
    ):
        assert mount in readme, mount


# -- every query against a real Prometheus -------------------------------------------------


async def _traffic(side: RunningSidecar, stop: asyncio.Event) -> int:
    """Requests of several teams and models until `stop`: answered ones, streamed and not,
    server errors, cut streams (their usage is estimated) and refused tokens. Returns rounds."""
    key, wrong = (
        SigningKey.from_secret(SECRET),
        SigningKey.from_secret("another-secret-that-is-long-enough!!"),
    )
    rounds = 0
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:

        async def send(model: str, token: str | None, stream: bool, fault: str | None = None) -> int:
            headers = {"X-Request-ID": str(uuid.uuid4()), "X-Sim-Tokens": "5"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if fault:
                headers["X-Sim-Fault"] = fault
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            try:
                return (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code
            except httpx.HTTPError:
                return 0  # the cut stream: the sidecar passes the cut on

        while not stop.is_set():
            for team, model in TEAMS_MODELS:
                token = issue_token(key, f"u-{team}", team=team)
                assert await send(model, token, stream=True) == 200
                assert await send(model, token, stream=False) == 200
                assert await send(model, token, stream=True, fault="error-500") == 500
                assert await send(model, token, stream=False, fault="error-429") == 429
                await send(model, token, stream=True, fault="cut")
            for _ in range(5):  # a burst: rate()[5m] over the few seconds this runs must pass 0.1/s
                assert await send("sim-model", None, stream=False) == 401
                assert await send("sim-model", issue_token(wrong, "intruder"), stream=False) == 401
            rounds += 1
            await asyncio.sleep(0.2)  # the traffic's pace: a few requests a second, not a load test
    return rounds


@contextlib.asynccontextmanager
async def traffic(side: RunningSidecar) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(_traffic(side, stop))
    try:
        yield
    finally:
        stop.set()
        assert await task > 0


def _finite(series: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in series) if math.isfinite(v)]


async def _eventually(
    prom: RunningPrometheus, fetch: Callable[[], Awaitable[T]], ok: Callable[[T], bool]
) -> T:
    """What `fetch` answers once `ok` holds, or its last answer when the deadline passes: the
    sidecar's new series reach Prometheus at its next scrapes."""
    deadline = time.monotonic() + 30
    while True:
        prom.check_alive()
        result = await fetch()
        if ok(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.25)  # a poll interval, bounded by the deadline


def _shows_real_numbers(expr: str) -> Callable[[list[dict[str, Any]]], bool]:
    """A series with a real number; above 0 where it is a rate of the traffic that is flowing.
    `sidemeter_upstream_up` alone may be NaN: that is its value until the first upstream probe."""

    def ok(result: list[dict[str, Any]]) -> bool:
        if not result:
            return False
        values = _finite(result)
        if "sidemeter_upstream_up" in expr and not values:
            return True
        return bool(values) and ("rate(" not in expr or max(values) > 0)

    return ok


async def _resolve(prom: RunningPrometheus, var: dict[str, Any], values: dict[str, str]) -> list[str]:
    m = _LABEL_VALUES.match(var["query"]["query"])
    assert m is not None
    selector = substitute(m["selector"], values)
    data = await prom.api(f"/api/v1/label/{m['label']}/values", [("match[]", selector)])
    return list(data)


@needs_prometheus
@pytest.mark.parametrize("flavor", sorted(SERVER_TOKENS))
async def test_every_query_returns_data_from_a_live_sidecar(
    flavor: str, start_sidecar: Callable[..., Any], tmp_path: Path
) -> None:
    sim = SimulatedLLM("openai", flavor=flavor, models=sorted({m for _, m in TEAMS_MODELS}))
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url, auth="jwt", jwt_secret=SECRET, quotas=QUOTAS)
        instance = f"127.0.0.1:{side.sidecar.ops_port}"
        config = prometheus_config(instance, extra_jobs={"llm-server": sim.url.removeprefix("http://")})
        async with running_prometheus(config, tmp_path) as prom, traffic(side):
            for path in DASHBOARDS:
                await _check_dashboard(prom, load(path), flavor, instance)
            await _check_alert_rules(prom)
    finally:
        await sim.stop()


async def _check_dashboard(prom: RunningPrometheus, dash: dict[str, Any], flavor: str, instance: str) -> None:
    # Each variable resolves: under All, and with one concrete value of each before it chosen.
    every = {v["name"]: ".*" for v in variables(dash) if v["type"] == "query"}
    chosen = {"instance": instance, "team": "quant", "model": "sim-model"}
    for var in variables(dash):
        if var["type"] != "query":
            continue
        value = chosen[var["name"]]
        for values in (every, chosen):
            got = await _eventually(
                prom, functools.partial(_resolve, prom, var, values), lambda vs, v=value: v in vs
            )
            assert value in got, f"{var['name']} = {var['query']['query']} under {values} resolves to {got}"

    others = [metric for name, metrics in SERVER_TOKENS.items() if name != flavor for metric in metrics]
    failures = []
    for values in (every, chosen):
        for title, expr in expressions(dash):
            query = substitute(expr, values)
            if any(metric in expr for metric in others):
                await prom.query(query)  # this run scrapes no such server: it need only parse
                continue
            # prom.query fails the test at once if the expression does not parse
            result = await _eventually(prom, functools.partial(prom.query, query), _shows_real_numbers(expr))
            if not _shows_real_numbers(expr)(result):
                failures.append(f"{title}: {query} -> {result}")
    assert not failures, "panels that would show no data:\n" + "\n".join(failures)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, grouping clauses, function calls and keywords are taken out."""
    expr = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    words = set(re.findall(r"(?<![\w:.])[A-Za-z_:][\w:]*(?![\w:]|\s*\()", expr))
    return words - {"and", "or", "unless", "offset", "bool", "group_left", "group_right"}


async def _check_alert_rules(prom: RunningPrometheus) -> None:
    rules = alert_rules()
    # Every metric a rule reads is one the live sidecar exports (promtool's tests feed the rules
    # series named in the test file, so a misspelt metric would pass them), and every expression
    # parses and evaluates on this Prometheus.
    exported = set(await prom.api("/api/v1/label/__name__/values"))
    for rule in rules:
        assert metric_names(rule["expr"]) <= exported, (rule["alert"], metric_names(rule["expr"]) - exported)
        await prom.query(rule["expr"])
    # Prometheus loaded the same file through prometheus.yml, evaluates every rule without error,
    # and the traffic's failures (over half of it) and refused tokens (several a second) set off
    # the two rules they should: pending, as their `for` has not passed yet.
    triggered = {"SidemeterErrorRateHigh", "SidemeterAuthFailureBurst"}

    def settled(loaded: dict[str, dict[str, Any]]) -> bool:
        active = {name for name, r in loaded.items() if r["state"] != "inactive"}
        return (
            len(loaded) == len(rules)
            and all(r["health"] == "ok" for r in loaded.values())
            and active == triggered
        )

    async def fetch() -> dict[str, dict[str, Any]]:
        groups = (await prom.api("/api/v1/rules"))["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    loaded = await _eventually(prom, fetch, settled)
    assert sorted(loaded) == sorted(r["alert"] for r in rules)
    assert all(r["health"] == "ok" for r in loaded.values()), {
        n: r.get("lastError") for n, r in loaded.items()
    }
    assert {n: r["state"] for n, r in loaded.items() if r["state"] != "inactive"} == dict.fromkeys(
        sorted(triggered), "pending"
    )


@needs_prometheus
@pytest.mark.parametrize("flavor", sorted(SERVER_TOKENS))
async def test_server_and_sidecar_count_the_same_tokens(
    flavor: str, start_sidecar: Callable[..., Any], tmp_path: Path
) -> None:
    """What the "Server vs sidecar" row compares agrees when every request completes (cut and
    failed ones differ on purpose: the server counts nothing, the sidecar estimates)."""
    sim = SimulatedLLM("openai", flavor=flavor)
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url)
        ids = []
        async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
            for n, stream in ((3, True), (7, False), (4, True)):
                rid = str(uuid.uuid4())
                ids.append(rid)
                body = {
                    "model": "sim-model",
                    "messages": [{"role": "user", "content": f"say {n}"}],
                    "stream": stream,
                }
                headers = {"X-Request-ID": rid, "X-Sim-Tokens": str(n)}
                assert (
                    await client.post("/v1/chat/completions", json=body, headers=headers)
                ).status_code == 200
        records = [await side.record(rid) for rid in ids]
        expected = {
            "input": float(sum(r.prompt_tokens or 0 for r in records)),
            "output": float(sum(r.completion_tokens or 0 for r in records)),
        }
        assert expected["output"] == 14 and expected["input"] > 0
        server = dict(zip(("input", "output"), SERVER_TOKENS[flavor], strict=True))
        config = prometheus_config(
            f"127.0.0.1:{side.sidecar.ops_port}", extra_jobs={"llm-server": sim.url.removeprefix("http://")}
        )
        async with running_prometheus(config, tmp_path) as prom:
            for kind, total in expected.items():
                for expr in (f"sum({server[kind]})", f'sum(sidemeter_tokens_total{{type="{kind}"}})'):
                    got = await _eventually(
                        prom, functools.partial(prom.query, expr), lambda r, t=total: _finite(r) == [t]
                    )
                    assert _finite(got) == [total], f"{expr} = {got}, the records say {total}"
    finally:
        await sim.stop()
