"""The scenarios as pure plans: rate over time, arrivals, and the users a Locust shape should hold.

No Locust here (importing it monkey-patches the process with gevent, which Ray and asyncio tests cannot share),
so the tick sequences are tested as plain functions; loadtests/shapes.py wraps each plan in a `LoadTestShape`.
Time compression: the profile advances `compress` seconds per run second while its rates stay as they are, so a
day plays in minutes at the day's real request rates.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from loadtests.arrivals import Arrival, ArrivalProcess, generate_arrivals
from loadtests.spec import RunSpec, UsageError

__all__ = [
    "Plan",
    "PromoDay",
    "PromoDayPlan",
    "RateTrace",
    "ReplayPlan",
    "SteadyPlan",
    "load_trace",
    "plan_for",
    "thin_requests",
]


@dataclass(frozen=True)
class PromoDay:
    """A promo day in profile seconds: baseline, countdown ramp, a flash sale reaching `flash_x` times the
    baseline within `flash_s`, a plateau, then a decay back to the baseline."""

    base_rps: float
    baseline_s: float = 600
    countdown_s: float = 1800
    countdown_x: float = 2.0
    flash_s: float = 60
    flash_x: float = 10.0
    plateau_s: float = 1200
    decay_s: float = 1800

    @property
    def duration_s(self) -> float:
        return self.baseline_s + self.countdown_s + self.flash_s + self.plateau_s + self.decay_s

    def rate(self, t: float) -> float:
        """Requests/s at profile time `t` (0 outside the day)."""
        b, x = self.base_rps, [self.baseline_s, self.countdown_s, self.flash_s, self.plateau_s, self.decay_s]
        levels = [b, b, b * self.countdown_x, b * self.flash_x, b * self.flash_x, b]
        if t < 0 or t >= self.duration_s:
            return 0.0
        start = 0.0
        for i, length in enumerate(x):
            if t < start + length:
                frac = (t - start) / length if length else 1.0
                return levels[i] + (levels[i + 1] - levels[i]) * frac
            start += length
        return b


@dataclass(frozen=True)
class RateTrace:
    """A `t_s,rps` trace: piecewise-constant rates, each row holding until the next."""

    t_s: tuple[float, ...]
    rps: tuple[float, ...]

    @property
    def duration_s(self) -> float:
        step = self.t_s[-1] - self.t_s[-2] if len(self.t_s) > 1 else 1.0
        return self.t_s[-1] + step

    def rate(self, t: float) -> float:
        i = bisect.bisect_right(self.t_s, t) - 1
        return self.rps[i] if i >= 0 and t < self.duration_s else 0.0


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        # Azure's traces: "2023-11-16 18:15:46.6805900" (7 fractional digits; Python takes at most 6).
        head, _, frac = value.partition(".")
        return datetime.fromisoformat(head).timestamp() + (float("0." + frac) if frac else 0.0)


def load_trace(path: str | Path) -> RateTrace | list[Arrival]:
    """Either trace format: `t_s,rps` as a `RateTrace`, or per-request `TIMESTAMP,ContextTokens,GeneratedTokens`
    as arrivals (times from the first row, tokens from the row)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UsageError(f"cannot read trace {path}: {exc.strerror}") from exc
    if not rows:
        raise UsageError(f"trace {path} has no rows")
    columns = set(rows[0])
    if {"t_s", "rps"} <= columns:
        pairs = sorted((float(r["t_s"]), float(r["rps"])) for r in rows)
        return RateTrace(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= columns:
        times = [_parse_time(r["TIMESTAMP"]) for r in rows]
        t0 = min(times)
        rows_at = zip(times, rows, strict=True)
        arrivals = [Arrival(t - t0, int(r["ContextTokens"]), int(r["GeneratedTokens"])) for t, r in rows_at]
        return sorted(arrivals, key=lambda a: a.t_s)
    raise UsageError(f"trace {path}: columns {sorted(columns)} are neither t_s,rps nor TIMESTAMP,ContextTokens,...")


def thin_requests(arrivals: list[Arrival], spec: RunSpec) -> list[Arrival]:
    """A per-request trace played `compress` times faster at `rate_scale` times its real rate: keep each row
    rate_scale / compress times on average (seeded), and clamp its tokens to what the model can hold."""
    rng = random.Random(spec.seed)
    keep = spec.rate_scale / spec.compress
    out: list[Arrival] = []
    for a in arrivals:
        copies = int(keep) + (1 if rng.random() < keep - int(keep) else 0)
        prompt = min(a.prompt_tokens or spec.max_prompt_tokens, spec.max_prompt_tokens)
        output = min(a.max_tokens or spec.max_tokens, spec.max_output_tokens)
        out.extend(Arrival(a.t_s / spec.compress, prompt, output) for _ in range(copies))
    return out


class Plan(ABC):
    """A scenario bound to its spec: `rate_rps(t)` and `duration_s` in run seconds, arrivals, users per tick."""

    lookahead_s = 5.0  # users are ready before a flash sale, not after it

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self._users = 0

    @abstractmethod
    def rate_rps(self, t_s: float) -> float:
        """The target arrival rate at run second `t_s`."""

    @property
    @abstractmethod
    def duration_s(self) -> float:
        """How long the scenario runs, in run seconds."""

    def arrivals(self) -> list[Arrival]:
        process = ArrivalProcess(self.spec.process, self.spec.cv)
        times = generate_arrivals(self.rate_rps, self.duration_s, process, seed=self.spec.seed)
        return [Arrival(t) for t in times]

    def users_at(self, t_s: float, in_flight: int = 0) -> int:
        """Users to hold at run time `t_s`: enough for the highest rate in the next `lookahead_s`, and free ones
        for the next two seconds' arrivals beyond those busy now (a slow server holds users longer); never fewer
        than before (stopping a Locust user kills its request in flight)."""
        steps = [t_s + self.lookahead_s * i / 20 for i in range(21)]
        peak = max(self.rate_rps(t) for t in steps)
        want = max(math.ceil(peak * self.spec.users_per_rps), in_flight + math.ceil(2 * peak))
        self._users = max(self._users, min(max(want, self.spec.min_users), self.spec.max_users))
        return self._users

    def tick_at(self, t_s: float, arrivals_left: int, in_flight: int) -> tuple[int, float] | None:
        """The tick at run time `t_s`: (users, spawn rate), or None to stop: every arrival sent and answered,
        or `drain_s` after the last one."""
        spent = arrivals_left == 0 and t_s >= self.duration_s
        if spent and (in_flight == 0 or t_s >= self.duration_s + self.spec.drain_s):
            return None
        users = self.users_at(t_s, in_flight)
        return users, float(max(users, 10))


class SteadyPlan(Plan):
    """A constant rate for `duration_s` run seconds."""

    def rate_rps(self, t_s: float) -> float:
        return self.spec.rate_rps if 0 <= t_s < self.duration_s else 0.0

    @property
    def duration_s(self) -> float:
        return self.spec.duration_s


class PromoDayPlan(Plan):
    """The promo day of `PromoDay`, with `rate_rps` as its baseline, compressed."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        self.day = PromoDay(spec.rate_rps)

    def rate_rps(self, t_s: float) -> float:
        return self.day.rate(t_s * self.spec.compress)

    @property
    def duration_s(self) -> float:
        return self.day.duration_s / self.spec.compress


class ReplayPlan(Plan):
    """A trace replayed compressed: a `t_s,rps` trace drives the arrival process; a per-request trace is its
    own arrival process (thinned, see `thin_requests`), each request sized from its row."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        if spec.trace is None:
            raise UsageError("the replay scenario needs --trace FILE")
        self.trace = load_trace(spec.trace)
        self._requests = [] if isinstance(self.trace, RateTrace) else thin_requests(self.trace, spec)
        self._times = [a.t_s for a in self._requests]

    def arrivals(self) -> list[Arrival]:
        return super().arrivals() if isinstance(self.trace, RateTrace) else list(self._requests)

    def rate_rps(self, t_s: float) -> float:
        if isinstance(self.trace, RateTrace):
            return self.trace.rate(t_s * self.spec.compress) * self.spec.rate_scale
        return _window_rate(self._times, t_s, window_s=max(10.0 / self.spec.compress, 1.0))

    @property
    def duration_s(self) -> float:
        if isinstance(self.trace, RateTrace):
            return self.trace.duration_s / self.spec.compress
        return self.trace[-1].t_s / self.spec.compress + 1e-3


def _window_rate(times: list[float], t_s: float, window_s: float) -> float:
    """A per-request trace's rate around `t_s`: arrivals in the window starting there."""
    lo, hi = bisect.bisect_left(times, t_s), bisect.bisect_left(times, t_s + window_s)
    return (hi - lo) / window_s


_PLANS: dict[str, type[Plan]] = {"steady": SteadyPlan, "promo-day": PromoDayPlan, "replay": ReplayPlan}


def plan_for(spec: RunSpec) -> Plan:
    return _PLANS[spec.scenario](spec)
