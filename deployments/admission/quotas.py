"""Pure quota rules: calls and tokens per UTC day and calendar month, their headers, and the warning threshold.

No I/O and no clock reads: `now` (epoch seconds) is always a parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from cluster.config import TierConfig

__all__ = [
    "QUOTA_KINDS",
    "PeriodUsage",
    "QuotaKind",
    "QuotaState",
    "QuotaWarning",
    "month_of",
    "month_reset_seconds",
    "quota_headers",
    "tier_quotas",
    "warnings_due",
]

QuotaKind = Literal["daily_requests", "daily_tokens", "monthly_requests", "monthly_tokens"]
QUOTA_KINDS: tuple[QuotaKind, ...] = ("daily_requests", "daily_tokens", "monthly_requests", "monthly_tokens")
_DAY_S = 86_400
_LABELS: dict[QuotaKind, str] = {
    "daily_requests": "daily call quota",
    "daily_tokens": "daily token quota",
    "monthly_requests": "monthly call quota",
    "monthly_tokens": "monthly token quota",
}


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    """What a tenant has used today and this month (UTC)."""

    day_requests: int = 0
    day_tokens: int = 0
    month_requests: int = 0
    month_tokens: int = 0


@dataclass(frozen=True, slots=True)
class QuotaState:
    """One configured quota: its limit, what is used, and when its period resets."""

    kind: QuotaKind
    limit: int
    used: int
    reset_s: int
    period: str  # "2026-12-02" for a day, "2026-12" for a month

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def unit(self) -> Literal["requests", "tokens"]:
        return "requests" if self.kind.endswith("requests") else "tokens"

    @property
    def label(self) -> str:
        return _LABELS[self.kind]


@dataclass(frozen=True, slots=True)
class QuotaWarning:
    """A quota that reached the warning fraction; sent once per tenant, quota and period."""

    tenant: str
    tier: str
    quota: QuotaState
    fraction: float


def month_of(now: float) -> date:
    """The first day of the UTC calendar month that contains `now`."""
    today = datetime.fromtimestamp(now, UTC).date()
    return today.replace(day=1)


def month_reset_seconds(now: float) -> int:
    """Whole seconds (at least 1) until the UTC calendar month containing `now` ends."""
    first = month_of(now)
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    end = datetime(following.year, following.month, 1, tzinfo=UTC).timestamp()
    return max(1, math.ceil(end - now))


def _day_reset_seconds(now: float) -> int:
    return max(1, math.ceil((now // _DAY_S + 1) * _DAY_S - now))


def tier_quotas(tier: TierConfig, used: PeriodUsage, now: float) -> list[QuotaState]:
    """The tier's configured quotas with `used` charged against them."""
    day = datetime.fromtimestamp(now, UTC).date().isoformat()
    month = month_of(now).isoformat()[:7]
    day_reset, month_reset = _day_reset_seconds(now), month_reset_seconds(now)
    candidates: list[tuple[QuotaKind, int | None, int, int, str]] = [
        ("daily_requests", tier.daily_call_quota, used.day_requests, day_reset, day),
        ("daily_tokens", tier.daily_token_quota, used.day_tokens, day_reset, day),
        ("monthly_requests", tier.monthly_call_quota, used.month_requests, month_reset, month),
        ("monthly_tokens", tier.monthly_token_quota, used.month_tokens, month_reset, month),
    ]
    return [
        QuotaState(kind, limit, spent, reset_s, period)
        for kind, limit, spent, reset_s, period in candidates
        if limit is not None
    ]


def warnings_due(quotas: list[QuotaState], fraction: float) -> list[QuotaState]:
    """The quotas whose use has reached `fraction` of the limit (the store sends each once per period)."""
    return [quota for quota in quotas if quota.used >= fraction * quota.limit]


def _header_name(kind: QuotaKind) -> str:
    period, unit = kind.split("_")
    return f"X-Quota-{period.capitalize()}-{unit.capitalize()}"


def quota_headers(quotas: tuple[QuotaState, ...]) -> dict[str, str]:
    """X-Quota-<Period>-<Unit>-{Limit,Remaining,Reset} per configured quota (Reset in seconds)."""
    headers: dict[str, str] = {}
    for quota in quotas:
        name = _header_name(quota.kind)
        headers[f"{name}-Limit"] = str(quota.limit)
        headers[f"{name}-Remaining"] = str(quota.remaining)
        headers[f"{name}-Reset"] = str(quota.reset_s)
    return headers
