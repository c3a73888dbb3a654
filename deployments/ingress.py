"""The HTTP ingress: OpenAI routes, thin; validation in protocol/, errors in errors.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.config import SurgeConfig
from deployments.dispatch import Dispatched, Dispatcher
from deployments.engines.base import GenerationRequest, Prompt
from deployments.errors import ModelNotFound, SurgeError, error_body
from deployments.failures import as_surge_error, validation_error
from deployments.protocol import ChatCompletionRequest, CompletionRequest, ResponseShape, models_list, sse
from deployments.protocol.common import SamplingFields
from deployments.routing.prefix import prefix_key
from deployments.traffic_router import RouteClient

__all__ = ["Ingress", "app"]

logger = logging.getLogger("surge.ingress")
app = FastAPI(title="surge", description="OpenAI-compatible LLM serving on Ray Serve + vLLM")


@app.exception_handler(SurgeError)
async def _surge_error(_: Request, exc: SurgeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = validation_error(exc.errors())
    return JSONResponse(err.body(), status_code=err.status)


async def _sse_events(
    dispatched: Dispatched, shape: ResponseShape, include_usage: bool, ended: Callable[[bool | None], None]
) -> AsyncIterator[str]:
    """The SSE body; a failure after the first token ends the stream with an error event."""
    stream, chunk = dispatched.stream, dispatched.chunk
    assert stream is not None
    ok: bool | None = None  # a client that leaves says nothing about the pool's health
    try:
        yield sse(shape.delta(chunk.text, chunk.finish_reason, first=True))
        while chunk.finish_reason is None:
            chunk = await stream.__anext__()
            yield sse(shape.delta(chunk.text, chunk.finish_reason))
        if include_usage:
            yield sse(shape.usage_chunk(chunk))
        ok = True
    except (asyncio.CancelledError, GeneratorExit):
        stream.cancel()  # the client went away: abort the engine request
        raise
    except Exception as exc:
        err = as_surge_error(exc)
        ok = False
        logger.warning("stream %s failed after its first token: %s", shape.response_id, err.message)
        yield sse(err.body())
    finally:
        ended(ok)
    yield sse("[DONE]")


# Defined above the class: @serve.ingress serializes the class when applied.

@serve.ingress(app)
class Ingress:
    """Parses and validates OpenAI requests, routes them to a pool and relays the engine's output."""

    def __init__(
        self,
        config: SurgeConfig,
        handles: dict[str, DeploymentHandle],
        router: DeploymentHandle,
    ) -> None:
        self._handles = handles
        self._routes = RouteClient(router, config.route_table(), config.routing)
        self._dispatcher = Dispatcher(handles, self._routes, config.routing, config.server.request_timeout_s)
        self._model_roots = {
            model: config.pool(next(iter(route.pools))).model_id for model, route in config.route_table().items()
        }
        self._created = int(time.time())

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        try:
            stats = await asyncio.wait_for(
                asyncio.gather(*(h.stats.remote() for h in self._handles.values())), timeout=5
            )
        except Exception as exc:
            logger.warning("readiness check failed: %r", exc)
            body = error_body("a model pool is not answering", "service_unavailable_error", None, "not_ready")
            return JSONResponse(body, status_code=503)
        pools = {s["pool"]: s for s in stats}
        return JSONResponse({"status": "ready", "pools": pools, "routing": self._routes.debug_state()})

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return models_list(list(self._model_roots.items()), self._created)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        return await self._serve(body, body.prompt(), "chat", "chatcmpl")

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        return await self._serve(body, body.engine_prompt(), "completion", "cmpl")

    async def _serve(self, body: SamplingFields, prompt: Prompt, kind: Any, id_prefix: str) -> Any:
        route = self._routes.route(body.model)
        if route is None:
            raise ModelNotFound(f"The model '{body.model}' does not exist", param="model")
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        request = GenerationRequest(request_id, prompt, body.sampling(), routing_key=prefix_key(prompt))
        shape = ResponseShape(kind, request_id, body.model, int(time.time()))
        if body.stream:
            dispatched = await self._dispatcher.open_stream(route, request)
            ended = functools.partial(self._dispatcher.stream_ended, dispatched)
            events = _sse_events(dispatched, shape, body.include_usage, ended)
            headers = {"Cache-Control": "no-cache", **dispatched.headers()}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        dispatched = await self._dispatcher.complete(route, request)
        return JSONResponse(shape.full(dispatched.chunk, dispatched.chunk.text), headers=dispatched.headers())
