"""Tables and the targets block of `bench/overhead.py`, from the JSON it writes (so a saved run
prints the same with `--report FILE`): plain text for the terminal, markdown for the README."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = list[str]
Table = tuple[str, Row, list[Row]]
SUBJECTS = ("sidemeter", "sidemeter-noauth")  # the column the targets are about, first present
FLAT_SLACK_KB = 5 * 1024  # "flat": back within 5 MB (or 5 %) of where it was


# ----------------------------------------------------------------------------- formatting


def _f(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:,.{digits}f}{suffix}"


def _signed(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mb(kb: int | float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _cpu(cell: dict[str, Any]) -> str:
    total, loop = cell.get("proxy_cpu_ms_per_request"), cell.get("proxy_loop_cpu_ms_per_request")
    if total is None:
        return "-"
    return _f(total) + ("" if loop is None else f" ({loop:.2f})")


def _errors(cell: dict[str, Any]) -> str:
    return str(sum(cell.get("errors", {}).values()))


def _ratio_cells(cell: dict[str, Any], metric: str, names: list[str]) -> Row:
    return [_x(_get(cell, "ratios", base, metric)) for base in ("direct", "master") if base in names]


def _ratio_headers(names: list[str], what: str = "") -> Row:
    return [f"{what}x{base}" for base in ("direct", "master") if base in names]


# ----------------------------------------------------------------------------- tables


def tables(result: dict[str, Any]) -> list[Table]:
    names = [t["name"] for t in result["targets"]]
    has_master = "master" in names
    out: list[Table] = []
    scen = result["scenarios"]
    for kind in ("chat", "stream", "paced"):
        group = {k: v for k, v in scen.items() if v["kind"] == kind}
        if not group:
            continue
        first = next(iter(group.values()))
        rows: list[Row] = []
        if kind == "chat":
            title = f"Non-streaming chat completions (wrk, max_tokens {first['max_tokens']}, no token delay)"
            header = [
                "target",
                "scenario",
                "req/s",
                *_ratio_headers(names),
                "p50 ms",
                "p99 ms",
                "+p50 ms",
                "+p99 ms",
            ]
            header += ["+p50 xmaster", "+p99 xmaster"] if has_master else []
            header += ["CPU ms/req (loop)", "errors"]
        elif kind == "stream":
            title = (
                f"Streaming chat completions (aiohttp client, max_tokens {first['max_tokens']}, "
                "no token delay: each stream arrives in one read)"
            )
            header = ["target", "c", "streams/s", "chunks/s", *_ratio_headers(names), "TTFT p50"]
            header += ["+TTFT p50"]
            header += ["+TTFT xmaster"] if has_master else []
            header += ["p99 ms", "gap p50", "gap p99", "CPU ms/stream (loop)", "errors"]
        else:
            title = (
                f"Paced streams (max_tokens {first['max_tokens']}: first token after 20 ms, then one every "
                "5 ms, as a model would)"
            )
            header = ["target", "c", "streams/s", "TTFT p50", "+TTFT p50"]
            header += ["+TTFT xmaster"] if has_master else []
            header += ["TTFT p99", "+TTFT p99", "gap p50", "+gap p50", "gap p99", "+gap p99", "errors"]
        for sc in group.values():
            for name in names:
                cell = sc["targets"][name]
                lat, add = cell["latency_ms"], cell.get("added_vs_direct", {})
                where = str(sc["concurrency"])
                if kind == "chat":
                    where = f"c={sc['concurrency']}" + (
                        f", {sc['think_ms']:g} ms idle" if sc.get("think_ms") else ""
                    )
                row = [name, where]
                mx = name not in ("master", "direct") and has_master
                if kind == "chat":
                    row += [_f(cell["requests_per_s"], 0), *_ratio_cells(cell, "requests_per_s", names)]
                    row += [
                        _f(lat["p50"]),
                        _f(lat["p99"]),
                        _signed(add.get("p50_ms")),
                        _signed(add.get("p99_ms")),
                    ]
                    if has_master:
                        row += [_x(_get(cell, "ratios", "master", "added_p50_ms")) if mx else "-"]
                        row += [_x(_get(cell, "ratios", "master", "added_p99_ms")) if mx else "-"]
                    row += [_cpu(cell), _errors(cell)]
                elif kind == "stream":
                    ttft, gap = cell["ttft_ms"], cell["chunk_gap_ms"]
                    row += [_f(cell["requests_per_s"], 0), _f(cell["chunks_per_s"], 0)]
                    row += [
                        *_ratio_cells(cell, "chunks_per_s", names),
                        _f(ttft["p50"]),
                        _signed(add.get("ttft_p50_ms")),
                    ]
                    if has_master:
                        row += [_x(_get(cell, "ratios", "master", "added_ttft_p50_ms")) if mx else "-"]
                    row += [_f(lat["p99"]), _f(gap["p50"], 3), _f(gap["p99"], 3), _cpu(cell), _errors(cell)]
                else:
                    ttft, gap = cell["ttft_ms"], cell["chunk_gap_ms"]
                    row += [_f(cell["requests_per_s"], 0), _f(ttft["p50"]), _signed(add.get("ttft_p50_ms"))]
                    if has_master:
                        row += [_x(_get(cell, "ratios", "master", "added_ttft_p50_ms")) if mx else "-"]
                    row += [_f(ttft["p99"]), _signed(add.get("ttft_p99_ms")), _f(gap["p50"], 3)]
                    row += [_signed(add.get("chunk_gap_p50_ms"), 3), _f(gap["p99"], 3)]
                    row += [_signed(add.get("chunk_gap_p99_ms"), 3), _errors(cell)]
                rows.append(row)
        out.append((title, header, rows))
    swarm = result.get("swarm")
    if swarm:
        title = (
            f"{swarm['streams']:,} concurrent streams (max_tokens {swarm['max_tokens']}, one token every "
            f"{swarm['token_delay_ms']:g} ms, all opened within {swarm['ramp_s']:g} s)"
        )
        header = ["target", "wave", "ok", "open at once", "s", "chunks/s", *_ratio_headers(names), "TTFT p50"]
        header += [
            "+gap p50",
            "+gap p99",
            "CPU us/chunk",
            "RSS before MB",
            "peak MB",
            "after MB",
            "KB/stream",
        ]
        header += ["fds peak"]
        rows = []
        for name in names:
            for i, w in enumerate(swarm["targets"].get(name, [])):
                add = w.get("added_vs_direct", {})
                ratios = [_x(_get(w, "chunks_per_s_ratio", b)) for b in ("direct", "master") if b in names]
                fds = w["open_files_peak"]
                rows.append([
                    name, str(i + 1), f"{w['ok']}/{w['streams']}", str(w["open_at_once"]),
                    _f(w["seconds"], 1), _f(w["chunks_per_s"], 0), *ratios, _f(w["ttft_ms"]["p50"]),
                    _signed(add.get("gap_p50_ms")), _signed(add.get("gap_p99_ms")),
                    _f(w.get("proxy_cpu_us_per_chunk"), 0), _mb(w["rss_before_kb"]),
                    _mb(w["rss_peak_kb"]), _mb(w["rss_after_kb"]), _f(w.get("peak_kb_per_stream"), 1),
                    "-" if fds is None else str(fds),
                ])  # fmt: skip
        out.append((title, header, rows))
    mem = result.get("memory_kb", {})
    header = ["process", "RSS ready MB", "peak MB (run)", "peak xmaster", "requests at soak end"]
    header += ["RSS soak start MB", "half-way MB", "RSS soak end MB", "end xmaster", "end - ready MB"]
    rows = []
    for name, m in mem.items():
        soak = m.get("soak") or {}
        after = soak.get("rss_after_kb")
        grown = None if after is None or m.get("rss_ready_kb") is None else after - m["rss_ready_kb"]
        served = soak.get("requests_after")
        rows.append([
            name, _mb(m.get("rss_ready_kb")), _mb(m.get("rss_peak_kb")),
            _x(_get(m, "ratio_to_master", "rss_peak")), "-" if served is None else f"{served:,}",
            _mb(soak.get("rss_before_kb")), _mb(soak.get("rss_half_kb")), _mb(after),
            _x(_get(m, "ratio_to_master", "rss_after_soak")), "-" if grown is None else f"{grown / 1024:+.1f}"
        ])  # fmt: skip
    out.append(("Memory (resident set of each process tree, from /proc)", header, rows))
    return out


# ----------------------------------------------------------------------------- targets


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue, with the figure of this run that measures it and MET/MISSED."""
    names = [t["name"] for t in result["targets"]]
    subject = next((n for n in SUBJECTS if n in names), None)
    if subject is None:
        return []
    scen = result["scenarios"]
    out: list[dict[str, Any]] = []

    def cell(sc: str, name: str = subject) -> dict[str, Any] | None:
        return _get(scen, sc, "targets", name)

    def add(
        goal: str,
        where: str,
        value: float | None,
        limit: float,
        ok: Callable[[float], bool],
        shown: Callable[[float], str],
    ) -> None:
        out.append({
            "goal": goal, "where": where, "value": value, "limit": limit,
            "measured": "-" if value is None else shown(value),
            "met": None if value is None else bool(ok(value)),
        })  # fmt: skip

    ms: Callable[[float], str] = lambda v: f"{v:+.2f} ms"  # noqa: E731
    times: Callable[[float], str] = lambda v: f"{v:.2f}x"  # noqa: E731
    le = lambda lim: lambda v: v <= lim  # noqa: E731
    ge = lambda lim: lambda v: v >= lim  # noqa: E731
    add(
        "added p50 <= 1.0 ms at concurrency 1",
        "chat-c1 (wrk)",
        _get(cell("chat-c1"), "added_vs_direct", "p50_ms"),
        1.0,
        le(1.0),
        ms,
    )
    add(
        "added p99 <= 5 ms at concurrency 16",
        "chat-c16 (wrk)",
        _get(cell("chat-c16"), "added_vs_direct", "p99_ms"),
        5.0,
        le(5.0),
        ms,
    )
    add(
        "added TTFT <= 1 ms",
        "paced-c1, TTFT p50 (first token after 20 ms)",
        _get(cell("paced-c1"), "added_vs_direct", "ttft_p50_ms"),
        1.0,
        le(1.0),
        ms,
    )
    add(
        "no inter-chunk delay added beyond 0.5 ms",
        "paced-c1, gap p50",
        _get(cell("paced-c1"), "added_vs_direct", "chunk_gap_p50_ms"),
        0.5,
        le(0.5),
        ms,
    )
    add(
        "no inter-chunk delay added beyond 0.5 ms",
        "paced-c1, gap p99",
        _get(cell("paced-c1"), "added_vs_direct", "chunk_gap_p99_ms"),
        0.5,
        le(0.5),
        ms,
    )
    for sc, metric in (("chat-c16", "requests_per_s"), ("stream-c16", "chunks_per_s")):
        add(
            "throughput >= 1.0x (b) master",
            f"{sc}, {metric.replace('_per_s', '/s')}",
            _get(cell(sc), "ratios", "master", metric),
            1.0,
            ge(1.0),
            times,
        )
    for sc, metric in (("chat-c16", "requests_per_s"), ("stream-c16", "chunks_per_s")):
        add(
            "throughput >= 0.30x direct",
            f"{sc}, {metric.replace('_per_s', '/s')}",
            _get(cell(sc), "ratios", "direct", metric),
            0.30,
            ge(0.30),
            times,
        )
    add(
        ">= 5,000 chunks/s",
        "stream-c16 (no token delay)",
        _get(cell("stream-c16"), "chunks_per_s"),
        5000,
        ge(5000),
        lambda v: f"{v:,.0f}/s",
    )
    swarm = result.get("swarm")
    waves = _get(swarm, "targets", subject) if swarm else None
    if waves and waves[0].get("proxy_cpu_us_per_chunk"):
        # Paced chunks arrive one per read and cost a read and a write each: the CPU per chunk
        # (stream set-up included) of the swarm says how many one core could relay.
        add(
            ">= 5,000 chunks/s",
            f"swarm: chunks one by one; one core / CPU per chunk ({swarm['max_tokens']} a stream)",
            round(1e6 / waves[0]["proxy_cpu_us_per_chunk"]),
            5000,
            ge(5000),
            lambda v: f"{v:,.0f}/s",
        )
    if waves:
        out.append(_flat(swarm, waves))
    for sc in ("chat-c16", "chat-c1"):
        mine, theirs = _get(cell(sc), "requests_per_s"), _get(cell(sc, "litellm"), "requests_per_s")
        value = None if mine is None or not theirs else round(mine / theirs, 2)
        add(">= 3x LiteLLM's req/s", sc, value, 3.0, ge(3.0), times)
    for sc in ("chat-c1", "chat-c16"):
        mine = _get(cell(sc), "added_vs_direct", "p50_ms")
        theirs = _get(cell(sc, "litellm"), "added_vs_direct", "p50_ms")
        value = None if mine is None or not theirs else round(mine / theirs, 3)
        add("<= 1/4 of LiteLLM's added latency", f"{sc}, added p50 ratio", value, 0.25, le(0.25), times)
    mem = _get(result, "memory_kb", subject) or {}
    soak = mem.get("soak")
    if soak and mem.get("rss_ready_kb"):
        grown = soak["rss_after_kb"] - mem["rss_ready_kb"]
        out.append({
            "goal": f"(reported) RSS after {soak['requests_after']:,} requests vs at ready",
            "where": "soak (wrk c=16)", "value": grown, "limit": None, "met": None,
            "measured": f"{_mb(mem['rss_ready_kb'])} at ready, {_mb(soak.get('rss_half_kb'))} half-way "
            f"through the soak, {_mb(soak['rss_after_kb'])} MB after it ({grown / 1024:+.1f} MB)",
        })  # fmt: skip
    for t in out:
        t["subject"] = subject
    return out


