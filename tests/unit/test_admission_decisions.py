"""Admission decisions and tier configuration: pure, no I/O."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from cluster.config import AdmissionConfig, ShedConfig, TierConfig
from deployments.admission.decisions import (
    LimitSnapshot,
    Rejection,
    Reservation,
    WindowUsage,
    cap_max_tokens,
    check_model_allowed,
    clamp_priority,
    day_of,
    format_reset,
    rate_limit_decision,
    rate_limit_headers,
    reset_seconds,
    shed_decision,
    window_start,
)

# 2023-11-14 22:13:20 UTC, 20 s into its minute; 6400 s before UTC midnight.
NOW = 1_700_000_000.0


def tier(**overrides: object) -> TierConfig:
    fields: dict[str, object] = dict(
        rpm=10, tpm=1000, daily_token_quota=5000, max_tokens_cap=256,
        allowed_models=["*"], default_priority=3, max_priority=2,
    )  # fmt: skip
    return TierConfig.model_validate({**fields, **overrides})


def snapshot(**overrides: int) -> LimitSnapshot:
    fields = dict(
        limit_requests=10, remaining_requests=7, limit_tokens=1000, remaining_tokens=400, reset_s=12,
        daily_token_quota=5000, daily_tokens_used=100,
    )  # fmt: skip
    return LimitSnapshot(**{**fields, **overrides})


# Configuration


def test_tier_rejects_max_priority_worse_than_default() -> None:
    with pytest.raises(ValidationError, match="max_priority"):
        tier(default_priority=2, max_priority=3)


def test_tier_rejects_priority_outside_one_to_five() -> None:
    with pytest.raises(ValidationError):
        tier(default_priority=6)


def test_admission_config_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        AdmissionConfig.model_validate({"tiers_typo": {}})


def test_admission_config_defaults_to_free_pro_enterprise() -> None:
    tiers = AdmissionConfig().tiers
    assert sorted(tiers) == ["enterprise", "free", "pro"]
    assert (tiers["free"].rpm, tiers["free"].default_priority, tiers["free"].max_priority) == (20, 5, 4)
    assert tiers["enterprise"].max_priority == 1


def test_admission_config_rejects_unknown_dsn_scheme() -> None:
    with pytest.raises(ValidationError, match="key_store_dsn"):
        AdmissionConfig(key_store_dsn="mysql://localhost/keys")


def test_admission_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        AdmissionConfig().enabled = False  # type: ignore[misc]


def test_shed_config_needs_every_priority() -> None:
    with pytest.raises(ValidationError, match=r"priorities 1\.\.5"):
        ShedConfig(admit_fraction={1: 1.0, 2: 0.5})


def test_shed_config_rejects_fraction_growing_as_priority_falls() -> None:
    with pytest.raises(ValidationError, match="lowest priority sheds first"):
        ShedConfig(admit_fraction={1: 1.0, 2: 0.9, 3: 0.75, 4: 0.5, 5: 0.6})


# Priority


def test_missing_priority_gets_tier_default() -> None:
    assert clamp_priority(None, tier()).priority == 3


def test_requested_priority_within_bounds_is_kept() -> None:
    assert clamp_priority(2, tier()).priority == 2


def test_priority_may_be_lowered_below_tier_default() -> None:
    assert clamp_priority(5, tier()).priority == 5


def test_priority_above_tier_best_is_clamped_to_it() -> None:
    decision = clamp_priority(1, tier())
    assert decision.priority == 2
    assert "best priority" in decision.reason


def test_priority_below_lowest_is_clamped_to_five() -> None:
    assert clamp_priority(9, tier()).priority == 5


# Models


def test_star_allows_every_model() -> None:
    assert check_model_allowed("surge-tiny", tier(allowed_models=["*"]))


def test_model_outside_allowed_list_is_refused() -> None:
    assert not check_model_allowed("big-model", tier(allowed_models=["surge-tiny"]))


def test_allowed_models_accept_patterns() -> None:
    assert check_model_allowed("surge-tiny-v2", tier(allowed_models=["surge-tiny*"]))


# max_tokens


def test_missing_max_tokens_reserves_tier_cap() -> None:
    assert cap_max_tokens(None, tier(), None) == 256


def test_max_tokens_below_cap_is_kept() -> None:
    assert cap_max_tokens(100, tier(), None) == 100


def test_max_tokens_above_cap_is_capped() -> None:
    assert cap_max_tokens(4000, tier(), None) == 256


def test_max_tokens_is_capped_by_context_room() -> None:
    assert cap_max_tokens(200, tier(), 50) == 50


def test_max_tokens_is_zero_when_context_is_full() -> None:
    assert cap_max_tokens(None, tier(), -3) == 0


# Shedding


FIXED_64 = ShedConfig(queue_limit=64)  # a fixed limit (the default follows live capacity: test_capacity_shedding)


def test_shed_admits_below_threshold() -> None:
    decision = shed_decision(3, 47, FIXED_64)  # 64 * 0.75 = 48
    assert decision.admit
    assert decision.retry_after_s == 0


def test_shed_refuses_at_threshold_with_retry_after() -> None:
    decision = shed_decision(3, 48, ShedConfig(queue_limit=64, retry_after_s=4))
    assert not decision.admit
    assert decision.retry_after_s == 4
    assert "overloaded" in decision.reason


def test_lowest_priority_is_shed_first() -> None:
    shed = FIXED_64
    assert [shed_decision(p, 35, shed).admit for p in range(1, 6)] == [True, True, True, True, False]


def test_highest_priority_is_admitted_until_the_full_queue_limit() -> None:
    shed = FIXED_64
    assert shed_decision(1, 63, shed).admit
    assert not shed_decision(1, 64, shed).admit


def test_pool_queue_limit_overrides_default() -> None:
    shed = ShedConfig(queue_limit=64, pool_queue_limits={"big": 10})
    assert not shed_decision(1, 10, shed, pool="big").admit
    assert shed_decision(1, 10, shed, pool="small").admit


# Windows


def test_window_start_aligns_to_the_window() -> None:
    assert window_start(NOW, 60) == 1_699_999_980


def test_reset_seconds_counts_to_the_window_end() -> None:
    assert reset_seconds(NOW, 60) == 40


def test_reset_seconds_at_window_start_is_the_whole_window() -> None:
    assert reset_seconds(1_699_999_980.0, 60) == 60


def test_reset_seconds_rounds_up_to_at_least_one() -> None:
    assert reset_seconds(1_700_000_039.9, 60) == 1


def test_day_is_the_utc_calendar_day() -> None:
    assert day_of(NOW) == date(2023, 11, 14)


# Rate limits


def test_charge_within_limits_is_admitted_and_counted_in_snapshot() -> None:
    decision = rate_limit_decision(WindowUsage(3, 500, 1000), now=NOW, requests=1, tokens=100, tier=tier())
    assert decision.admit
    assert (decision.snapshot.remaining_requests, decision.snapshot.remaining_tokens) == (6, 400)
    assert decision.snapshot.daily_tokens_used == 1100


def test_request_over_rpm_is_rejected_until_the_minute_ends() -> None:
    decision = rate_limit_decision(WindowUsage(10, 0, 0), now=NOW, requests=1, tokens=1, tier=tier())
    assert (decision.admit, decision.limit, decision.retry_after_s) == (False, "requests", 40)


def test_tokens_over_tpm_are_rejected() -> None:
    decision = rate_limit_decision(WindowUsage(0, 950, 950), now=NOW, requests=1, tokens=100, tier=tier())
    assert (decision.admit, decision.limit) == (False, "tokens")


def test_tokens_over_daily_quota_are_rejected_until_utc_midnight() -> None:
    decision = rate_limit_decision(WindowUsage(0, 0, 4990), now=NOW, requests=1, tokens=20, tier=tier())
    assert (decision.admit, decision.limit, decision.retry_after_s) == (False, "daily_tokens", 6400)


def test_rejection_reports_the_limit_that_binds_longest() -> None:
    decision = rate_limit_decision(WindowUsage(10, 1000, 5000), now=NOW, requests=1, tokens=1, tier=tier())
    assert decision.limit == "daily_tokens"


def test_charge_exactly_at_the_limit_is_admitted() -> None:
    decision = rate_limit_decision(WindowUsage(9, 900, 4900), now=NOW, requests=1, tokens=100, tier=tier())
    assert decision.admit
    assert decision.snapshot.remaining_tokens == 0


def test_request_larger_than_the_limit_says_it_never_fits() -> None:
    decision = rate_limit_decision(WindowUsage(), now=NOW, requests=1, tokens=2000, tier=tier())
    assert "more than the limit itself" in decision.reason


# Headers


def test_headers_are_openai_rate_limit_headers() -> None:
    assert rate_limit_headers(snapshot()) == {
        "X-RateLimit-Limit-Requests": "10",
        "X-RateLimit-Remaining-Requests": "7",
        "X-RateLimit-Limit-Tokens": "1000",
        "X-RateLimit-Remaining-Tokens": "400",
        "X-RateLimit-Reset-Requests": "12s",
        "X-RateLimit-Reset-Tokens": "12s",
    }


def test_quota_warning_appears_at_the_warning_fraction() -> None:
    headers = rate_limit_headers(snapshot(daily_tokens_used=4000), warning_fraction=0.8)
    assert headers["X-Quota-Warning"].startswith("80% of the daily token quota used")


def test_no_quota_warning_below_the_warning_fraction() -> None:
    assert "X-Quota-Warning" not in rate_limit_headers(snapshot(daily_tokens_used=3999), warning_fraction=0.8)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (12, "12s"), (60, "1m0s"), (372, "6m12s"), (3723, "1h2m3s")]
)
def test_reset_is_formatted_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_rejection_headers_carry_retry_after() -> None:
    rejection = Rejection("key_1", "requests", 40, "requests per minute exceeded", snapshot())
    assert rejection.headers()["Retry-After"] == "40"
    assert rejection.headers()["X-RateLimit-Remaining-Requests"] == "7"


def test_reservation_headers_omit_retry_after() -> None:
    reservation = Reservation("key_1", 1_699_999_980, date(2023, 11, 14), 1, 10, snapshot())
    assert "Retry-After" not in reservation.headers()
