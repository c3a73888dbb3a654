"""Turning whatever a request path raised into the one error contract (deployments/errors.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from deployments.errors import BadRequest, ServiceUnavailable, SurgeError

__all__ = ["REPLICA_LOST", "as_surge_error", "pool_health", "validation_error"]

logger = logging.getLogger("surge.errors")
_RETRY_AFTER = {"Retry-After": "1"}
# The error code of a call whose replica went away under it (killed, its node lost): that one replica's failure.
REPLICA_LOST = "replica_lost"


def as_surge_error(exc: BaseException) -> SurgeError:
    """Unwrap Ray's exception wrappers; map Serve's overload and availability errors to 503."""
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    cause = getattr(exc, "cause", None)
    if isinstance(cause, SurgeError):
        return cause
    if isinstance(exc, SurgeError):
        return exc
    if isinstance(exc, serve_exc.BackPressureError):
        return ServiceUnavailable("the model pool is at capacity; retry shortly", headers=_RETRY_AFTER)
    if isinstance(exc, ray_exc.RayActorError | serve_exc.ReplicaUnavailableError):  # ActorDiedError included
        return ServiceUnavailable(
            "the model replica serving this request was lost; retry shortly", code=REPLICA_LOST, headers=_RETRY_AFTER
        )
    if isinstance(exc, serve_exc.DeploymentUnavailableError):
        return ServiceUnavailable(
            "the model pool is unavailable; retry shortly", code="model_unavailable", headers=_RETRY_AFTER
        )
    logger.error("unexpected error on a request path", exc_info=exc)
    return SurgeError("internal server error")


def pool_health(err: SurgeError) -> bool | None:
    """What a failed call says about its pool, for the pool's circuit breaker: `False` a pool failure, `None`
    nothing. A client error says nothing; overload is handled by fallback and shedding; a lost replica is one
    replica's failure, which Serve's request router drops and its controller replaces while the retry goes to a
    live replica. A pool with no replica left still opens its breaker: its calls time out, or Serve answers
    DeploymentUnavailableError."""
    if err.status < 500 or err.code in ("overloaded", REPLICA_LOST):
        return None
    return False


def validation_error(errors: Sequence[Any]) -> BadRequest:
    """The first request-validation error as a 400 naming the offending parameter."""
    first = dict(errors[0]) if errors else {}
    if first.get("type") == "json_invalid":
        return BadRequest("We could not parse the JSON body of your request.", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return BadRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    return BadRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")
