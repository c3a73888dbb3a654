"""The host model's constants (autoscaling/sim_host.py) from the CPU the cluster's processes used in a real run.

benchmarks/_cpu_sampler.py samples each of the cluster's processes' cumulative CPU seconds twice a second. From
those, over the calibration phases' windows (each phase is far apart from the next):

* `idle_cores`: the cluster's CPU over a window with nothing to serve;
* `serving_cpu_s_per_request`: the serving processes' CPU (all but the engines) per request beyond their idle,
  over every calibration phase (singles, bursts, batches of 1-128 streams);
* `engine_cores`: the engines' CPU beyond idle over the batch phases' wall time (first send to last end);
* `cold_start_cpu_s`: the CPU the new replica's processes (its Serve replica actor, its engine) used from the
  scale-up decision until it served, in the trace.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["HostSamples", "Window"]

_NOT_CLUSTER = ("client", "background")
_SERVING = ("serving", "replica:")


@dataclass(frozen=True)
class Window:
    start_unix_s: float
    end_unix_s: float
    requests: int = 0


class HostSamples:
    """A run's CPU samples: [t_unix, host busy s, {pid: CPU s}] and each pid's [role, since t_unix, ppid]."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.cores = float(raw["cores"])
        self.samples = sorted(raw["samples"], key=lambda s: float(s[0]))
        self.times = [float(s[0]) for s in self.samples]
        self.roles = {str(p): (str(r[0]), float(r[1])) for p, r in raw["roles"].items()}
        start, end = raw["idle_window_unix_s"]
        self.idle_window = Window(float(start), float(end))

    def _bracket(self, window: Window) -> tuple[int, int]:
        """Samples at or before the window's start and at or after its end."""
        i = max(0, bisect.bisect_right(self.times, window.start_unix_s) - 1)
        j = min(len(self.times) - 1, bisect.bisect_left(self.times, window.end_unix_s))
        return i, j

    def cpu_s(self, window: Window, roles: Sequence[str] | None = None, pids: set[str] | None = None) -> float:
        """CPU seconds the cluster's processes (of `roles` or `pids` if given) used over the window's bracket."""
        i, j = self._bracket(window)
        before, after = self.samples[i][2], self.samples[j][2]
        total = 0.0
        for pid, used in after.items():
            role = self.roles.get(pid, ("background", 0.0))[0]
            if pid in _NOT_CLUSTER or role in _NOT_CLUSTER:
                continue
            if roles is not None and not any(role.startswith(r) for r in roles):
                continue
            if pids is not None and pid not in pids:
                continue
            total += used - float(before.get(pid, 0.0))
        return total

    def bracket_s(self, window: Window) -> float:
        i, j = self._bracket(window)
        return self.times[j] - self.times[i]

    def idle_cores(self, roles: Sequence[str] | None = None) -> float:
        return self.cpu_s(self.idle_window, roles) / max(1e-9, self.bracket_s(self.idle_window))

    def serving_cpu_s_per_request(self, phases: Sequence[Window]) -> float:
        """The serving processes' CPU (engines aside) per request, beyond their idle, fitted over `phases` by
        least squares (each phase's CPU = requests x the cost; its tokens come in pieces of stream_interval
        tokens, so the request, not the token, is what costs: a per-token term fitted beside it came out < 0)."""
        idle = self.idle_cores(_SERVING)
        used = [(w.requests, self.cpu_s(w, _SERVING) - idle * self.bracket_s(w)) for w in phases]
        return max(0.0, sum(n * y for n, y in used) / max(1, sum(n * n for n, _ in used)))

    def engine_cores(self, batches: Sequence[Window]) -> float:
        """The median cores the engines took beyond idle over the batch phases' wall time (one engine busy)."""
        idle = self.idle_cores(("engine",))
        cores = sorted((self.cpu_s(w, ("engine",)) - idle * self.bracket_s(w))
                       / max(1e-9, w.end_unix_s - w.start_unix_s) for w in batches)  # fmt: skip
        return cores[len(cores) // 2] if cores else 0.0

    def new_pids(self, role_prefix: str, since_unix_s: float) -> set[str]:
        """Processes that took a role starting with `role_prefix` at or after `since_unix_s` (a new replica's)."""
        return {pid for pid, (role, since) in self.roles.items()
                if role.startswith(role_prefix) and since >= since_unix_s}  # fmt: skip

    def cold_start_cpu_s(self, decision_unix_s: float, ready_unix_s: float) -> float:
        """CPU the replica started at the decision (its actor and its engine's processes) used until it served:
        the processes that became a replica or an engine after the decision (only the trace's pool scales)."""
        pids = self.new_pids("replica:", decision_unix_s - 1.0) | self.new_pids("engine", decision_unix_s)
        return self.cpu_s(Window(decision_unix_s, ready_unix_s), pids=pids)
