"""One request's way through the ingress: admit, answer from cache, dispatch, shape, account.

Routes in ingress.py stay thin; the single and the batch endpoints share this pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi.responses import JSONResponse, StreamingResponse

from cluster.config import RouteConfig
from deployments import observability
from deployments.admission.decisions import Reservation
from deployments.admission.gate import AdmissionGate, Tenant, prompt_token_bound
from deployments.dispatch import Dispatched, Dispatcher
from deployments.engines.base import GenerationChunk, GenerationRequest, Prompt
from deployments.errors import ModelNotFound, ServiceUnavailable, SurgeError
from deployments.failures import as_surge_error, pool_health
from deployments.protocol import ResponseShape, sse
from deployments.protocol.common import SamplingFields
from deployments.routing.prefix import prefix_key
from deployments.traffic_router import RouteClient

__all__ = ["RequestPipeline", "Work"]

logger = logging.getLogger("surge.pipeline")
Kind = Literal["chat", "completion"]


@dataclass(frozen=True)
class Work:
    """A validated request: its body, the engine prompt and the API it came through."""

    body: SamplingFields
    prompt: Prompt
    kind: Kind

    @property
    def id_prefix(self) -> str:
        return "chatcmpl" if self.kind == "chat" else "cmpl"


@dataclass(frozen=True)
class _Admitted:
    route: RouteConfig
    primary: str  # the pool whose admitted-request count this request holds until it ends
    request: GenerationRequest
    shape: ResponseShape
    reservation: Reservation | None
    cache_key: str | None


class RequestPipeline:
    """Runs admitted work through the router-chosen pool and shapes OpenAI responses."""

    def __init__(self, gate: AdmissionGate, routes: RouteClient, dispatcher: Dispatcher) -> None:
        self._gate = gate
        self._routes = routes
        self._dispatcher = dispatcher
        self._background: set[asyncio.Task[None]] = set()

    async def respond(self, tenant: Tenant, work: Work) -> JSONResponse | StreamingResponse:
        """The HTTP response for one request (streamed or not)."""
        if not work.body.stream:
            body, headers = await self.complete_json(tenant, work)
            return JSONResponse(body, headers=headers)
        admitted = await self._admit(tenant, work)
        try:
            # A stream releases its admission count when it ends (see _stream).
            return await self._stream(admitted, work.body.include_usage)
        except BaseException as exc:
            self._routes.release(admitted.primary)
            self._failed(admitted, exc)
            raise

    async def complete_json(self, tenant: Tenant, work: Work) -> tuple[dict[str, Any], dict[str, str]]:
        """A non-streamed result as (body, headers); the batch endpoint uses it directly."""
        admitted = await self._admit(tenant, work)
        try:
            return await self._complete(admitted)
        except BaseException as exc:
            self._failed(admitted, exc)
            raise
        finally:
            self._routes.release(admitted.primary)

    def _failed(self, admitted: _Admitted, exc: BaseException) -> None:
        """A request that failed after admission: refund its reservation, show the limits on the error."""
        if isinstance(exc, SurgeError):
            self._settle_later(admitted.reservation, 0)
            exc.headers = {**self._gate.headers(admitted.reservation), **exc.headers}

    async def _admit(self, tenant: Tenant, work: Work) -> _Admitted:
        body, gate = work.body, self._gate
        route = self._routes.route(body.model)
        if route is None:
            raise ModelNotFound(f"The model '{body.model}' does not exist", param="model")
        gate.check_model(tenant, body.model)
        priority = gate.priority(tenant, body.priority)
        observability.classified(tenant, route.model, route.primary, priority)
        sampling = body.sampling()
        cap = gate.max_tokens(tenant, sampling.max_tokens)
        if tenant.tier is not None:
            sampling = replace(sampling, max_tokens=sampling.max_tokens and cap, max_tokens_cap=cap)
        primary = route.primary
        try:
            gate.shed(priority, primary, self._routes.queue_depth(primary), self._routes.capacity(primary))
        except ServiceUnavailable:
            self._routes.note_shed(primary)  # the autoscaler does not scale in a pool that sheds
            raise
        # Counted from here, not from dispatch: a burst must see itself while it awaits the quota store.
        self._routes.hold(primary)
        try:
            reservation = await gate.reserve(tenant, prompt_token_bound(work.prompt) + (cap or 0))
        except BaseException:
            self._routes.release(primary)
            raise
        request_id = f"{work.id_prefix}-{uuid.uuid4().hex}"
        request = GenerationRequest(request_id, work.prompt, sampling, priority, prefix_key(work.prompt))
        version = f"{route.model}:{sorted(route.pools.items())}:{work.kind}"
        key = gate.cache_key(tenant, version, work.prompt, sampling)
        shape = ResponseShape(work.kind, request_id, body.model, int(time.time()), body.continuous_usage)
        return _Admitted(route, primary, request, shape, reservation, key)

    async def _complete(self, admitted: _Admitted) -> tuple[dict[str, Any], dict[str, str]]:
        chunk, headers = await self._cached(admitted)
        if chunk is None:
            dispatched = await self._dispatcher.complete(admitted.route, admitted.request)
            chunk, headers = dispatched.chunk, {**headers, **dispatched.headers()}
            self._remember(admitted, chunk, headers)
        observability.finished(chunk)
        self._settle_later(admitted.reservation, 0 if headers.get("X-Cache") == "hit" else _used(chunk))
        return admitted.shape.full(chunk, chunk.text), {**headers, **self._gate.headers(admitted.reservation)}

    async def _stream(self, admitted: _Admitted, include_usage: bool) -> StreamingResponse:
        chunk, headers = await self._cached(admitted)
        if chunk is not None:
            self._settle_later(admitted.reservation, 0)
            self._routes.release(admitted.primary)
            events = _replay(chunk, admitted.shape, include_usage)
        else:
            dispatched = await self._dispatcher.open_stream(admitted.route, admitted.request)
            headers = {**headers, **dispatched.headers()}

            def ended(ok: bool | None, last: GenerationChunk, text: str) -> None:
                self._dispatcher.stream_ended(dispatched, ok)
                self._routes.release(admitted.primary)
                self._settle_later(admitted.reservation, _used(last))
                observability.finished(last)
                if ok:
                    self._remember(admitted, replace(last, text=text), headers)

            events = await _started(_sse_events(dispatched, admitted.shape, include_usage, ended))
        all_headers = {"Cache-Control": "no-cache", **headers, **self._gate.headers(admitted.reservation)}
        return StreamingResponse(events, media_type="text/event-stream", headers=all_headers)

    async def _cached(self, admitted: _Admitted) -> tuple[GenerationChunk | None, dict[str, str]]:
        if admitted.cache_key is None:
            return None, {}
        hit = await self._gate.responses.get(admitted.cache_key)
        observability.cache_lookup(hit is not None)
        if hit is None:
            return None, {"X-Cache": "miss"}
        chunk, headers = hit
        return chunk, {**headers, "X-Cache": "hit"}

    def _remember(self, admitted: _Admitted, chunk: GenerationChunk, headers: dict[str, str]) -> None:
        if admitted.cache_key is not None and chunk.finish_reason in {"stop", "length"}:
            self._gate.responses.put(admitted.cache_key, (chunk, {k: v for k, v in headers.items() if k != "X-Cache"}))

    def _settle_later(self, reservation: Reservation | None, actual_tokens: int) -> None:
        """Accounting must survive a client that leaves, so it runs as its own task."""
        if reservation is None:
            return
        task = asyncio.get_running_loop().create_task(self._gate.settle(reservation, actual_tokens))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _used(chunk: GenerationChunk) -> int:
    return chunk.prompt_tokens + chunk.completion_tokens


async def _started(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Run the body to its first event now: a started generator is always finalized (asyncio closes it when
    it is dropped), so a client gone before the body starts still aborts the engine and releases its counts."""
    first = await anext(events)

    async def body() -> AsyncIterator[str]:
        yield first
        async for event in events:
            yield event

    return body()


