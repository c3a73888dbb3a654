"""One routing decision: canary version, then primary or fallback pool, given which breakers are open."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cluster.config import RouteConfig
from deployments.routing.canary import pick_version
from deployments.routing.fallback import choose_pool

__all__ = ["RoutingDecision", "route_request"]


@dataclass(frozen=True)
class RoutingDecision:
    """The pool to call (None: every candidate is unavailable), whether it is the fallback, and why."""

    pool: str | None
    is_fallback: bool
    reason: str
    retry_after_s: float | None = None


def route_request(
    route: RouteConfig,
    rng_value: float,
    queue_depths: Mapping[str, int],
    admits: Callable[[str], bool],
) -> RoutingDecision:
    """Pick a version by weight; go to the fallback when the primary's breaker refuses or its queue is deep.

    `admits(pool)` asks the pool's breaker (it may start a half-open probe), so it is called at most once
    per pool and only for pools the request would actually go to.
    """
    primary = pick_version(route.pools, rng_value).version
    primary_ok = admits(primary)
    choice = choose_pool(
        primary, route.fallback, not primary_ok, queue_depths.get(primary, 0), route.queue_threshold
    )
    if not choice.is_fallback:
        if primary_ok:
            return RoutingDecision(primary, False, choice.reason)
        return RoutingDecision(None, False, f"pool {primary!r} unavailable (breaker open), no fallback", 1.0)
    if admits(choice.pool):
        return RoutingDecision(choice.pool, True, choice.reason)
    if primary_ok:
        # The fallback is down too; a deep primary queue beats no answer.
        return RoutingDecision(primary, False, f"fallback {choice.pool!r} unavailable; staying on primary")
    return RoutingDecision(None, False, f"pools {primary!r} and {choice.pool!r} both unavailable", 1.0)
