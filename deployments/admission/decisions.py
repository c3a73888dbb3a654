"""Pure admission decisions: priority, models, max_tokens, shedding, rate-limit windows and headers.

No I/O and no clock reads: `now` (epoch seconds) is always a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from typing import Literal

from cluster.config import ShedConfig, TierConfig
from deployments.admission.capacity import PoolCapacity, capacity_shed_decision
from deployments.admission.quotas import QUOTA_KINDS, PeriodUsage, QuotaState, quota_headers, tier_quotas

__all__ = [
    "DAY_S",
    "LOWEST_PRIORITY",
    "MINUTE_S",
    "LimitDecision",
    "LimitKind",
    "LimitSnapshot",
    "PriorityDecision",
    "Rejection",
    "Reservation",
    "ShedDecision",
    "WindowUsage",
    "cap_max_tokens",
    "check_model_allowed",
    "clamp_priority",
    "day_of",
    "format_reset",
    "quota_warning",
    "rate_limit_decision",
    "rate_limit_headers",
    "reset_seconds",
    "shed_decision",
    "window_start",
]

MINUTE_S = 60
DAY_S = 86_400
LOWEST_PRIORITY = 5

LimitKind = Literal["requests", "tokens", "daily_tokens", "daily_requests", "monthly_requests", "monthly_tokens"]


@dataclass(frozen=True, slots=True)
class PriorityDecision:
    """The priority a request runs at, and why."""

    priority: int
    reason: str


@dataclass(frozen=True, slots=True)
class ShedDecision:
    """Whether a request enters its pool's queue; a shed one is told when to retry."""

    admit: bool
    retry_after_s: int
    reason: str


