"""The dispatcher's retries and what it tells a pool's circuit breaker: a lost replica is retried on the pool
and is not held against it; a pool that keeps failing or timing out opens its breaker."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from ray import exceptions as ray_exc
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from cluster.config import BatchConfig, RouteConfig, RoutingConfig
from deployments.dispatch import Dispatcher
from deployments.engines.base import GenerationChunk, GenerationRequest, TextPrompt
from deployments.errors import ContextLengthExceeded, ServiceUnavailable, SurgeError
from deployments.failures import REPLICA_LOST, as_surge_error, pool_health
from deployments.routing import RoutingDecision
from deployments.routing.breaker import BreakerPolicy, BreakerState, BreakerStatus, allow_request, on_result

ROUTE = RouteConfig(model="m", pools={"main": 1.0})
ROUTING = RoutingConfig(breaker_failures=3, max_attempts=3, backoff_base_s=0, backoff_cap_s=0)
IN_FLIGHT = 8  # requests on the replica when it goes, as in the chaos tests


class Routes:
    """Stands in for the RouteClient: one pool, its breaker the real pure state machine, decided per request."""

    def __init__(self) -> None:
        self.policy = BreakerPolicy(ROUTING.breaker_failures, open_s=60)
        self.breaker = BreakerState()
        self.reports: Counter[bool | None] = Counter()
        self.in_flight = 0

    async def decide(self, route: RouteConfig) -> RoutingDecision:
        decision, self.breaker = allow_request(self.breaker, 0.0, self.policy)
        if not decision.allowed:
            return RoutingDecision(None, False, decision.reason, decision.retry_after_s)
        return RoutingDecision("main", False, decision.reason)

    def started(self, pool: str) -> None:
        self.in_flight += 1

    def finished(self, pool: str, ok: bool | None) -> None:
        self.in_flight -= 1
        self.reports[ok] += 1
        if ok is not None:
            self.breaker = on_result(self.breaker, ok, 0.0, self.policy)

    def observe_ttft(self, pool: str, ttft_s: float) -> None:
        pass


class Method:
    def __init__(self, call: Callable[..., Any]) -> None:
        self.remote = call


class Stream:
    """A DeploymentResponseGenerator's face: `__anext__` and `cancel`."""

    def __init__(self, chunks: AsyncIterator[GenerationChunk]) -> None:
        self._chunks = chunks

    def __anext__(self) -> Any:
        return self._chunks.__anext__()

    def cancel(self) -> None:
        pass


class Pool:
    """Stands in for a pool's handle: the first `failing` calls raise `error()`, the first `together` of them
    at once (like the requests in flight on a replica that dies), and the rest answer."""

    def __init__(self, error: Callable[[], BaseException], failing: int, together: int | None = None) -> None:
        self.calls = 0
        self._error, self._failing, self._together = error, failing, failing if together is None else together
        self._lost = asyncio.Event()
        self.complete = Method(self._complete)
        self.generate = Method(lambda request: Stream(self._generate(request)))

    def options(self, **_: Any) -> Pool:
        return self

    async def _answer(self) -> GenerationChunk:
        self.calls += 1
        if self.calls > self._failing:
            return GenerationChunk("ok", 1, 1, "stop", replica_id="survivor")
        if self.calls >= self._together:
            self._lost.set()
        await self._lost.wait()
        raise self._error()

    async def _complete(self, request: GenerationRequest) -> GenerationChunk:
        return await self._answer()

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        yield await self._answer()


def _dispatcher(pool: Pool, routes: Routes) -> Dispatcher:
    handles: Any = {"main": pool}
    return Dispatcher(handles, routes, ROUTING, 30.0, BatchConfig(enabled=False))  # type: ignore[arg-type]


def _request(i: int) -> GenerationRequest:
    return GenerationRequest(f"req-{i}", TextPrompt(f"hello {i}"), routing_key="prefix")


