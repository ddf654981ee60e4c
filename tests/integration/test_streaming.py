"""Streams are relayed as the server produces them, not buffered whole."""

from __future__ import annotations

import itertools
import time
import uuid

import httpx

from tests.support.sidecar import RunningSidecar


async def test_first_chunk_arrives_long_before_the_last_is_produced(paced_side: RunningSidecar) -> None:
    side = paced_side
    request_id = uuid.uuid4().hex
    body = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 20,
    }
    arrivals: list[float] = []
    async with httpx.AsyncClient() as http:
        t0 = time.perf_counter()
        async with http.stream(
            "POST",
            side.url + "/v1/chat/completions",
            json=body,
            headers={"X-Request-ID": request_id},
        ) as resp:
            async for line in resp.aiter_lines():
                if '"content":' in line and '"content":""' not in line.replace(" ", ""):
                    arrivals.append(time.perf_counter() - t0)
    assert len(arrivals) == 20
    # 20 tokens 50 ms apart take ~1 s to produce; a buffering proxy would deliver all at the end.
    assert arrivals[-1] - arrivals[0] > 0.7
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(g > 0.02 for g in gaps) >= 15  # tokens keep their pacing
    rec = await side.record(request_id)
    assert rec.ttft_ms is not None and rec.ttft_ms < rec.latency_ms - 700
    assert rec.tokens_per_second is not None and 10 < rec.tokens_per_second < 30
