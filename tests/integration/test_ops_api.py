"""The ops app's common behaviour: JSON errors for anything unknown, and a valid OpenAPI document."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate

from tests.support.sidecar import RunningSidecar


async def test_unknown_paths_and_methods_get_json_errors(openai_side: RunningSidecar) -> None:
    async with httpx.AsyncClient(base_url=openai_side.ops_url) as http:
        missing = await http.get("/ops/nothing-here")
        wrong_method = await http.post("/healthz")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"type": "not_found", "message": "no such endpoint: GET /ops/nothing-here"}
    }
    assert wrong_method.status_code == 405
    body = wrong_method.json()["error"]
    assert body["type"] == "method_not_allowed" and "GET" in body["message"]
    assert "GET" in wrong_method.headers["Allow"]


async def test_openapi_document_is_valid_and_lists_every_route(openai_side: RunningSidecar) -> None:
    async with httpx.AsyncClient(base_url=openai_side.ops_url) as http:
        res = await http.get("/ops/openapi.json")
    assert res.status_code == 200
    doc = res.json()
    validate(doc)  # raises on anything that is not OpenAPI 3.1
    app_routes = {
        r.resource.canonical
        for r in openai_side.sidecar._ops_runner.app.router.routes()  # type: ignore[union-attr]
        if r.method != "HEAD" and r.resource is not None
    }
    assert app_routes == set(doc["paths"]), "every route is documented and every documented path exists"


async def test_a_misspelt_query_parameter_is_a_400_naming_the_allowed_ones(
    openai_side: RunningSidecar,
) -> None:
    async with httpx.AsyncClient(base_url=openai_side.ops_url) as http:
        res = await http.get("/ops/requests", params={"usr": "alice"})
    assert res.status_code == 400
    error = res.json()["error"]
    assert "'usr'" in error["message"] and "user" in error["allowed"] and "cursor" in error["allowed"]
