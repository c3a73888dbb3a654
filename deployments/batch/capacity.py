"""When batch lines may use a pool: a pure decision on the engines' load, the runner's own lines, and time."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.config import BatchRunnerConfig

__all__ = ["PoolLoad", "Slots", "batch_slots"]


@dataclass(frozen=True)
class PoolLoad:
    """One replica's engine load (ModelReplica.stats(): requests running + waiting in the engine) and how many
    of the runner's lines could be among them when it was read."""

    engine_requests: int
    batch_lines: int
    replicas: int
    # Interactive requests started on the replica since the last reading (ModelReplica.stats()'s counter):
    # catches requests that began and ended between two samples of the engine's queue.
    interactive_started: int = 0

    @property
    def interactive(self) -> int:
        # The runner's lines in flight bound its lines in the engine, so the rest is interactive work.
        return max(0, self.engine_requests - self.batch_lines)


@dataclass(frozen=True)
class Slots:
    """How many batch lines the pool may run now, and why."""

    lines: int
    reason: str
    interactive_seen: bool


def batch_slots(load: PoolLoad | None, last_interactive_s: float | None, now_s: float, cfg: BatchRunnerConfig) -> Slots:
    """Lines for the pool: none while interactive work is in its engines or was until `resume_after_s` ago
    (the batch yields at once and comes back only to a quiet pool), else `max_lines_per_replica` a replica."""
    if load is None:
        return Slots(0, "the pool's load is unknown (its replicas did not answer)", False)
    if load.interactive >= cfg.yield_at_interactive:
        return Slots(0, f"{load.interactive} interactive request(s) in the engine: batch yields", True)
    if load.interactive_started > 0:
        return Slots(0, f"{load.interactive_started} interactive request(s) arrived since the last look", True)
    if last_interactive_s is not None and now_s - last_interactive_s < cfg.resume_after_s:
        return Slots(0, f"interactive work {now_s - last_interactive_s:.2f} s ago: waiting for a quiet pool", False)
    return Slots(cfg.max_lines_per_replica * max(1, load.replicas), "the pool is idle", False)
