"""Open-loop arrivals: when each request is due, independent of how fast the server answers.

Pure and seeded: the load tests' users claim arrivals from an `ArrivalSchedule`; the tests check the processes
without Locust. A request that no user was free to send on time is *late*; late arrivals mean the generator, not
the server, set the pace, and the report says so.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Arrival", "ArrivalProcess", "ArrivalSchedule", "RateFn", "generate_arrivals", "poisson_rate_bounds"]

RateFn = Callable[[float], float]
ProcessKind = Literal["poisson", "gamma"]


@dataclass(frozen=True)
class Arrival:
    """One request due at `t_s` (seconds since the run started); a trace row also sizes it."""

    t_s: float
    prompt_tokens: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class ArrivalProcess:
    """Inter-arrival gaps at a given rate: Poisson (exponential gaps, CV 1) or gamma with CV `cv` (> 1: bursts)."""

    kind: ProcessKind = "poisson"
    cv: float = 1.0

    def gap_s(self, rate_rps: float, rng: random.Random) -> float:
        """The gap before the next arrival; its mean is 1 / rate whatever the burstiness."""
        if rate_rps <= 0:
            return math.inf
        if self.kind == "poisson" or self.cv == 1.0:
            return rng.expovariate(rate_rps)
        shape = 1.0 / (self.cv * self.cv)
        return rng.gammavariate(shape, 1.0 / (rate_rps * shape))


def generate_arrivals(
    rate: RateFn, duration_s: float, process: ArrivalProcess, seed: int = 0, step_s: float = 0.25
) -> list[float]:
    """Arrival times in [0, duration_s) of a process whose rate follows `rate(t)`.

    Time rescaling: gaps are drawn at unit rate in "expected arrivals" time and mapped back through the
    cumulative rate (piecewise constant over `step_s` slots), so a gamma process keeps its burstiness and its
    mean rate while the rate changes, and a flash sale starts on time."""
    rng = random.Random(seed)
    slots = math.ceil(duration_s / step_s)
    rates = [max(rate((k + 0.5) * step_s), 0.0) for k in range(slots)]
    times: list[float] = []
    k, slot_start_u, u = 0, 0.0, process.gap_s(1.0, rng)
    while k < slots:
        slot_u = rates[k] * step_s
        if u >= slot_start_u + slot_u:
            slot_start_u += slot_u
            k += 1
            continue
        t = k * step_s + (u - slot_start_u) / rates[k]
        if t >= duration_s:
            break
        times.append(t)
        u += process.gap_s(1.0, rng)
    return times


def poisson_rate_bounds(count: int, duration_s: float, z: float = 3.0) -> tuple[float, float]:
    """A ~z-sigma confidence interval of the rate behind `count` Poisson events in `duration_s`."""
    spread = z * math.sqrt(max(count, 1))
    return max(count - spread, 0.0) / duration_s, (count + spread) / duration_s


class ArrivalSchedule:
    """Hands out arrivals in order to whichever user is free, and counts how late each was claimed.

    Users run in one gevent loop per Locust process, so `claim` (which never blocks) needs no lock."""

    def __init__(self, arrivals: Sequence[Arrival], late_after_s: float = 0.1) -> None:
        self._arrivals = arrivals
        self._next = 0
        self._late_after_s = late_after_s
        self.late = 0
        self.max_lateness_s = 0.0

    def __len__(self) -> int:
        return len(self._arrivals)

    @property
    def claimed(self) -> int:
        return self._next

    def claim(self, now_s: float) -> Arrival | None:
        """The next arrival (the caller sleeps until it is due); None when the schedule is spent."""
        if self._next >= len(self._arrivals):
            return None
        arrival = self._arrivals[self._next]
        self._next += 1
        lateness = now_s - arrival.t_s
        if lateness > self._late_after_s:
            self.late += 1
            self.max_lateness_s = max(self.max_lateness_s, lateness)
        return arrival
