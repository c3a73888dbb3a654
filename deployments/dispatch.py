"""Calling a model pool for one request: routing decision, retries with backoff before the first token,
deadline, and the outcome reports that drive the traffic router's circuit breakers."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, cast

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from cluster.config import BatchConfig, RouteConfig, RoutingConfig
from deployments import observability
from deployments.engines.base import GenerationBatch, GenerationChunk, GenerationRequest
from deployments.errors import DeadlineExceeded, ServiceUnavailable, SurgeError
from deployments.failures import as_surge_error, pool_health
from deployments.routing import RoutingDecision, backoff_delay_s, may_retry
from deployments.traffic_router import RouteClient

__all__ = ["Dispatched", "Dispatcher"]


@dataclass
class Dispatched:
    """Where a request went, and its first chunk (streams) or whole result (non-streamed)."""

    decision: RoutingDecision
    chunk: GenerationChunk
    stream: DeploymentResponseGenerator | None = None

    @property
    def pool(self) -> str:
        assert self.decision.pool is not None
        return self.decision.pool

    def headers(self) -> dict[str, str]:
        headers = {"X-Surge-Pool": self.pool}
        if self.decision.is_fallback:
            headers["X-Surge-Fallback"] = self.pool
        if self.chunk.replica_id:
            headers["X-Surge-Replica"] = self.chunk.replica_id
        return headers


class Dispatcher:
    """Sends requests to pools chosen by the route client; only pool failures count against a pool."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        routes: RouteClient,
        routing: RoutingConfig,
        timeout_s: float,
        batching: BatchConfig,
    ) -> None:
        self._handles = handles
        self._routes = routes
        self._routing = routing
        self._timeout_s = timeout_s
        self._rng = random.Random()
        self._batchers = {pool: _batcher(handle, batching) for pool, handle in handles.items()}
        self._stream_handles = {pool: handle.options(stream=True) for pool, handle in handles.items()}
        self._batching = batching.enabled
        self._completing: Counter[str] = Counter()  # non-streamed requests on their way to each pool

    async def complete(self, route: RouteConfig, request: GenerationRequest) -> Dispatched:
        """The whole completion; the pool's in-flight slot is released when it returns."""

        async def call(pool: str, attempt: GenerationRequest) -> Any:
            self._completing[pool] += 1
            try:
                # A lone request goes at once: a batch only pays off for requests that would otherwise queue.
                if self._batching and self._completing[pool] > 1:
                    return await self._batchers[pool](attempt)
                return await self._handles[pool].complete.remote(attempt)
            finally:
                self._completing[pool] -= 1

        dispatched = await self._attempts(route, request, call)
        self._routes.finished(dispatched.pool, ok=True)
        return dispatched

    async def open_stream(self, route: RouteConfig, request: GenerationRequest) -> Dispatched:
        """The stream and its first chunk; the caller must call `stream_ended` when it is done."""
        streams: dict[str, DeploymentResponseGenerator] = {}

        def first_chunk(pool: str, attempt: GenerationRequest) -> Awaitable[Any]:
            streams[pool] = cast(DeploymentResponseGenerator, self._stream_handles[pool].generate.remote(attempt))
            return streams[pool].__anext__()

        started = time.monotonic()
        dispatched = await self._attempts(route, request, first_chunk, cancel=lambda pool: streams[pool].cancel())
        self._routes.observe_ttft(dispatched.pool, time.monotonic() - started)  # admission's measured TTFT
        dispatched.stream = streams[dispatched.pool]
        return dispatched

    def stream_ended(self, dispatched: Dispatched, ok: bool | None) -> None:
        self._routes.finished(dispatched.pool, ok)

    async def _attempts(
        self,
        route: RouteConfig,
        request: GenerationRequest,
        call: Callable[[str, GenerationRequest], Awaitable[Any]],
        cancel: Callable[[str], None] | None = None,
    ) -> Dispatched:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        attempt = 0
        while True:
            attempt += 1
            decision = await self._routes.decide(route)
            if decision.pool is None:
                retry_after = {"Retry-After": str(max(1, round(decision.retry_after_s or 1)))}
                raise ServiceUnavailable(decision.reason, code="model_unavailable", headers=retry_after)
            # A retry forgets prefix affinity: the preferred replica may be the one that just failed (a lost node
            # is declared dead seconds after its calls stop answering).
            this_try = request if attempt == 1 else replace(request, routing_key=None)
            this_try = observability.dispatching(this_try, decision, attempt)
            try:
                chunk = await self._one_attempt(decision.pool, call, this_try, cancel, deadline)
                return Dispatched(decision, chunk)
            except SurgeError as err:
                if err.status < 500 or isinstance(err, DeadlineExceeded):
                    raise
                if not may_retry(attempt, self._routing.max_attempts, first_token_sent=False):
                    raise
            delay_s = backoff_delay_s(
                attempt - 1, self._routing.backoff_base_s, self._routing.backoff_cap_s, rng_value=self._rng.random()
            )
            await asyncio.sleep(delay_s)

    async def _one_attempt(
        self,
        pool: str,
        call: Callable[[str, GenerationRequest], Awaitable[Any]],
        request: GenerationRequest,
        cancel: Callable[[str], None] | None,
        deadline: float,
    ) -> GenerationChunk:
        self._routes.started(pool)
        remaining_s = deadline - asyncio.get_running_loop().time()
        timeout_s = min(remaining_s, self._routing.attempt_timeout_s)
        awaitable = call(pool, request)
        try:
            return cast(GenerationChunk, await asyncio.wait_for(awaitable, timeout=max(timeout_s, 0.001)))
        except TimeoutError:
            self._routes.finished(pool, ok=False)
            _cancel(awaitable, cancel, pool)
            if timeout_s < remaining_s:
                message = f"pool {pool!r} did not answer within {timeout_s:g} s"
                raise ServiceUnavailable(message, code="pool_timeout") from None
            raise DeadlineExceeded(f"no response within {self._timeout_s:g} s") from None
        except Exception as exc:
            err = as_surge_error(exc)
            self._routes.finished(pool, pool_health(err))  # a lost replica is retried, not held against its pool
            _cancel(awaitable, cancel, pool)
            raise err from None


def _batcher(handle: DeploymentHandle, config: BatchConfig) -> Callable[[GenerationRequest], Awaitable[Any]]:
    """Groups concurrent non-streamed requests to one pool into a single `complete_batch` call."""

    @serve.batch(
        max_batch_size=config.max_batch_size,
        batch_wait_timeout_s=config.batch_wait_timeout_s,
        max_concurrent_batches=config.max_concurrent_batches,
    )
    async def send(requests: list[GenerationRequest]) -> list[GenerationChunk | SurgeError]:
        results: list[GenerationChunk | SurgeError] = await handle.complete_batch.remote(GenerationBatch(requests))
        return results

    async def one(request: GenerationRequest) -> GenerationChunk:
        result = await send(request)
        if isinstance(result, SurgeError):
            raise result
        return cast(GenerationChunk, result)

    return one


def _cancel(awaitable: Any, cancel: Callable[[str], None] | None, pool: str) -> None:
    if cancel is not None:
        cancel(pool)
    elif hasattr(awaitable, "cancel"):
        awaitable.cancel()
