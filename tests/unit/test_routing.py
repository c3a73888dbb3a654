"""Specs for the traffic router's pure decisions: canary, breaker, fallback, backoff."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from deployments.routing import (
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    allow_request,
    backoff_delay_s,
    choose_pool,
    may_retry,
    on_result,
    pick_version,
)

POLICY = BreakerPolicy(failure_threshold=3, open_s=10.0, timeout_s=5.0)


# --- canary -------------------------------------------------------------------------------------


def test_canary_split_matches_weights_within_five_percent() -> None:
    rng = random.Random(7)
    counts = Counter(pick_version({"v1": 0.9, "v2": 0.1}, rng.random()).version for _ in range(1000))
    assert abs(counts["v2"] / 1000 - 0.1) < 0.05


def test_canary_weights_need_not_sum_to_one() -> None:
    rng = random.Random(3)
    counts = Counter(pick_version({"a": 3, "b": 1}, rng.random()).version for _ in range(1000))
    assert abs(counts["a"] / 1000 - 0.75) < 0.05


def test_canary_never_picks_zero_weight_version() -> None:
    picks = {pick_version({"old": 0.0, "new": 1.0}, i / 100).version for i in range(100)}
    assert picks == {"new"}


def test_canary_ignores_configuration_order() -> None:
    first = pick_version({"a": 1, "b": 1}, 0.7).version
    assert pick_version({"b": 1, "a": 1}, 0.7).version == first


def test_canary_decision_explains_share() -> None:
    assert "75.0%" in pick_version({"a": 3, "b": 1}, 0.0).reason


@pytest.mark.parametrize("weights", [{}, {"a": 0.0}, {"a": -1.0, "b": 2.0}])
def test_canary_rejects_unusable_weights(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        pick_version(weights, 0.5)


@pytest.mark.parametrize("rng_value", [-0.1, 1.0])
def test_canary_rejects_rng_value_outside_unit_interval(rng_value: float) -> None:
    with pytest.raises(ValueError):
        pick_version({"a": 1}, rng_value)


# --- breaker ------------------------------------------------------------------------------------


def _fail(state: BreakerState, times: int, now: float = 0.0) -> BreakerState:
    for _ in range(times):
        state = on_result(state, False, now, POLICY)
    return state


def test_breaker_starts_closed_and_allows() -> None:
    decision, _ = allow_request(BreakerState(), 0.0, POLICY)
    assert decision.allowed and not decision.is_probe


def test_breaker_stays_closed_below_threshold() -> None:
    assert _fail(BreakerState(), 2).status is BreakerStatus.CLOSED


def test_breaker_opens_after_consecutive_failures() -> None:
    assert _fail(BreakerState(), 3).status is BreakerStatus.OPEN


def test_success_resets_the_failure_count() -> None:
    state = on_result(_fail(BreakerState(), 2), True, 0.0, POLICY)
    assert _fail(state, 2).status is BreakerStatus.CLOSED


def test_open_breaker_rejects_with_retry_after() -> None:
    decision, _ = allow_request(_fail(BreakerState(), 3, now=100.0), 104.0, POLICY)
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(6.0)


def test_open_breaker_ignores_late_results() -> None:
    state = _fail(BreakerState(), 3)
    assert on_result(state, True, 1.0, POLICY) == state


def test_half_open_allows_exactly_one_probe() -> None:
    state = _fail(BreakerState(), 3, now=0.0)
    first, state = allow_request(state, 10.0, POLICY)
    second, state = allow_request(state, 10.1, POLICY)
    assert (first.allowed, first.is_probe) == (True, True)
    assert not second.allowed
    assert state.status is BreakerStatus.HALF_OPEN


def test_probe_success_closes_the_breaker() -> None:
    _, state = allow_request(_fail(BreakerState(), 3), 10.0, POLICY)
    assert on_result(state, True, 10.5, POLICY) == BreakerState()


def test_probe_failure_reopens_the_breaker() -> None:
    _, state = allow_request(_fail(BreakerState(), 3), 10.0, POLICY)
    state = on_result(state, False, 10.5, POLICY)
    decision, _ = allow_request(state, 11.0, POLICY)
    assert state.status is BreakerStatus.OPEN and not decision.allowed
    assert decision.retry_after_s == pytest.approx(9.5)


def test_probe_timeout_counts_as_failure() -> None:
    _, state = allow_request(_fail(BreakerState(), 3), 10.0, POLICY)
    decision, state = allow_request(state, 15.0, POLICY)
    assert not decision.allowed
    assert (state.status, state.opened_at) == (BreakerStatus.OPEN, 15.0)


def test_timeout_reported_as_failure_opens_the_breaker() -> None:
    # A request that timed out is reported with ok=False, like any other failure.
    assert _fail(BreakerState(), 3).consecutive_failures == 3


def test_breaker_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(failure_threshold=0)


# --- fallback -----------------------------------------------------------------------------------


def test_healthy_primary_keeps_traffic() -> None:
    decision = choose_pool("big", "small", False, 3, 10)
    assert (decision.pool, decision.is_fallback) == ("big", False)


def test_open_breaker_sends_to_fallback() -> None:
    decision = choose_pool("big", "small", True, 0, 10)
    assert (decision.pool, decision.is_fallback) == ("small", True)
    assert "breaker" in decision.reason


def test_deep_queue_sends_to_fallback() -> None:
    decision = choose_pool("big", "small", False, 10, 10)
    assert (decision.pool, decision.is_fallback) == ("small", True)


def test_without_fallback_primary_is_kept() -> None:
    decision = choose_pool("big", None, True, 50, 10)
    assert (decision.pool, decision.is_fallback) == ("big", False)


def test_zero_queue_threshold_disables_spill_over() -> None:
    assert not choose_pool("big", "small", False, 500, 0).is_fallback


# --- backoff and retry --------------------------------------------------------------------------


def test_backoff_envelope_grows_exponentially() -> None:
    delays = [backoff_delay_s(a, base_s=0.05, cap_s=100.0, rng_value=0.5) for a in range(4)]
    assert delays == pytest.approx([0.025, 0.05, 0.1, 0.2])


def test_backoff_is_capped() -> None:
    assert backoff_delay_s(30, base_s=0.05, cap_s=2.0, rng_value=0.999) <= 2.0


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert backoff_delay_s(10_000, rng_value=0.5) == pytest.approx(1.0)


def test_backoff_is_full_jitter() -> None:
    assert backoff_delay_s(3, rng_value=0.0) == 0.0


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError):
        backoff_delay_s(-1, rng_value=0.5)


def test_retry_allowed_before_first_token() -> None:
    assert may_retry(1, 3, first_token_sent=False)


def test_no_retry_after_first_token() -> None:
    assert not may_retry(1, 3, first_token_sent=True)


def test_no_retry_past_max_attempts() -> None:
    assert not may_retry(3, 3, first_token_sent=False)


# --- route_request: canary, fallback and breakers together -------------------------------------------

from cluster.config import RouteConfig  # noqa: E402
from deployments.routing import route_request  # noqa: E402

ROUTE = RouteConfig(model="m", pools={"main": 1.0}, fallback="small", queue_threshold=8)


def test_route_goes_to_primary_when_healthy() -> None:
    decision = route_request(ROUTE, 0.5, {}, lambda pool: True)
    assert (decision.pool, decision.is_fallback) == ("main", False)


def test_route_falls_back_when_primary_breaker_refuses() -> None:
    decision = route_request(ROUTE, 0.5, {}, lambda pool: pool != "main")
    assert (decision.pool, decision.is_fallback) == ("small", True)


def test_route_falls_back_when_primary_queue_is_deep() -> None:
    decision = route_request(ROUTE, 0.5, {"main": 8}, lambda pool: True)
    assert (decision.pool, decision.is_fallback) == ("small", True)


def test_route_is_unavailable_when_every_pool_refuses() -> None:
    decision = route_request(ROUTE, 0.5, {}, lambda pool: False)
    assert decision.pool is None and decision.retry_after_s


def test_route_without_fallback_is_unavailable_when_primary_refuses() -> None:
    route = RouteConfig(model="m", pools={"main": 1.0})
    assert route_request(route, 0.5, {}, lambda pool: False).pool is None


def test_route_stays_on_deep_primary_when_fallback_is_down() -> None:
    decision = route_request(ROUTE, 0.5, {"main": 9}, lambda pool: pool == "main")
    assert decision.pool == "main"


def test_route_follows_canary_weights() -> None:
    route = RouteConfig(model="m", pools={"v1": 0.9, "v2": 0.1})
    picks = [route_request(route, i / 1000, {}, lambda pool: True).pool for i in range(1000)]
    assert abs(picks.count("v2") - 100) <= 50
