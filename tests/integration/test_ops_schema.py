"""Schemathesis against the live ops API: every documented operation, fuzzed from
/ops/openapi.json, with auth on and an ops token, quota rules (a team's, everyone's with a cost
budget) and a price table, so /ops/quotas and the cost fields answer with content. No answer
may be a 5xx, and every answer must match its documented status codes, content type and schema.

Schemathesis calls the API synchronously, so the sidecar and its simulated upstream run on
their own event loop in a thread. Bounded: a fixed number of examples per operation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from agent.prices import Price
from agent.quota.rules import rules_from_tables
from agent.runtime import Sidecar
from agent.sim import SimulatedLLM
from tests.support.ops import SECRET, generate, ops_token, token
from tests.support.sidecar import sidecar_config

EXAMPLES = 40  # per operation: the whole run stays well under a minute on the CI machine
QUOTAS = rules_from_tables(
    [
        {"team": "eval", "requests_per_minute": 1000, "tokens_per_day": 10**9},
        {"tokens_per_minute": 10**8, "cost_per_day": 1000.0},
    ]
)
PRICES = (Price("*", input_per_million=2.5, output_per_million=10.0),)


class SidecarThread:
    """A simulated Ollama and a sidecar in front of it, on an event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ready = threading.Event()
        self.ops_url = ""
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="sidecar", daemon=True)

    def __enter__(self) -> SidecarThread:
        self._thread.start()
        if not self.ready.wait(30) or self.error is not None:
            raise RuntimeError(f"the sidecar did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        sim = SimulatedLLM("ollama")
        sidecar: Sidecar | None = None
        try:
            await sim.start()
            config = sidecar_config(
                sim.url,
                self.tmp,
                f"sqlite:///{self.tmp}/usage.db",
                auth="jwt",
                jwt_secret=SECRET,
                quotas=QUOTAS,
                prices=PRICES,
                currency="USD",
            )
            sidecar = Sidecar(config)
            await sidecar.start()
            self.ops_url = f"http://127.0.0.1:{sidecar.ops_port}"
            async with httpx.AsyncClient() as http:  # scopes and costs for /ops/quotas and /ops/stats
                for bearer in (token("eva", team="eval"), token("sam", team="search")):
                    await generate(http, f"http://127.0.0.1:{sidecar.proxy_port}", "ollama", bearer)
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.ready.set()
        try:
            await self._stop.wait()
        finally:
            await sidecar.stop()
            await sim.stop()


@pytest.fixture(scope="module")
def live_ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarThread]:
    with SidecarThread(tmp_path_factory.mktemp("ops-schema")) as running:
        yield running


TOKEN = ops_token()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms_to_its_schema(live_ops: SidecarThread, mode: GenerationMode) -> None:
    # The operations are driven through schemathesis' Python API: its pytest plugin does not
    # work with this project's pytest (it reads a node attribute pytest 9 removed).
    report = httpx.get(live_ops.ops_url + "/ops/quotas", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert {s["scope"] for s in report["scopes"]} >= {"team:eval", "user:sam"}, report  # fuzzed with content
    spent = [lim["used"] for s in report["scopes"] for lim in s["limits"] if lim["name"] == "cost_per_day"]
    assert spent and max(spent) > 0, report
    schema = schemathesis.openapi.from_url(live_ops.ops_url + "/ops/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{m.upper()} {p}" for p, item in schema.raw_schema["paths"].items() for m in item}
    # Schemathesis leaves out the document it was loaded from; every other operation is fuzzed.
    assert {o.label for o in operations} == documented - {"GET /ops/openapi.json"}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same cases every run: a failure here reproduces
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
                # An opaque `cursor` or a `since` that no schema can describe exactly (`V`, a
                # 40000-day age) is a string the document allows and the API refuses with its
                # documented 400; every other check (no 5xx, answers match their schemas) holds.
                excluded_checks=[positive_data_acceptance],
            )

        try:
            run()
        except Unsatisfiable:
            declared = schema.raw_schema["paths"][operation.path][operation.method]
            if mode == GenerationMode.NEGATIVE and not declared.get("parameters"):
                continue  # no parameter to break: negative cases cannot exist
            failures.append(f"{operation.label}: no case could be generated")
        except Exception as e:  # every operation is fuzzed; all failures are reported together
            failures.append(f"{operation.label}: {e}")
    assert not failures, "\n\n".join(failures)
