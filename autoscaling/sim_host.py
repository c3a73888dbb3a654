"""The simulator's host: one CPU budget shared by every replica's engine, the serving path and starting replicas.

On a small CPU host (the local profile: 2 cores run every engine, HAProxy, the ingress, the routers and Ray)
the host's cores, not each engine, are what limits: a second replica's engine load takes cores from the serving
one, and every request's way through the serving path costs CPU beside the engine's steps. The model is
processor sharing: each consumer demands cores (measured through the cluster, autoscaling/fidelity.py), and
when their sum exceeds the host's cores every one of them runs at the same fraction of its speed.

GPU profiles leave `host_cores` at 0 and the host is not modelled: each replica has its device, and the serving
path runs on CPUs the engines do not need, so the host is not the bottleneck there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from autoscaling.profiles import EngineProfile

__all__ = ["HostCpu"]

_RATE_WINDOW_S = 2.0  # the serving path's request rate: requests that entered it in this window


class HostCpu:
    """The host's CPU share at a moment: `speed` is the fraction of full speed every consumer gets."""

    def __init__(self, profile: EngineProfile) -> None:
        self.profile = profile
        self._entered: deque[float] = deque()

    @property
    def modelled(self) -> bool:
        return self.profile.host_cores > 0

    def note_request(self, now_s: float) -> None:
        """A request entered the serving path (its CPU per request counts for `_RATE_WINDOW_S`)."""
        self._entered.append(now_s)

    def request_rate_rps(self, now_s: float) -> float:
        while self._entered and self._entered[0] <= now_s - _RATE_WINDOW_S:
            self._entered.popleft()
        return len(self._entered) / _RATE_WINDOW_S

    def demand_cores(self, now_s: float, running_batches: Iterable[int], starting: int) -> float:
        """Cores wanted at full speed: the cluster at idle, each engine with sequences running, each request
        entering the serving path, each replica starting."""
        p = self.profile
        replicas = sum(p.engine_cores for b in running_batches if b > 0)
        serving = self.request_rate_rps(now_s) * p.serving_cpu_s_per_request
        return p.idle_cores + replicas + serving + starting * p.cold_start_cores

    def speed(self, now_s: float, running_batches: Iterable[int], starting: int) -> float:
        if not self.modelled:
            return 1.0
        demand = self.demand_cores(now_s, running_batches, starting)
        return min(1.0, self.profile.host_cores / demand) if demand > 0 else 1.0
