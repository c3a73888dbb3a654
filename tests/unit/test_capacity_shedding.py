"""Shedding follows the pool's live capacity and the tiers' TTFT SLOs; Retry-After says when capacity arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from autoscaling.traces import DEFAULT_TIERS, Arrival, tier_slos
from cluster.config import AdmissionConfig, ShedConfig, TierConfig
from deployments.admission.capacity import PoolCapacity, defended_slo_s, predicted_ttft_s, shed_limit
from deployments.admission.decisions import shed_decision
from deployments.admission.gate import AdmissionGate
from deployments.errors import ServiceUnavailable
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


TIER_SLOS = AdmissionConfig().ttft_slos()  # the shipped tiers: enterprise (priority 2) 1 s, pro (3) 2 s


def test_the_shipped_tiers_promise_their_ttft_by_default_priority() -> None:
    assert TIER_SLOS == {2: 1.0, 3: 2.0}  # free promises nothing
    assert [defended_slo_s(p, DEFAULT, TIER_SLOS) for p in range(1, 6)] == [None, None, 1.0, 1.0, 1.0]


def test_tiers_without_an_slo_fall_back_to_the_protected_priorities_slo() -> None:
    tier = TierConfig(rpm=1, tpm=1, daily_token_quota=1, max_tokens_cap=1, default_priority=3, max_priority=3)
    config = AdmissionConfig(tiers={"only": tier}, shed=ShedConfig(ttft_slo_s=4.0, slo_protected_priority=1))
    assert config.ttft_slos() == {1: 4.0}


def test_each_priority_makes_room_for_the_tightest_slo_above_it() -> None:
    # Predicted TTFT 1.5 s misses enterprise's 1 s but not pro's 2 s: pro and below shrink by 1 / 1.5.
    slow = PoolCapacity(replicas=1, max_ongoing_requests=128, ttft_s=1.5)
    limits = [shed_limit(p, 10, DEFAULT, slow, None, TIER_SLOS) for p in range(1, 6)]
    assert limits == pytest.approx([128, 128 * 0.9, 128 * 0.75 / 1.5, 128 * 0.6 / 1.5, 128 * 0.5 / 1.5])
    # The same TTFT without the tiers' SLOs (ShedConfig's 2 s for the protected priorities) sheds nothing extra.
    assert shed_limit(3, 10, DEFAULT, slow, None) == pytest.approx(128 * 0.75)


def test_an_slo_below_a_priority_does_not_shrink_it() -> None:
    slos = {2: 5.0, 4: 0.5}  # a tight SLO on a low tier protects it from priority 5 only
    slow = PoolCapacity(replicas=1, max_ongoing_requests=128, ttft_s=1.0)
    assert shed_limit(3, 10, DEFAULT, slow, None, slos) == pytest.approx(128 * 0.75)
    assert shed_limit(5, 10, DEFAULT, slow, None, slos) == pytest.approx(128 * 0.5 * 0.5)


def test_the_simulator_sheds_by_its_trace_tiers_slos() -> None:
    arrivals = [Arrival(0.0, 10, 10, tier) for tier in DEFAULT_TIERS]
    assert tier_slos(arrivals) == {2: 1.0, 3: 2.0, 5: 5.0}


def test_the_gate_sheds_for_the_tiers_slos(tmp_path: Path) -> None:
    gate = AdmissionGate(AdmissionConfig(key_store_dsn=f"sqlite:///{tmp_path / 'k.db'}"))
    slow = PoolCapacity(replicas=1, max_ongoing_requests=128, ttft_s=1.5)  # misses enterprise's 1 s
    gate.shed(2, "main", 100, slow)  # enterprise keeps 128 x 0.9
    with pytest.raises(ServiceUnavailable) as shed:
        gate.shed(3, "main", 70, slow)  # pro: 128 x 0.75 / 1.5 = 64
    assert "predicted TTFT 1.5 s > the 1 s SLO of a higher priority" in shed.value.message


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
