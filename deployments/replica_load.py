"""What a model replica tells the autoscaler: engine queue and KV use, recent TTFT, its own start-up time.

Serve calls `ModelReplica.record_autoscaling_stats()` (ray/serve/_private/replica.py, validated as a
dict of str -> int | float) and hands the values to the policy as `ctx.aggregated_metrics`.
"""

from __future__ import annotations

import os
import time
from collections import deque

from deployments.engines.base import EngineStats

__all__ = ["STAT_KV", "STAT_RUNNING", "STAT_STARTUP", "STAT_TTFT", "STAT_WAITING", "ReplicaLoad"]

# The names the policy reads (autoscaling/policy.py).
STAT_WAITING = "engine_waiting_requests"
STAT_RUNNING = "engine_running_requests"
STAT_KV = "kv_cache_usage"
STAT_TTFT = "ttft_recent_s"
STAT_STARTUP = "startup_s"

# TTFTs older than this no longer describe the replica's queue.
_TTFT_WINDOW_S = 15.0
_TTFT_SAMPLES = 256


def _process_started_s() -> float | None:
    """Wall time this process started (the replica's cold start includes the worker and its imports)."""
    try:
        import psutil

        return float(psutil.Process(os.getpid()).create_time())
    except Exception:
        return None


class ReplicaLoad:
    """Recent TTFTs and the start-up time of one replica; cheap enough for every request."""

    def __init__(self) -> None:
        self._created_s = _process_started_s() or time.time()
        self.startup_s = 0.0
        self._ttfts: deque[tuple[float, float]] = deque(maxlen=_TTFT_SAMPLES)

    def ready(self) -> None:
        """The replica can serve: its start-up time is fixed from process start to now."""
        self.startup_s = time.time() - self._created_s
        self._ttfts.clear()  # the warm-up request is not traffic

    def first_token(self, ttft_s: float) -> None:
        self._ttfts.append((time.monotonic(), ttft_s))

    def recent_ttft_s(self) -> float:
        """The slowest of the last window's TTFTs (0 when none): a queue shows first in its tail."""
        horizon = time.monotonic() - _TTFT_WINDOW_S
        while self._ttfts and self._ttfts[0][0] < horizon:
            self._ttfts.popleft()
        return max((t for _, t in self._ttfts), default=0.0)

    def report(self, stats: EngineStats) -> dict[str, float]:
        """The custom autoscaling stats (names read by autoscaling/policy.py)."""
        return {
            STAT_WAITING: float(stats.waiting_requests),
            STAT_RUNNING: float(stats.running_requests),
            STAT_KV: float(stats.kv_cache_usage),
            STAT_TTFT: self.recent_ttft_s(),
            STAT_STARTUP: self.startup_s,
        }
