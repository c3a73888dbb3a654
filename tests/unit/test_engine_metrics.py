"""vLLM's Ray stat logger with sampled scheduler gauges: the last values always land, counts are never lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from vllm.v1.metrics.loggers import PrometheusStatLogger
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats
from vllm.v1.spec_decode.metrics import SpecDecodingStats

from deployments.observability.engine_metrics import SampledRayStatLogger

Applied = list[tuple[SchedulerStats | None, Any]]


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Applied:
    """What reaches vLLM's own record (the Ray metrics themselves are vLLM's and Ray's business)."""
    calls: Applied = []

    def record(self: Any, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        calls.append((scheduler_stats, iteration_stats))

    monkeypatch.setattr(RayPrometheusStatLogger, "record", record)
    return calls


def _logger(interval_s: float) -> SampledRayStatLogger:
    logger = SampledRayStatLogger.__new__(SampledRayStatLogger)  # no VllmConfig: only the sampling is tested
    logger._start_sampling()
    logger.interval_s = interval_s
    return logger


def _step(running: int, queries: int = 0, hits: int = 0) -> SchedulerStats:
    return SchedulerStats(num_running_reqs=running, prefix_cache_stats=PrefixCacheStats(queries=queries, hits=hits))


def _gauges(applied: Applied) -> list[int]:
    return [s.num_running_reqs for s, _ in applied if s is not None]


def test_it_is_vllms_prometheus_logger_so_vllm_builds_no_second_one() -> None:
    assert issubclass(SampledRayStatLogger, RayPrometheusStatLogger)
    assert issubclass(SampledRayStatLogger, PrometheusStatLogger)


async def test_steps_within_the_interval_do_not_set_the_gauges(applied: Applied) -> None:
    logger = _logger(interval_s=3600)
    for running in (1, 2, 3):
        logger.record(_step(running), iteration_stats="tokens")
    assert _gauges(applied) == [1]
    assert [i for _, i in applied] == ["tokens"] * 3  # per-request metrics are recorded at every step


async def test_the_last_step_lands_once_the_interval_has_passed(applied: Applied) -> None:
    logger = _logger(interval_s=0.01)
    for running in (4, 5, 0):
        logger.record(_step(running), iteration_stats=None)
    await asyncio.sleep(logger.interval_s * 5)  # timers fire in deadline order: the flush's comes first
    assert _gauges(applied) == [4, 0]


async def test_prefix_cache_counts_of_skipped_steps_are_carried(applied: Applied) -> None:
    logger = _logger(interval_s=0.01)
    logger.record(_step(1, queries=10, hits=4), None)
    logger.record(_step(1, queries=7, hits=2), None)
    logger.record(_step(1, queries=5, hits=1), None)
    await asyncio.sleep(logger.interval_s * 5)
    counted = [(s.prefix_cache_stats.queries, s.prefix_cache_stats.hits) for s, _ in applied if s is not None]
    assert counted == [(10, 4), (12, 3)]


async def test_a_step_with_more_than_gauges_passes_straight_through(applied: Applied) -> None:
    logger = _logger(interval_s=3600)
    logger.record(_step(1), None)
    special = _step(2)
    special.spec_decoding_stats = SpecDecodingStats.new(num_spec_tokens=1)
    logger.record(special, None)
    assert _gauges(applied) == [1, 2]


def test_without_an_event_loop_nothing_is_held(applied: Applied) -> None:
    logger = _logger(interval_s=3600)
    logger.record(_step(1), None)
    logger.record(_step(2), None)
    assert _gauges(applied) == [1, 2]