def _all_open(w: dict[str, Any], n: int) -> bool:
    """Were all `n` streams open at once? Either the client had them all answering at the same
    time, or the proxy held a client and an upstream connection for each at the same time."""
    before, peak = w.get("open_files_before"), w.get("open_files_peak")
    proxy_side = before is not None and peak is not None and peak - before >= 2 * n
    return w["open_at_once"] >= n or proxy_side


def _flat(swarm: dict[str, Any], waves: list[dict[str, Any]]) -> dict[str, Any]:
    """1,000 concurrent streams with flat RSS: every stream of every wave complete and all of a
    wave's streams open at once, and a later wave peaking and settling no higher than the first
    (within 5 MB or 5 %): memory per open stream, returned to the allocator for the next wave,
    not memory that accumulates. The allocator keeps what the first wave grew (RSS does not drop
    back), so one wave alone cannot tell and gets no verdict."""
    n = swarm["streams"]
    all_ok = all(w["ok"] == n and _all_open(w, n) for w in waves)
    total_ok = sum(w["ok"] for w in waves)
    parts = [f"{total_ok}/{n * len(waves)} ok, all {n:,} open at once: {all_ok}"]
    for i, w in enumerate(waves):
        parts.append(
            f"wave {i + 1}: RSS {_mb(w['rss_before_kb'])} -> peak {_mb(w['rss_peak_kb'])} -> "
            f"{_mb(w['rss_after_kb'])} MB"
        )
    kb = waves[0].get("peak_kb_per_stream")
    if kb is not None:
        parts.append(f"{kb:.0f} KB per open stream")
    met: bool | None = None
    first, last = waves[0], waves[-1]
    figures = (first["rss_peak_kb"], last["rss_peak_kb"], first["rss_after_kb"], last["rss_after_kb"])
    if len(waves) > 1 and None not in figures:
        p0, p1, a0, a1 = figures
        slack = max(FLAT_SLACK_KB, 0.05 * p0)
        met = all_ok and p1 - p0 <= slack and a1 - a0 <= slack
    elif not all_ok:
        met = False
    return {
        "goal": f"{n:,} concurrent streams with flat RSS",
        "where": f"swarm, {len(waves)} wave(s)",
        "value": None,
        "limit": None,
        "measured": "; ".join(parts),
        "met": met,
    }


