"""The simulator's host: one CPU budget shared by every replica's engine, the serving path and starting replicas.

On a small CPU host (the local profile: 2 cores run every engine, HAProxy, the ingress, the routers and Ray)
the host's cores, not each engine, are what limits: a second replica's engine load takes cores from the serving
one, and every request's way through the serving path costs CPU beside the engine's steps. Each consumer
demands cores (measured through the cluster, autoscaling/fidelity.py), and past the host's cores they are
shared max-min fairly, as Linux's scheduler shares a CPU between runnable threads: a consumer that wants less
than an equal share gets what it wants, the others split what is left equally (capped at their demand). The
consumers: each engine with sequences running and each starting replica (one compute thread that wants a
core), and the serving path's processes with the idle cluster (HAProxy, the ingress, the routers, the replica
actors, Ray's daemons, the load generator: `light_processes` of them, measured, sharing its demand), each far
below a core, so in all but an overload of the serving path itself they get what they want and the engines
and starts split the rest.

In a measured run with one replica serving and one starting on 2 cores (autoscaling/fidelity.py's run) the
engine and the start had ~0.55-0.7 cores each and the serving processes ~0.8, what they used at that request
rate; sharing every consumer at one fraction of its demand, as the model did before, gave the engine ~0.75
and the serving processes less than they used.

Max-min fairness says how much CPU each consumer gets, not how soon: when the consumers want more than the host's
cores, a serving process that wakes (HAProxy, the ingress's and the replica's event loops, the engine core's
input thread: several wake-ups on a request's way to its first token) waits for a core behind the threads
already running. The model adds that as a delay on the serving path, `busy_host_delay_s` per unit of
oversubscription beyond 1 (every consumer's demand over the host's cores, `HostShare.oversubscription`; the
wait for a core grows with the runnable work beyond the cores), measured beside a second real engine decoding
(`other_engines`: engines outside the pool, each a consumer of an engine's cores) and checked beside CPU-hog
processes (`cpu_hogs`: each one consumer that wants a whole core) (autoscaling/busy_host.py). In the committed
fidelity run (run 9) probes beside 16 streams and a second engine decoding 16 more took 65 ms to their first
token (27 ms on the quiet host; 46 ms simulated without the delay, at oversubscription 1.53): 0.035 s per
unit. Beside two hogs (1.87) the engine itself starved (probes 9.2 s), a regime the model does not describe.

GPU profiles leave `host_cores` at 0 and the host is not modelled: each replica has its device, and the serving
path runs on CPUs the engines do not need, so the host is not the bottleneck there.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autoscaling.profiles import EngineProfile

__all__ = ["HostCpu", "HostShare", "fair_level"]

_RATE_WINDOW_S = 2.0  # the serving path's request rate: requests that entered it in this window


@dataclass(frozen=True, slots=True)
class HostShare:
    """The fraction of its full speed each consumer gets: each engine, each start, the serving path."""

    engine: float = 1.0
    start: float = 1.0
    light: float = 1.0
    oversubscription: float = 0.0  # every consumer's CPU demand over the host's cores (0: not modelled)


def fair_level(host_cores: float, demands: Sequence[float]) -> float:
    """Max-min fairness: the cores each consumer may take (those wanting less get their demand); inf when
    every demand fits."""
    left, ordered = host_cores, sorted(demands)
    for i, demand in enumerate(ordered):
        equal = left / (len(ordered) - i)
        if demand > equal:
            return equal
        left -= demand
    return math.inf


class HostCpu:
    """The host's CPU share at a moment (`share`)."""

    def __init__(self, profile: EngineProfile, cpu_hogs: int = 0, other_engines: int = 0) -> None:
        self.profile = profile
        # Calibration phases: processes outside the cluster that each spin on a core, and engines outside the
        # pool that decode throughout.
        self.cpu_hogs, self.other_engines = cpu_hogs, other_engines
        self._entered: deque[tuple[float, float]] = deque()  # (when, its serving CPU s)

    @property
    def modelled(self) -> bool:
        return self.profile.host_cores > 0

    def note_request(self, now_s: float, batch: int = 1) -> None:
        """A request entered the serving path to join a batch of `batch`: its serving CPU (the profile's, at
        that batch) is spread over `_RATE_WINDOW_S`."""
        self._entered.append((now_s, self.profile.serving_cpu_s(batch)))

    def _window(self, now_s: float) -> deque[tuple[float, float]]:
        while self._entered and self._entered[0][0] <= now_s - _RATE_WINDOW_S:
            self._entered.popleft()
        return self._entered

    def request_rate_rps(self, now_s: float) -> float:
        return len(self._window(now_s)) / _RATE_WINDOW_S

    def light_cores(self, now_s: float) -> float:
        """Cores the light consumers want: the cluster at idle and each request entering the serving path."""
        return self.profile.idle_cores + sum(cpu_s for _, cpu_s in self._window(now_s)) / _RATE_WINDOW_S

    def share(self, now_s: float, running_batches: Iterable[int], starting: int) -> HostShare:
        if not self.modelled:
            return HostShare()
        p = self.profile
        engines = sum(1 for b in running_batches if b > 0) + self.other_engines
        light = self.light_cores(now_s)
        processes = max(1, p.light_processes)
        demands = [*[light / processes] * processes, *[p.engine_cores] * engines,
                   *[p.cold_start_cores] * starting, *[1.0] * self.cpu_hogs]  # fmt: skip
        level = fair_level(p.host_cores, demands)

        def fraction(demand: float) -> float:
            return min(1.0, level / demand) if demand > 0 else 1.0

        return HostShare(fraction(p.engine_cores), fraction(p.cold_start_cores), fraction(light / processes),
                         sum(demands) / p.host_cores)  # fmt: skip

    def busy_delay_s(self, share: HostShare) -> float:
        """The serving path's wait for cores at `share`'s oversubscription (module docstring)."""
        return self.profile.busy_host_delay_s * max(0.0, share.oversubscription - 1.0)

    def speed(self, now_s: float, running_batches: Iterable[int], starting: int) -> float:
        """An engine's fraction of full speed (its steps and prefills)."""
        return self.share(now_s, running_batches, starting).engine
