"""Weighted canary split between versions of one model."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CanaryDecision", "pick_version"]


@dataclass(frozen=True)
class CanaryDecision:
    """The version a request goes to, and why."""

    version: str
    reason: str


def pick_version(weights: dict[str, float], rng_value: float) -> CanaryDecision:
    """Pick a version with probability proportional to its weight; `rng_value` is uniform in [0, 1)."""
    if not 0.0 <= rng_value < 1.0:
        raise ValueError(f"rng_value must be in [0, 1), got {rng_value}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"canary weights must be >= 0, got {weights}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"canary weights must sum to > 0, got {weights}")
    # Sorted so every ingress replica maps the same rng_value to the same version,
    # whatever order its configuration listed them in.
    versions = sorted(weights)
    point = rng_value * total
    cumulative = 0.0
    for version in versions:
        cumulative += weights[version]
        # Strict `<`: a zero-weight version owns an empty interval and is never picked.
        if point < cumulative:
            return CanaryDecision(version, _reason(version, weights[version], total))
    # Floating-point rounding can leave `point` a hair above the final sum.
    last = next(v for v in reversed(versions) if weights[v] > 0)
    return CanaryDecision(last, _reason(last, weights[last], total))


def _reason(version: str, weight: float, total: float) -> str:
    return f"canary: {version} holds {weight / total:.1%} of traffic"