def _lost_actor() -> BaseException:
    return ray_exc.ActorDiedError()


async def test_requests_on_a_lost_replica_are_retried_and_leave_the_breaker_closed() -> None:
    routes, pool = Routes(), Pool(_lost_actor, failing=IN_FLIGHT)
    dispatcher = _dispatcher(pool, routes)
    done = await asyncio.gather(*(dispatcher.complete(ROUTE, _request(i)) for i in range(IN_FLIGHT)))
    assert [d.chunk.replica_id for d in done] == ["survivor"] * IN_FLIGHT
    assert routes.breaker.status is BreakerStatus.CLOSED
    assert routes.reports == {None: IN_FLIGHT, True: IN_FLIGHT} and routes.in_flight == 0


async def test_streams_on_a_lost_replica_are_retried_before_their_first_token() -> None:
    routes, pool = Routes(), Pool(lambda: ray_exc.ActorUnavailableError("node gone", None), failing=IN_FLIGHT)
    dispatcher = _dispatcher(pool, routes)
    opened = await asyncio.gather(*(dispatcher.open_stream(ROUTE, _request(i)) for i in range(IN_FLIGHT)))
    assert {d.chunk.replica_id for d in opened} == {"survivor"}
    assert routes.breaker.status is BreakerStatus.CLOSED


async def test_a_pool_that_keeps_failing_opens_its_breaker_and_is_refused() -> None:
    routes, pool = Routes(), Pool(lambda: RuntimeError("engine crashed"), failing=10**6, together=IN_FLIGHT)
    dispatcher = _dispatcher(pool, routes)
    results = await asyncio.gather(*(dispatcher.complete(ROUTE, _request(i)) for i in range(IN_FLIGHT)),
                                   return_exceptions=True)  # fmt: skip
    assert routes.breaker.status is BreakerStatus.OPEN
    assert all(isinstance(r, SurgeError) and r.status >= 500 for r in results)
    with pytest.raises(ServiceUnavailable) as refused:
        await dispatcher.complete(ROUTE, _request(99))
    assert refused.value.code == "model_unavailable" and refused.value.headers["Retry-After"]


async def test_a_replica_lost_on_every_attempt_answers_503_replica_lost() -> None:
    routes, pool = Routes(), Pool(_lost_actor, failing=ROUTING.max_attempts, together=1)
    dispatcher = _dispatcher(pool, routes)
    with pytest.raises(ServiceUnavailable) as lost:
        await dispatcher.complete(ROUTE, _request(0))
    assert lost.value.code == REPLICA_LOST and lost.value.headers["Retry-After"]
    assert lost.value.body()["error"]["type"] == "service_unavailable_error"
    assert pool.calls == ROUTING.max_attempts and routes.breaker.status is BreakerStatus.CLOSED


@pytest.mark.parametrize(
    "exc",
    [ray_exc.ActorDiedError(), ray_exc.ActorUnavailableError("gone", None), ReplicaUnavailableError("r-1")],
    ids=["actor-died", "actor-unavailable", "replica-unavailable"],
)
def test_a_lost_replica_is_a_retryable_503_that_says_nothing_about_its_pool(exc: BaseException) -> None:
    err = as_surge_error(exc)
    assert (err.status, err.code, err.headers) == (503, REPLICA_LOST, {"Retry-After": "1"})
    assert pool_health(err) is None


def test_an_unavailable_deployment_counts_against_its_pool() -> None:
    err = as_surge_error(DeploymentUnavailableError(DeploymentID(name="main", app_name="surge")))
    assert (err.status, err.code) == (503, "model_unavailable")
    assert pool_health(err) is False


def test_overload_and_client_errors_say_nothing_about_the_pool_and_an_internal_error_counts() -> None:
    assert pool_health(ServiceUnavailable("full")) is None  # code "overloaded": fallback and shedding handle it
    assert pool_health(ContextLengthExceeded("too long")) is None
    assert pool_health(SurgeError("boom")) is False
