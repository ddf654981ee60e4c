"""Health per team over the last 5 minutes, fed from the finished usage records.

`TeamHealth.observe` is a `Recorder` listener, so it runs on the event loop once per request:
it adds to one team's per-second counters and appends one latency sample, nothing more
(~1 µs: `bench/teamhealth.py`). `/ops/health` reads `snapshot()` and `judge()`s each team.

Bounded whatever callers claim:
- teams: at most `max_teams` are tracked at once (a team whose window is empty makes room);
  the rest are counted together as `other`;
- requests and errors are exact over the window, at one-second resolution (a ring of 300
  per-second counters per team);
- latency and TTFT p95 are exact (nearest rank) over the samples a team keeps: its last
  `max_samples` requests of the window. A team sending more in 5 minutes has its p95 taken
  over its latest `max_samples`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from operator import is_not, itemgetter
from typing import Final

from agent.records import Outcome, UsageRecord

WINDOW_S: Final = 300
OTHER: Final = "other"
NO_TEAM: Final = ""  # requests whose caller has no team claim (or auth is off)
OK: Final = "ok"
DEGRADED: Final = "degraded"
DOWN: Final = "down"
STATUSES: Final = (OK, DEGRADED, DOWN)


class _Window:
    """One team: per-second request and error counts (index = second % WINDOW_S, valid while
    `stamps` holds that second) and its latest samples (monotonic time, latency, TTFT)."""

    __slots__ = ("errors", "requests", "samples", "stamps")

    def __init__(self, max_samples: int) -> None:
        self.stamps = [-1] * WINDOW_S
        self.requests = [0] * WINDOW_S
        self.errors = [0] * WINDOW_S
        self.samples: deque[tuple[float, float, float | None]] = deque(maxlen=max_samples)

    def counts(self, now: float) -> tuple[int, int]:
        oldest = int(now) - WINDOW_S
        requests = errors = 0
        for i, stamp in enumerate(self.stamps):
            if stamp > oldest:
                requests += self.requests[i]
                errors += self.errors[i]
        return requests, errors


@dataclass(frozen=True, slots=True)
class TeamStats:
    team: str
    requests: int
    errors: int
    latency_p95_ms: float | None
    ttft_p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """From which error rate and p95 latency (ms) a team is degraded or down, and how many
    requests it needs in the window to be judged at all."""

    error_rate_degraded: float = 0.05
    error_rate_down: float = 0.5
    latency_p95_degraded_ms: float = 10_000.0
    latency_p95_down_ms: float = 30_000.0
    min_requests: int = 5


class TeamHealth:
    """The last 5 minutes of every team's requests, bounded in teams and samples."""

    def __init__(
        self,
        *,
        max_teams: int = 50,
        max_samples: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_teams = max_teams
        self.max_samples = max_samples
        self.clock = clock
        self._teams: dict[str, _Window] = {}

    # -- the hot path: one call per finished request ---------------------------------

    def observe(self, rec: UsageRecord) -> None:
        now = self.clock()
        team = rec.team or NO_TEAM
        w = self._teams.get(team)
        if w is None:
            w = self._admit(team, now)
        sec = int(now)
        i = sec % WINDOW_S
        if w.stamps[i] != sec:
            w.stamps[i] = sec
            w.requests[i] = 0
            w.errors[i] = 0
        w.requests[i] += 1
        if rec.outcome != Outcome.OK:
            w.errors[i] += 1
        latency = rec.latency_ms
        if latency is not None:
            w.samples.append((now, latency, rec.ttft_ms))

    def _admit(self, team: str, now: float) -> _Window:
        """A window for a team seen for the first time (rare: once per team per quiet spell)."""
        teams = self._teams
        if len(teams) >= self.max_teams:
            for name in [n for n, w in teams.items() if n != OTHER and w.counts(now)[0] == 0]:
                del teams[name]
        if len(teams) >= self.max_teams and team != OTHER:
            team = OTHER  # `other` may be the one window past the cap
            if team in teams:
                return teams[team]
        w = teams[team] = _Window(self.max_samples)
        return w

    # -- read by /ops/health -------------------------------------------------------------

    def collect(self) -> list[TeamSamples]:
        """Every team with requests in the window, its counts and a copy of its samples: the
        cheap part, on the event loop; `summarize` (the sorting) may then run in a thread."""
        now = self.clock()
        since = now - WINDOW_S
        out = []
        for team, w in list(self._teams.items()):
            samples = w.samples
            while samples and samples[0][0] <= since:  # oldest first: drop what left the window
                samples.popleft()
            requests, errors = w.counts(now)
            if requests:
                out.append(TeamSamples(team, requests, errors, list(samples)))
        return out

    def snapshot(self) -> list[TeamStats]:
        return summarize(self.collect())


@dataclass(frozen=True, slots=True)
class TeamSamples:
    team: str
    requests: int
    errors: int
    samples: list[tuple[float, float, float | None]]


def summarize(teams: list[TeamSamples]) -> list[TeamStats]:
    """Each team's p95s from its samples, most requests first. 50 teams of 1000 samples take
    a few ms of sorting (`bench/teamhealth.py`): /ops/health runs this off the event loop."""
    out = []
    for t in teams:
        latencies = sorted(map(_LATENCY, t.samples))
        ttfts = sorted(filter(_not_none, map(_TTFT, t.samples)))
        out.append(TeamStats(t.team, t.requests, t.errors, p95(latencies), p95(ttfts)))
    out.sort(key=lambda t: (-t.requests, t.team))
    return out


_LATENCY = itemgetter(1)
_TTFT = itemgetter(2)
_not_none = partial(is_not, None)


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile of sorted `values` (None when empty)."""
    if not values:
        return None
    return values[max(0, math.ceil(0.95 * len(values)) - 1)]


def judge(stats: TeamStats, limits: Thresholds) -> tuple[str, list[str]]:
    """A team's status and why; a team with fewer than `min_requests` is not judged (ok)."""
    if stats.requests < limits.min_requests:
        return OK, []
    status, reasons = OK, []
    rate = stats.error_rate
    for level, limit in ((DOWN, limits.error_rate_down), (DEGRADED, limits.error_rate_degraded)):
        if rate >= limit:
            reasons.append(f"error rate {_percent(rate)} >= {_percent(limit)}")
            status = worst(status, level)
            break
    latency = stats.latency_p95_ms
    if latency is not None:
        for level, limit in ((DOWN, limits.latency_p95_down_ms), (DEGRADED, limits.latency_p95_degraded_ms)):
            if latency >= limit:
                reasons.append(f"p95 latency {latency / 1000:.2f}s >= {limit / 1000:g}s")
                status = worst(status, level)
                break
    return status, reasons


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def worst(a: str, b: str) -> str:
    return a if STATUSES.index(a) >= STATUSES.index(b) else b
