"""vLLM's own Ray stat logger, with its scheduler gauges sampled instead of set at every engine step.

vLLM's `RayPrometheusStatLogger` sets about ten Ray gauges (requests running / waiting, KV-cache use, ...) and
builds a labelled counter at every engine step, hundreds of times a second under load: profiled, that was most
of what metrics cost a pool replica. Ray exports a gauge's last value every few seconds, so the scheduler's part
is applied at most every `interval_s` (trailing edge: the last step's values always land, also when the engine
goes idle); its prefix-cache counts are carried over, never lost. Steps that bring anything else (speculative
decoding, KV connector, eviction events) pass straight through. Per-request counters and histograms (tokens,
TTFT, ITL, e2e) are vLLM's, untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
from vllm.v1.metrics.stats import SchedulerStats

__all__ = ["SCHEDULER_INTERVAL_S", "SampledRayStatLogger"]

SCHEDULER_INTERVAL_S = 0.25  # well under Ray's export interval, so every export sees a current value


def _only_gauges(stats: SchedulerStats) -> bool:
    """Nothing in the step but gauge values and the prefix cache's counts (which are carried over)."""
    return (stats.connector_prefix_cache_stats is None and stats.spec_decoding_stats is None
            and stats.kv_connector_stats is None and stats.ec_connector_stats is None
            and stats.perf_stats is None and not stats.kv_cache_eviction_events)


class SampledRayStatLogger(RayPrometheusStatLogger):  # type: ignore[misc]
    """`RayPrometheusStatLogger` (the same `ray_vllm_*` series) with scheduler stats sampled every
    `interval_s`; vLLM treats it as its Prometheus logger, so its default `prometheus_client` one is not built."""

    interval_s = SCHEDULER_INTERVAL_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_sampling()

    def _start_sampling(self) -> None:
        self._applied_at: dict[int, float] = {}
        self._held: dict[int, SchedulerStats] = {}  # the latest step not applied yet
        self._carried: dict[int, tuple[int, int]] = {}  # prefix-cache (queries, hits) of skipped steps
        self._flush_scheduled: set[int] = set()

    def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: Any,
               mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            scheduler_stats = self._sampled(scheduler_stats, engine_idx)
        super().record(scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)

    def _sampled(self, stats: SchedulerStats, engine_idx: int) -> SchedulerStats | None:
        now = time.monotonic()
        self._carry(self._held.pop(engine_idx, None), engine_idx)  # superseded by this step
        if _only_gauges(stats) and now - self._applied_at.get(engine_idx, -self.interval_s) < self.interval_s:
            self._held[engine_idx] = stats
            self._schedule_flush(engine_idx)
            return None
        self._applied_at[engine_idx] = now
        return self._with_carried(stats, engine_idx)

    def _carry(self, stats: SchedulerStats | None, engine_idx: int) -> None:
        if stats is not None:
            queries, hits = self._carried.get(engine_idx, (0, 0))
            self._carried[engine_idx] = (queries + stats.prefix_cache_stats.queries,
                                         hits + stats.prefix_cache_stats.hits)

    def _with_carried(self, stats: SchedulerStats, engine_idx: int) -> SchedulerStats:
        """`stats` plus the prefix-cache counts of the steps skipped since the last applied one."""
        queries, hits = self._carried.pop(engine_idx, (0, 0))
        if not queries and not hits:
            return stats
        prefix = stats.prefix_cache_stats
        prefix = dataclasses.replace(prefix, queries=prefix.queries + queries, hits=prefix.hits + hits)
        return dataclasses.replace(stats, prefix_cache_stats=prefix)

    def _schedule_flush(self, engine_idx: int) -> None:
        if engine_idx in self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on vLLM's output handler loop: apply now rather than hold
            self._flush(engine_idx)
            return
        self._flush_scheduled.add(engine_idx)
        loop.call_later(self.interval_s, self._flush, engine_idx)

    def _flush(self, engine_idx: int) -> None:
        """The trailing edge: the held step's gauges (and carried counts) once the interval has passed."""
        self._flush_scheduled.discard(engine_idx)
        held = self._held.pop(engine_idx, None)
        if held is not None:
            self._applied_at[engine_idx] = time.monotonic()
            super().record(self._with_carried(held, engine_idx), None, None, engine_idx)
