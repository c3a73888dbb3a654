"""The store's SQL for day and month quotas and for claiming quota warnings, inside a reservation's transaction.

Monthly use is the sum of the month's daily rows, so settling a reservation (which corrects its day's row)
corrects the month too, and no second counter can drift from the first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from cluster.config import TierConfig
from deployments.admission.decisions import WindowUsage
from deployments.admission.quotas import QuotaState, warnings_due

__all__ = ["Sql", "claim_warnings", "read_usage"]

# Runs one statement (`?` placeholders) inside the open transaction and returns its rows.
Sql = Callable[..., Awaitable[list[tuple[Any, ...]]]]


async def read_usage(tx: Sql, key_id: str, minute: int, day: date, tier: TierConfig) -> WindowUsage:
    """The key's use in the minute window `minute`, on `day` and (when the tier has monthly quotas) its month."""
    sql = "SELECT requests, tokens FROM surge_rate_windows WHERE key_id = ? AND window_start = ?"
    window = await tx(sql, key_id, minute)
    sql = "SELECT requests, tokens FROM surge_daily_usage WHERE key_id = ? AND day = ?"
    daily = await tx(sql, key_id, day.isoformat())
    minute_requests, minute_tokens = (int(window[0][0]), int(window[0][1])) if window else (0, 0)
    day_requests, day_tokens = (int(daily[0][0]), int(daily[0][1])) if daily else (0, 0)
    month_requests = month_tokens = 0
    if tier.monthly_call_quota is not None or tier.monthly_token_quota is not None:
        sql = (
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0) FROM surge_daily_usage"
            " WHERE key_id = ? AND day >= ? AND day <= ?"
        )
        month = await tx(sql, key_id, day.replace(day=1).isoformat(), day.isoformat())
        month_requests, month_tokens = int(month[0][0]), int(month[0][1])
    return WindowUsage(minute_requests, minute_tokens, day_tokens, day_requests, month_requests, month_tokens)


async def claim_warnings(
    tx: Sql, key_id: str, quotas: tuple[QuotaState, ...], fraction: float | None, now: float
) -> tuple[QuotaState, ...]:
    """The quotas at or past `fraction` whose warning this transaction is the first to claim this period.

    The claim is a row insert under the key's lock: across every replica exactly one request wins it.
    """
    if fraction is None:
        return ()
    claimed: list[QuotaState] = []
    for quota in warnings_due(list(quotas), fraction):
        rows = await tx(
            "INSERT INTO surge_quota_warnings (key_id, quota, period, sent_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING key_id",
            key_id, quota.kind, quota.period, now,
        )  # fmt: skip
        if rows:
            claimed.append(quota)
    return tuple(claimed)