@dataclass(frozen=True, slots=True)
class LimitSnapshot:
    """A key's limits and what is left of them, as the rate-limit headers report it."""

    limit_requests: int
    remaining_requests: int
    limit_tokens: int
    remaining_tokens: int
    reset_s: int  # both minute windows reset together
    daily_token_quota: int
    daily_tokens_used: int
    # Every configured call/token quota per day and month, after this request's charge.
    quotas: tuple[QuotaState, ...] = ()


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """What a key has used in the current minute window, the current UTC day and month."""

    minute_requests: int = 0
    minute_tokens: int = 0
    day_tokens: int = 0
    day_requests: int = 0
    month_requests: int = 0
    month_tokens: int = 0

    def periods(self) -> PeriodUsage:
        return PeriodUsage(self.day_requests, self.day_tokens, self.month_requests, self.month_tokens)

    def charged(self, requests: int, tokens: int) -> WindowUsage:
        return WindowUsage(
            self.minute_requests + requests, self.minute_tokens + tokens, self.day_tokens + tokens,
            self.day_requests + requests, self.month_requests + requests, self.month_tokens + tokens,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """Whether a charge fits every limit; `limit` names the binding one when it does not."""

    admit: bool
    limit: LimitKind | None
    retry_after_s: int
    reason: str
    snapshot: LimitSnapshot


@dataclass(frozen=True, slots=True)
class Reservation:
    """Charged capacity for one request; settle it once with the tokens actually used."""

    key_id: str
    minute_start: int
    day: date
    requests: int
    tokens: int
    snapshot: LimitSnapshot
    # Quotas that reached the warning fraction with this charge and were not yet warned about this period.
    warnings: tuple[QuotaState, ...] = ()

    def headers(self, warning_fraction: float = 0.8) -> dict[str, str]:
        """The X-RateLimit-* (and X-Quota-Warning) headers for the response."""
        return rate_limit_headers(self.snapshot, warning_fraction=warning_fraction)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request that does not fit: which limit, why, and when to retry."""

    key_id: str
    limit: LimitKind
    retry_after_s: int
    reason: str
    snapshot: LimitSnapshot

    def headers(self, warning_fraction: float = 0.8) -> dict[str, str]:
        """Retry-After plus the X-RateLimit-* headers for the 429 response."""
        exceeded = {"X-Quota-Exceeded": self.limit} if self.limit in QUOTA_KINDS else {}
        return {
            "Retry-After": str(self.retry_after_s),
            **rate_limit_headers(self.snapshot, warning_fraction=warning_fraction),
            **exceeded,
        }


def clamp_priority(requested: int | None, tier: TierConfig) -> PriorityDecision:
    """The tier's default priority, or the requested one kept within [tier.max_priority, 5]."""
    if requested is None:
        return PriorityDecision(tier.default_priority, "tier default")
    if requested < tier.max_priority:
        return PriorityDecision(
            tier.max_priority, f"requested {requested} is above the tier's best priority {tier.max_priority}"
        )
    if requested > LOWEST_PRIORITY:
        return PriorityDecision(LOWEST_PRIORITY, f"requested {requested} is below the lowest priority")
    return PriorityDecision(requested, "requested")


def check_model_allowed(model: str, tier: TierConfig) -> bool:
    """Whether the tier may use `model` (entries are ids or shell-style patterns; "*" is every model)."""
    return any(fnmatchcase(model, pattern) for pattern in tier.allowed_models)


def cap_max_tokens(requested: int | None, tier: TierConfig, context_room: int | None) -> int:
    """The max_tokens to reserve: the request's, within the tier cap and the room left in the context."""
    cap = tier.max_tokens_cap if context_room is None else min(tier.max_tokens_cap, context_room)
    wanted = cap if requested is None else min(requested, cap)
    return max(0, wanted)


def shed_decision(
    priority: int, queue_depth: int, shed: ShedConfig, *, pool: str | None = None,
    capacity: PoolCapacity | None = None, slos: Mapping[int, float] | None = None,
) -> ShedDecision:  # fmt: skip
    """Admit priority p while the pool's queue depth < limit * admit_fraction[p]; the limit follows the pool's
    live capacity unless fixed, and shrinks while the predicted TTFT misses the SLO of a tier above p (`slos`
    by priority: AdmissionConfig.ttft_slos; the shed config's protected SLO when None)."""
    return ShedDecision(*capacity_shed_decision(priority, queue_depth, shed, capacity, pool, slos))


def window_start(now: float, window_s: int) -> int:
    """The start (epoch seconds) of the fixed window of length `window_s` that contains `now`."""
    return int(now // window_s) * window_s


def reset_seconds(now: float, window_s: int) -> int:
    """Whole seconds (at least 1) until the window containing `now` ends."""
    return max(1, math.ceil(window_start(now, window_s) + window_s - now))


def day_of(now: float) -> date:
    """The UTC calendar day that contains `now`; daily quotas reset at UTC midnight."""
    return datetime.fromtimestamp(window_start(now, DAY_S), UTC).date()


def rate_limit_decision(
    used: WindowUsage, *, now: float, requests: int, tokens: int, tier: TierConfig
) -> LimitDecision:
    """Whether charging `requests` and `tokens` keeps rpm, tpm and every day and month quota within the tier."""
    reset_min = reset_seconds(now, MINUTE_S)
    checks: list[tuple[LimitKind, str, int, int, int, int]] = [
        (q.kind, q.label, q.used, requests if q.unit == "requests" else tokens, q.limit, q.reset_s)
        for q in tier_quotas(tier, used.periods(), now)
    ]
    checks += [
        ("tokens", "tokens per minute", used.minute_tokens, tokens, tier.tpm, reset_min),
        ("requests", "requests per minute", used.minute_requests, requests, tier.rpm, reset_min),
    ]
    failures = [
        (reset_s, kind, _over(what, already, asked, limit))
        for kind, what, already, asked, limit, reset_s in checks
        if already + asked > limit
    ]
    if failures:
        # The limit that keeps the request out longest is the one worth reporting.
        retry_after_s, limit, reason = max(failures, key=lambda failure: failure[0])
        return LimitDecision(False, limit, retry_after_s, reason, _snapshot(used, tier, reset_min, now))
    charged = used.charged(requests, tokens)
    return LimitDecision(True, None, 0, "within limits", _snapshot(charged, tier, reset_min, now))


def _over(what: str, used: int, asked: int, limit: int) -> str:
    never = " (more than the limit itself)" if asked > limit else ""
    return f"{what} exceeded: {used} used + {asked} asked > {limit}{never}"


def _snapshot(used: WindowUsage, tier: TierConfig, reset_s: int, now: float) -> LimitSnapshot:
    return LimitSnapshot(
        limit_requests=tier.rpm,
        remaining_requests=max(0, tier.rpm - used.minute_requests),
        limit_tokens=tier.tpm,
        remaining_tokens=max(0, tier.tpm - used.minute_tokens),
        reset_s=reset_s,
        daily_token_quota=tier.daily_token_quota,
        daily_tokens_used=used.day_tokens,
        quotas=tuple(tier_quotas(tier, used.periods(), now)),
    )


def format_reset(seconds: float) -> str:
    """A duration in OpenAI's rate-limit header style: "850ms", "12s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def quota_warning(limits: LimitSnapshot, warning_fraction: float) -> str | None:
    """The X-Quota-Warning text once daily use reaches `warning_fraction` of the quota, else None."""
    if limits.daily_tokens_used < warning_fraction * limits.daily_token_quota:
        return None
    percent = math.floor(100 * limits.daily_tokens_used / limits.daily_token_quota)
    return (
        f"{percent}% of the daily token quota used "
        f"({limits.daily_tokens_used} of {limits.daily_token_quota} tokens; resets at 00:00 UTC)"
    )


def rate_limit_headers(limits: LimitSnapshot, *, warning_fraction: float = 0.8) -> dict[str, str]:
    """The X-RateLimit-* headers (OpenAI's names and style), plus X-Quota-Warning near the daily quota."""
    reset = format_reset(limits.reset_s)
    headers = {
        "X-RateLimit-Limit-Requests": str(limits.limit_requests),
        "X-RateLimit-Remaining-Requests": str(limits.remaining_requests),
        "X-RateLimit-Limit-Tokens": str(limits.limit_tokens),
        "X-RateLimit-Remaining-Tokens": str(limits.remaining_tokens),
        "X-RateLimit-Reset-Requests": reset,
        "X-RateLimit-Reset-Tokens": reset,
        **quota_headers(limits.quotas),
    }
    warning = quota_warning(limits, warning_fraction)
    if warning is not None:
        headers["X-Quota-Warning"] = warning
    return headers
