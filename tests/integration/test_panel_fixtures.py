"""The panel's unit tests run against recorded ops API answers (grafana/plugins/sidemeter-ops-panel/
src/__fixtures__/): each must be an answer the live API could give, i.e. valid against the
response schema the running sidecar documents in /ops/openapi.json."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.support.paths import ROOT
from tests.support.sidecar import RunningSidecar

FIXTURES = ROOT / "grafana/plugins/sidemeter-ops-panel/src/__fixtures__"
# fixture file -> (method, documented path, status) of the answer it stands for
ANSWERS: dict[str, tuple[str, str, str]] = {
    "health.json": ("get", "/ops/health", "200"),
    "healthz.json": ("get", "/healthz", "200"),
    "readyz.json": ("get", "/readyz", "200"),
    "services.json": ("get", "/ops/services", "200"),
    "stats.json": ("get", "/ops/stats", "200"),
    "stats-empty.json": ("get", "/ops/stats", "200"),
    "requests.json": ("get", "/ops/requests", "200"),
    "requests-empty.json": ("get", "/ops/requests", "200"),
    "record.json": ("get", "/ops/requests/{request_id}", "200"),
    "test.json": ("post", "/ops/test", "200"),
    "quotas.json": ("get", "/ops/quotas", "200"),
    "quotas-empty.json": ("get", "/ops/quotas", "200"),
    "error-bad-window.json": ("get", "/ops/stats", "400"),
    "error-forbidden.json": ("get", "/ops/requests", "403"),
    "error-not-found-record.json": ("get", "/ops/requests/{request_id}", "404"),
    "error-unauthorized.json": ("get", "/ops/requests", "401"),
}


def test_every_fixture_is_listed() -> None:
    assert {p.name for p in FIXTURES.glob("*.json")} == set(ANSWERS)


async def test_every_fixture_is_an_answer_the_live_api_documents(openai_side: RunningSidecar) -> None:
    async with httpx.AsyncClient(base_url=openai_side.ops_url) as http:
        document: dict[str, Any] = (await http.get("/ops/openapi.json")).json()
    registry = Registry().with_resource("urn:ops", DRAFT202012.create_resource(document))
    problems, missing = [], set()
    for name, (method, path, status) in ANSWERS.items():
        operation = document["paths"].get(path, {}).get(method)
        if operation is None:
            missing.add(f"{method.upper()} {path}")
            continue
        response = operation["responses"].get(status)
        assert response is not None, f"{name}: {method.upper()} {path} documents no {status} answer"
        schema = response["content"]["application/json"]["schema"]
        resolver_schema = {
            "$ref": "urn:ops#/"
            + "/".join(
                [
                    "paths",
                    path.replace("~", "~0").replace("/", "~1"),
                    method,
                    "responses",
                    status,
                    "content",
                    "application~1json",
                    "schema",
                ]
            )
        }
        validator = Draft202012Validator(resolver_schema, registry=registry)
        fixture = json.loads((FIXTURES / name).read_text())
        problems += [f"{name}: {e.json_path}: {e.message}" for e in validator.iter_errors(fixture)]
        assert schema  # the documented schema exists
    assert not problems, "\n".join(problems)
    if missing:
        pytest.skip(
            f"the other fixtures conform; not served by this sidecar yet: {', '.join(sorted(missing))}"
        )
