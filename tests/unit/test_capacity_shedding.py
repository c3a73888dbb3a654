"""Shedding follows the pool's live capacity and the TTFT SLO; Retry-After says when capacity arrives."""

from __future__ import annotations

import asyncio

from cluster.config import ShedConfig
from deployments.admission.capacity import PoolCapacity, predicted_ttft_s
from deployments.admission.decisions import shed_decision
from deployments.pool_capacity import CapacityWatch, PoolSize, ReplicaCounts

DEFAULT = ShedConfig()
ONE_REPLICA = PoolCapacity(replicas=1, max_ongoing_requests=128)


def test_one_enterprise_key_with_64_streams_on_one_replica_is_not_shed() -> None:
    # enterprise runs at priority 2; 64 concurrent streams on one replica of max_ongoing_requests 128
    assert all(shed_decision(2, depth, DEFAULT, capacity=ONE_REPLICA).admit for depth in range(64))


def test_a_pool_that_grows_sheds_later() -> None:
    two = PoolCapacity(replicas=2, max_ongoing_requests=128)
    assert not shed_decision(5, 64, DEFAULT, capacity=ONE_REPLICA).admit  # 128 x 0.5
    assert shed_decision(5, 64, DEFAULT, capacity=two).admit


def test_the_lowest_priority_is_still_shed_first() -> None:
    admitted = [shed_decision(p, 100, DEFAULT, capacity=ONE_REPLICA).admit for p in range(1, 6)]
    assert admitted == [True, True, False, False, False]  # 128 x (1, 0.9, 0.75, 0.6, 0.5)


def test_a_fixed_queue_limit_still_wins_over_capacity() -> None:
    fixed = ShedConfig(queue_limit=8)
    assert not shed_decision(1, 8, fixed, capacity=ONE_REPLICA).admit


def test_an_unknown_capacity_leaves_shedding_to_serve_backpressure() -> None:
    assert shed_decision(5, 10_000, DEFAULT).admit


def test_missing_the_slo_sheds_unprotected_priorities_before_the_capacity_limit() -> None:
    slow = PoolCapacity(replicas=1, max_ongoing_requests=128, ttft_s=4.0)  # SLO 2 s: half the share
    assert not shed_decision(3, 60, DEFAULT, capacity=slow).admit  # 128 x 0.75 x 0.5 = 48
    assert shed_decision(2, 60, DEFAULT, capacity=slow).admit  # protected: keeps 128 x 0.9


def test_predicted_ttft_grows_with_the_queue_beyond_capacity() -> None:
    pool = PoolCapacity(replicas=1, max_ongoing_requests=10, ttft_s=1.0)
    assert predicted_ttft_s(4, pool) == 1.0
    assert predicted_ttft_s(29, pool) == 3.0


def test_retry_after_is_the_time_until_starting_replicas_serve() -> None:
    starting = PoolCapacity(replicas=1, max_ongoing_requests=128, starting_replicas=1, ready_in_s=41.2)
    decision = shed_decision(5, 100, DEFAULT, capacity=starting)
    assert not decision.admit and decision.retry_after_s == 42
    assert "1 starting" in decision.reason


def test_retry_after_without_replicas_on_the_way_is_the_backlog_drain() -> None:
    backlog = PoolCapacity(replicas=1, max_ongoing_requests=10, ttft_s=2.0)
    assert shed_decision(5, 20, DEFAULT, capacity=backlog).retry_after_s == 5  # 2 s x 21/10 -> 5


class Counts:
    """Stands in for Serve's status: replica counts per deployment, changed by the test."""

    def __init__(self) -> None:
        self.now: dict[str, ReplicaCounts] = {"pool-main": ReplicaCounts(running=1, starting=0)}

    def __call__(self, app_name: str) -> dict[str, ReplicaCounts]:
        return dict(self.now)


async def test_the_watch_reports_starting_replicas_with_their_expected_ready_time() -> None:
    counts = Counts()
    watch = CapacityWatch({"main": PoolSize("pool-main", 128, 1, cold_start_s=30.0)}, counts)
    await watch.poll_once("surge")
    assert watch.snapshot()["main"] == PoolCapacity(1, 128)
    counts.now["pool-main"] = ReplicaCounts(running=1, starting=1)
    await watch.poll_once("surge")
    growing = watch.snapshot()["main"]
    assert growing.starting_replicas == 1 and growing.ready_in_s is not None and 29 < growing.ready_in_s <= 30
    counts.now["pool-main"] = ReplicaCounts(running=2, starting=0)
    await watch.poll_once("surge")
    grown = watch.snapshot()["main"]
    assert grown.replicas == 2 and grown.starting_replicas == 0 and grown.ready_in_s is None
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
