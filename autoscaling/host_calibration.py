"""The host model's constants (autoscaling/sim_host.py) from the CPU the cluster's processes used in a real run.

benchmarks/_cpu_sampler.py samples each of the cluster's processes' cumulative CPU seconds twice a second. From
those, over the calibration phases' windows (each phase is far apart from the next):

* `idle_cores`: the CPU of the cluster's processes other than the engines, and of the load generator's own
  process, over a window with nothing to serve (the engines count as `engine_cores` while they run);
* `serving_cpu_s_per_request`: the serving processes' CPU (all but the engines) beyond their idle, over every
  calibration phase (singles, bursts, batches of 1-128 streams), divided by the phases' requests;
* `engine_cores`: the engines' CPU over the samples inside the batch phases (while they step);
* `light_processes`: how many of the serving processes (and the load generator's) used at least 1 % of a core
  over the calibration, the processes the serving path's CPU is spread over;
* `cold_start_cpu_s`: the CPU the new replica's processes (its Serve replica actor and everything under it, its
  engine included) used from the scale-up decision until it served, in the trace.
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
        self.parents = {str(p): str(r[2]) for p, r in raw["roles"].items() if len(r) > 2}
        start, end = raw["idle_window_unix_s"]
        self.idle_window = Window(float(start), float(end))

    def _bracket(self, window: Window) -> tuple[int, int]:
        """Samples at or before the window's start and at or after its end."""
        i = max(0, bisect.bisect_right(self.times, window.start_unix_s) - 1)
        j = min(len(self.times) - 1, bisect.bisect_left(self.times, window.end_unix_s))
        return i, j

    def _interior(self, window: Window) -> tuple[int, int] | None:
        """The first and last samples inside the window, if there are two."""
        i = bisect.bisect_left(self.times, window.start_unix_s)
        j = bisect.bisect_right(self.times, window.end_unix_s) - 1
        return (i, j) if j > i else None

    def cpu_s(self, window: Window, roles: Sequence[str] | None = None, pids: set[str] | None = None) -> float:
        """CPU seconds the cluster's processes (of `roles` or `pids` if given) used over the window's bracket.
        The load generator ("client") counts only when `roles` names it."""
        return self._used_s(*self._bracket(window), roles, pids)

    def _used_s(self, i: int, j: int, roles: Sequence[str] | None, pids: set[str] | None) -> float:
        before, after = self.samples[i][2], self.samples[j][2]
        total = 0.0
        for pid, used in after.items():
            role = pid if pid in _NOT_CLUSTER else self.roles.get(pid, ("background", 0.0))[0]
            if role == "background" or (role == "client" and "client" not in (roles or ())):
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

    def light_idle_cores(self) -> float:
        """The idle CPU of everything but the engines: the serving processes and the load generator's process
        (on this host it takes the same cores)."""
        return self.idle_cores((*_SERVING, "client"))

    def light_processes(self, window: Window, min_cores: float = 0.01) -> int:
        """The serving processes (engines aside) and load generator processes that used at least `min_cores`
        on average over the window: what the serving path's CPU is spread over."""
        used = {pid: self.cpu_s(window, (*_SERVING, "client"), pids={pid}) for pid in self.samples[-1][2]}
        return sum(1 for cpu_s in used.values() if cpu_s >= min_cores * self.bracket_s(window))

    def serving_cpu_s_per_request(self, phases: Sequence[Window]) -> float:
        """The serving processes' CPU (engines aside) beyond their idle over `phases`, per request (every
        request weighs the same: a least-squares fit weighs phases by requests squared, so the 128-stream batch,
        the cheapest per request, set it alone). Per request, not per token: tokens travel stream_interval at a
        time, and a per-token term fitted beside it came out < 0."""
        idle = self.idle_cores(_SERVING)
        used = sum(self.cpu_s(w, _SERVING) - idle * self.bracket_s(w) for w in phases)
        return max(0.0, used / max(1, sum(w.requests for w in phases)))

    def engine_cores(self, batches: Sequence[Window]) -> float:
        """The engines' cores over the samples inside the batch phases (one engine stepping): the CPU over the
        window's bracket divided by the window alone would count the samples' idle edges as stepping."""
        inside = [b for w in batches if (b := self._interior(w)) is not None]
        used = sum(self._used_s(i, j, ("engine",), None) for i, j in inside)
        return used / max(1e-9, sum(self.times[j] - self.times[i] for i, j in inside)) if inside else 0.0

    def new_pids(self, role_prefix: str, since_unix_s: float) -> set[str]:
        """Processes that took a role starting with `role_prefix` at or after `since_unix_s`."""
        return {pid for pid, (role, since) in self.roles.items()
                if role.startswith(role_prefix) and since >= since_unix_s}  # fmt: skip

    def _replica_of(self, pid: str) -> str:
        """The replica actor above a process (itself if none is found)."""
        seen, at = set(), pid
        while at in self.parents and at not in seen:
            seen.add(at)
            at = self.parents[at]
            if self.roles.get(at, ("", 0.0))[0].startswith("replica:"):
                return at
        return pid

    def _under(self, roots: set[str]) -> set[str]:
        """`roots` and every process below them."""
        found = set(roots)
        while True:
            more = {p for p, parent in self.parents.items() if parent in found} - found
            if not more:
                return found
            found |= more

    def cold_start_cpu_s(self, decision_unix_s: float, ready_unix_s: float) -> float:
        """CPU the replica started at the decision used until it served: the replica actor above each engine
        process that appeared after the decision (only the trace's pool scales), and everything under it. Not
        by when a replica's role was seen: a replica's process title names the method it runs, so the serving
        replica took a "new" role after the decision too."""
        actors = {self._replica_of(p) for p in self.new_pids("engine", decision_unix_s)}
        return self.cpu_s(Window(decision_unix_s, ready_unix_s), pids=self._under(actors))
