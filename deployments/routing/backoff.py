"""Retry timing and the rule that a stream is never retried once the client has seen a token."""

from __future__ import annotations

__all__ = ["backoff_delay_s", "may_retry"]

# 2**62 is far past any cap; bounding the exponent keeps the float finite for huge attempt numbers.
_MAX_EXPONENT = 62


def backoff_delay_s(attempt: int, base_s: float = 0.05, cap_s: float = 2.0, *, rng_value: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap_s, base_s * 2**attempt)).

    `attempt` counts retries already made (0 before the first retry); `rng_value` is uniform in [0, 1).
    Full jitter de-synchronises the retries of many clients hit by the same failure.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0.0 <= rng_value < 1.0:
        raise ValueError(f"rng_value must be in [0, 1), got {rng_value}")
    if base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must be >= 0")
    ceiling_s = min(cap_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
    return rng_value * ceiling_s


def may_retry(attempt: int, max_attempts: int, first_token_sent: bool) -> bool:
    """Whether another attempt may start; `attempt` counts attempts made so far (1 after the first)."""
    # Once a token reached the client a retry would replay or fork the output it already holds.
    if first_token_sent:
        return False
    return attempt < max_attempts