async def _replay(chunk: GenerationChunk, shape: ResponseShape, include_usage: bool) -> AsyncIterator[str]:
    """A cached completion as a stream: one delta, the finish, usage if asked, [DONE]."""
    yield sse(shape.delta(chunk.text, None, first=True, usage=chunk))
    yield sse(shape.delta("", chunk.finish_reason, usage=chunk))
    if include_usage:
        yield sse(shape.usage_chunk(chunk))
    yield sse("[DONE]")


async def _sse_events(
    dispatched: Dispatched,
    shape: ResponseShape,
    include_usage: bool,
    ended: Callable[[bool | None, GenerationChunk, str], None],
) -> AsyncIterator[str]:
    """The SSE body; a failure after the first token ends the stream with an error event."""
    stream, chunk = dispatched.stream, dispatched.chunk
    assert stream is not None
    pieces = [chunk.text]
    ok: bool | None = None  # a client that leaves says nothing about the pool's health
    try:
        yield sse(shape.delta(chunk.text, chunk.finish_reason, first=True, usage=chunk))
        while chunk.finish_reason is None:
            chunk = await stream.__anext__()
            pieces.append(chunk.text)
            yield sse(shape.delta(chunk.text, chunk.finish_reason, usage=chunk))
        if include_usage:
            yield sse(shape.usage_chunk(chunk))
        ok = True
    except (asyncio.CancelledError, GeneratorExit):
        stream.cancel()  # the client went away: abort the engine request
        raise
    except Exception as exc:
        err = as_surge_error(exc)
        ok = pool_health(err)  # a stream cut by its lost replica is not held against the pool either
        observability.stream_failed(err.status, err.code)
        logger.warning("stream %s failed after its first token: %s", shape.response_id, err.message)
        yield sse(err.body())
    finally:
        ended(ok, chunk, "".join(pieces))
    yield sse("[DONE]")
