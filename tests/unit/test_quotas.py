"""Call and token quotas per day and per month: the pure rules, their headers, and the warning threshold."""

from __future__ import annotations

from datetime import UTC, datetime

from cluster.config import TierConfig
from deployments.admission.decisions import WindowUsage, rate_limit_decision, rate_limit_headers
from deployments.admission.quotas import PeriodUsage, month_reset_seconds, tier_quotas, warnings_due


def tier(**quotas: int) -> TierConfig:
    return TierConfig(
        rpm=1_000_000, tpm=1_000_000_000, daily_token_quota=1_000_000_000, max_tokens_cap=64,
        default_priority=3, max_priority=1, **quotas,
    )  # fmt: skip


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_last_call_of_the_daily_quota_is_admitted() -> None:
    decision = rate_limit_decision(
        WindowUsage(day_requests=499), now=at("2026-12-02T12:00:00"), requests=1, tokens=0,
        tier=tier(daily_call_quota=500),
    )  # fmt: skip
    assert decision.admit


def test_call_past_the_daily_quota_waits_until_utc_midnight() -> None:
    decision = rate_limit_decision(
        WindowUsage(day_requests=500), now=at("2026-12-02T23:00:00"), requests=1, tokens=0,
        tier=tier(daily_call_quota=500),
    )  # fmt: skip
    assert (decision.admit, decision.limit, decision.retry_after_s) == (False, "daily_requests", 3600)


def test_call_past_the_monthly_quota_waits_until_the_first_of_next_month() -> None:
    decision = rate_limit_decision(
        WindowUsage(month_requests=100_000), now=at("2026-12-31T22:00:00"), requests=1, tokens=0,
        tier=tier(monthly_call_quota=100_000),
    )  # fmt: skip
    assert (decision.admit, decision.limit, decision.retry_after_s) == (False, "monthly_requests", 7200)


def test_monthly_token_quota_counts_the_reserved_tokens() -> None:
    decision = rate_limit_decision(
        WindowUsage(month_tokens=950), now=at("2026-02-10T00:00:00"), requests=1, tokens=51,
        tier=tier(monthly_token_quota=1000),
    )  # fmt: skip
    assert (decision.admit, decision.limit) == (False, "monthly_tokens")


def test_december_resets_into_january() -> None:
    assert month_reset_seconds(at("2026-12-31T23:59:59")) == 1


def test_only_configured_quotas_are_reported() -> None:
    quotas = tier_quotas(tier(monthly_call_quota=10), PeriodUsage(month_requests=3), at("2026-05-05T00:00:00"))
    assert [(q.kind, q.limit, q.remaining, q.period) for q in quotas] == [
        ("daily_tokens", 1_000_000_000, 1_000_000_000, "2026-05-05"),
        ("monthly_requests", 10, 7, "2026-05"),
    ]


def test_headers_say_which_quota_and_how_much_is_left() -> None:
    decision = rate_limit_decision(
        WindowUsage(day_requests=10), now=at("2026-12-02T12:00:00"), requests=1, tokens=5,
        tier=tier(daily_call_quota=500),
    )  # fmt: skip
    headers = rate_limit_headers(decision.snapshot)
    assert headers["X-Quota-Daily-Requests-Limit"] == "500"
    assert headers["X-Quota-Daily-Requests-Remaining"] == "489"
    assert headers["X-Quota-Daily-Requests-Reset"] == str(12 * 3600)


def test_a_quota_is_due_a_warning_from_the_fraction_on() -> None:
    now = at("2026-12-02T12:00:00")
    below = tier_quotas(tier(daily_call_quota=100), PeriodUsage(day_requests=79), now)
    at_fraction = tier_quotas(tier(daily_call_quota=100), PeriodUsage(day_requests=80), now)
    assert [q.kind for q in warnings_due(below, 0.8)] == []
    assert [q.kind for q in warnings_due(at_fraction, 0.8)] == ["daily_requests"]
