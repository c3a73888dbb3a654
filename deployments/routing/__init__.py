"""Pure decisions of the traffic router: canary split, circuit breaker, fallback pool, retry backoff.

No I/O and no clock: time and randomness are parameters, and each decision carries its reason.
"""

from deployments.routing.backoff import backoff_delay_s, may_retry
from deployments.routing.breaker import (
    BreakerDecision,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    allow_request,
    on_result,
)
from deployments.routing.canary import CanaryDecision, pick_version
from deployments.routing.fallback import PoolDecision, choose_pool
from deployments.routing.table import RoutingDecision, route_request

__all__ = [
    "BreakerDecision",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "CanaryDecision",
    "PoolDecision",
    "RoutingDecision",
    "allow_request",
    "backoff_delay_s",
    "choose_pool",
    "may_retry",
    "on_result",
    "pick_version",
    "route_request",
]
