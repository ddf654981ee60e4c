"""Who may call the ops API: the ops role with auth on, the open endpoints, and CORS for an
allowed and a refused browser origin."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent.sim import SimulatedLLM
from tests.support.ops import SECRET, ops_token, token
from tests.support.sidecar import RunningSidecar

GRAFANA = "https://grafana.example.com"
EVIL = "https://evil.example.net"


@pytest.fixture
async def guarded(sim_openai: SimulatedLLM, start_sidecar: Any) -> RunningSidecar:
    return await start_sidecar(
        sim_openai.url, auth="jwt", jwt_secret=SECRET, ops_cors_origins=f"{GRAFANA}, http://localhost:3000"
    )


async def get(side: RunningSidecar, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(side.ops_url + path, headers=headers)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_no_or_bad_token_is_401_with_a_challenge(guarded: RunningSidecar) -> None:
    for headers in (
        {},
        bearer("not-a-jwt"),
        bearer(token("x", roles=["ops"]) + "tampered"),
        {"Authorization": "Basic b3A6cw=="},
    ):
        res = await get(guarded, "/ops/services", **headers)
        assert res.status_code == 401, headers
        assert res.json()["error"]["type"] == "unauthorized" and res.json()["error"]["message"]
        assert res.headers["WWW-Authenticate"].startswith("Bearer ")
    expired = token("x", roles=["ops"], exp=1_000_000_000, iat=999_999_000)
    res = await get(guarded, "/ops/services", **bearer(expired))
    assert res.status_code == 401 and "expired" in res.json()["error"]["message"]


async def test_a_token_without_the_ops_role_is_403(guarded: RunningSidecar) -> None:
    for claims in ({}, {"roles": ["viewer"]}, {"roles": "viewer editor"}, {"roles": 7}):
        res = await get(guarded, "/ops/services", **bearer(token("dev", team="quant", **claims)))
        assert res.status_code == 403, claims
        error = res.json()["error"]
        assert error["type"] == "forbidden" and "roles" in error["message"] and "ops" in error["message"]
        assert 'error="insufficient_scope"' in res.headers["WWW-Authenticate"]


@pytest.mark.parametrize("roles", [["ops"], ["viewer", "ops"], "ops", "openid ops profile"])
async def test_the_ops_role_as_a_list_or_a_scope_string_is_let_in(
    guarded: RunningSidecar, roles: Any
) -> None:
    res = await get(guarded, "/ops/services", **bearer(token("op", roles=roles)))
    assert res.status_code == 200
    assert res.json()["services"][0]["type"] == "upstream"


async def test_claim_and_roles_are_configurable(sim_openai: SimulatedLLM, start_sidecar: Any) -> None:
    side: RunningSidecar = await start_sidecar(
        sim_openai.url,
        auth="jwt",
        jwt_secret=SECRET,
        ops_role_claim="realm_access.roles",
        ops_roles="sidemeter-admin, platform-ops",
    )
    keycloak = token("kc", realm_access={"roles": ["offline_access", "platform-ops"]})
    assert (await get(side, "/ops/services", **bearer(keycloak))).status_code == 200
    assert (await get(side, "/ops/services", **bearer(ops_token()))).status_code == 403  # roles: [ops]


async def test_health_openapi_and_probes_stay_open(guarded: RunningSidecar) -> None:
    for path in ("/ops/health", "/ops/openapi.json", "/healthz", "/readyz", "/metrics"):
        assert (await get(guarded, path)).status_code == 200, path
    # A path no route serves tells nothing without a token, however it is spelled.
    for path in ("/ops/nothing-here", "//ops/services", "/ops/services/", "/nothing"):
        assert (await get(guarded, path)).status_code == 401, path


async def test_auth_off_leaves_the_ops_api_open(openai_side: RunningSidecar) -> None:
    assert (await get(openai_side, "/ops/services")).status_code == 200


async def test_the_document_declares_the_bearer_scheme_on_protected_operations(
    guarded: RunningSidecar,
) -> None:
    doc = (await get(guarded, "/ops/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == doc["components"]["securitySchemes"][
        "bearerAuth"
    ] | {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for path, item in doc["paths"].items():
        for operation in item.values():
            if path.startswith("/ops/") and path not in ("/ops/health", "/ops/openapi.json"):
                assert operation["security"] == [{"bearerAuth": []}], path
                assert {"401", "403"} <= set(operation["responses"]), path
            else:
                assert "security" not in operation, path


# --------------------------------------------------------------------------- CORS


async def preflight(side: RunningSidecar, origin: str, path: str = "/ops/services") -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.options(
            side.ops_url + path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )


async def test_preflight_of_an_allowed_origin_is_answered_without_a_token(guarded: RunningSidecar) -> None:
    res = await preflight(guarded, GRAFANA)
    assert res.status_code == 204
    h = res.headers
    assert h["Access-Control-Allow-Origin"] == GRAFANA
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert {m.strip() for m in h["Access-Control-Allow-Methods"].split(",")} == {"GET", "POST", "OPTIONS"}
    assert {"authorization", "content-type"} <= {
        x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")
    }
    assert int(h["Access-Control-Max-Age"]) > 0
    assert "Origin" in h["Vary"]


async def test_preflight_of_a_refused_origin_gets_no_cors_headers(guarded: RunningSidecar) -> None:
    res = await preflight(guarded, EVIL)
    assert res.status_code == 403
    assert res.json()["error"]["type"] == "forbidden" and EVIL in res.json()["error"]["message"]
    assert "Access-Control-Allow-Origin" not in res.headers
    assert "Origin" in res.headers["Vary"]


async def test_actual_requests_carry_cors_headers_for_allowed_origins_only(guarded: RunningSidecar) -> None:
    allowed = await get(guarded, "/ops/services", Origin=GRAFANA, **bearer(ops_token()))
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == GRAFANA
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Origin" in allowed.headers["Vary"]
    # The panel can read why it was refused.
    refused_token = await get(guarded, "/ops/services", Origin=GRAFANA)
    assert refused_token.status_code == 401
    assert refused_token.headers["Access-Control-Allow-Origin"] == GRAFANA
    # Another origin is served as any non-browser client, without the headers a browser needs.
    other = await get(guarded, "/ops/health", Origin=EVIL)
    assert other.status_code == 200
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]


async def test_any_origin_allows_no_credentials(sim_openai: SimulatedLLM, start_sidecar: Any) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, ops_cors_origins="*")
    res = await preflight(side, EVIL)
    assert res.status_code == 204
    assert res.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in res.headers
    actual = await get(side, "/ops/health", Origin=EVIL)
    assert actual.headers["Access-Control-Allow-Origin"] == "*"


async def test_no_origins_configured_means_no_cors(openai_side: RunningSidecar) -> None:
    res = await preflight(openai_side, GRAFANA)
    assert res.status_code == 405  # an OPTIONS like any other: no route answers it
    assert "Access-Control-Allow-Origin" not in res.headers
    assert (
        "Access-Control-Allow-Origin" not in (await get(openai_side, "/ops/health", Origin=GRAFANA)).headers
    )
