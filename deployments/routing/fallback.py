"""Choice between a model's primary pool and its fallback pool."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolDecision", "choose_pool"]


@dataclass(frozen=True)
class PoolDecision:
    """The pool a request goes to, whether that is the fallback, and why."""

    pool: str
    is_fallback: bool
    reason: str


def choose_pool(
    primary: str,
    fallback: str | None,
    primary_breaker_open: bool,
    primary_queue_depth: int,
    queue_threshold: int,
) -> PoolDecision:
    """Send to the fallback pool when the primary's breaker is open or its queue is too deep."""
    if primary_breaker_open:
        if fallback is None:
            # Nowhere else to go: the primary's breaker then rejects and the caller answers 503.
            return PoolDecision(primary, False, "primary breaker open and no fallback pool")
        return PoolDecision(fallback, True, f"primary {primary!r} breaker open")
    # A threshold <= 0 switches queue spill-over off.
    if queue_threshold > 0 and primary_queue_depth >= queue_threshold:
        if fallback is None:
            return PoolDecision(primary, False, "primary queue deep but no fallback pool")
        return PoolDecision(
            fallback,
            True,
            f"primary {primary!r} queue depth {primary_queue_depth} >= {queue_threshold}",
        )
    return PoolDecision(primary, False, "primary healthy")