# ----------------------------------------------------------------------------- rendering


def _aligned(header: Row, rows: list[Row], left: int = 1) -> list[str]:
    """Columns padded to their widest cell: the first `left` ones left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Row) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _markdown(header: Row, rows: list[Row], left: int = 1) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if i < left else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _rounds(plan: dict[str, Any]) -> str:
    rounds, sparse = plan["rounds"], plan.get("paced_rounds", plan["rounds"])
    return f"{rounds} round(s)" + (
        f" ({sparse} for the paced and idle scenarios)" if sparse != rounds else ""
    )


def _prepared(result: dict[str, Any]) -> str:
    seconds = result.get("prepare_seconds") or 0
    return f" (+{seconds:.0f} s of installing first)" if seconds >= 10 else ""


def _background(result: dict[str, Any]) -> str:
    bg = result.get("background_cpu") or {}
    if "other_processes_cores" not in bg:
        return "not measured"
    return f"{bg['other_processes_cores']:.2f} cores busy on average, steal {bg['steal_cores']:.2f}"


def targets_block(result: dict[str, Any], *, markdown: bool = False) -> list[str]:
    rows = result.get("targets_met") or []
    if not rows:
        return []
    subject = rows[0]["subject"]
    header = ["target", "measured where", "measured", "verdict"]
    body = [
        [r["goal"], r["where"], r["measured"], "-" if r["met"] is None else ("MET" if r["met"] else "MISSED")]
        for r in rows
    ]
    met = sum(1 for r in rows if r["met"])
    judged = sum(1 for r in rows if r["met"] is not None)
    title = f"Targets ({subject}; ratios from this run): {met} of {judged} met"
    lines = [f"**{title}**", ""] if markdown else [title]
    lines += _markdown(header, body, left=4) if markdown else _aligned(header, body, left=4)
    return lines


def render(result: dict[str, Any], *, markdown: bool = False) -> str:
    m, plan, load = result["machine"], result["plan"], result["load_average_1m"]
    dirty = ""
    if m.get("git_dirty"):
        changed = ", ".join(m.get("git_changed_code") or []) or "outside the request path"
        dirty = f" + uncommitted changes ({changed})"
    item = "- " if markdown else ""
    versions = (
        f"Python {m['python']}, mitmproxy {m['mitmproxy']}, aiohttp {m['aiohttp']}, uvloop {m.get('uvloop')}"
    )
    if m.get("litellm"):
        versions += f", LiteLLM {m['litellm']}"
    if m.get("wrk"):
        versions += f", wrk {m['wrk']}"
    lines = [
        f"{item}Sidemeter overhead, {result['date']} ({result['mode']} run): {_rounds(plan)} x "
        f"{plan['duration_s']:g} s per cell after {plan['warmup_s']:g} s warm-up; the run took "
        f"{result['run_seconds']:.0f} s" + _prepared(result),
        f"{item}machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"{versions}; sidemeter {m['sidemeter']} @ {m['git_commit']}{dirty}",
        f"{item}other work on the machine during the run: {_background(result)}; "
        f"load average (1 min): {load['before']} before, {load['after']} after",
        "",
    ]
    for title, header, rows in tables(result):
        lines += [f"**{title}**", ""] if markdown else [title]
        lines += _markdown(header, rows) if markdown else _aligned(header, rows)
        lines.append("")
    notes = [
        "+X: that figure minus direct's at the same concurrency (a difference of percentiles). xdirect, "
        "xmaster: ratio to that column (throughput, or added latency for +X xmaster). gap: time between "
        "content chunks as the client reads them (ms). CPU: user+system CPU of the proxy's processes per "
        "request, all threads (the sidecar's store writer included); (loop): its main thread, the event "
        "loop, alone. master is (b): the sidecar's mitmproxy setup without its addons.",
    ]
    lines += [item + n for n in notes]
    lines.append("")
    lines += targets_block(result, markdown=markdown)
    lines.append("")
    for c in result["checks"]:
        lines.append(f"{item}{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    return "\n".join(lines)
