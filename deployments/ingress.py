"""The HTTP ingress: OpenAI routes, thin; validation in protocol/, errors in errors.py."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from cluster.config import PoolConfig, ServerConfig
from deployments.engines.base import GenerationChunk, GenerationRequest, Prompt
from deployments.errors import DeadlineExceeded, ModelNotFound, SurgeError, error_body
from deployments.failures import as_surge_error, validation_error
from deployments.protocol import ChatCompletionRequest, CompletionRequest, ResponseShape, models_list, sse
from deployments.protocol.common import SamplingFields

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
    stream: DeploymentResponseGenerator, first: GenerationChunk, shape: ResponseShape, include_usage: bool
) -> AsyncIterator[str]:
    """The SSE body; a failure after the first token ends the stream with an error event."""
    chunk = first
    try:
        yield sse(shape.delta(first.text, first.finish_reason, first=True))
        while chunk.finish_reason is None:
            chunk = await stream.__anext__()
            yield sse(shape.delta(chunk.text, chunk.finish_reason))
        if include_usage:
            yield sse(shape.usage_chunk(chunk))
    except (asyncio.CancelledError, GeneratorExit):
        stream.cancel()  # the client went away: abort the engine request
        raise
    except Exception as exc:
        err = as_surge_error(exc)
        logger.warning("stream %s failed after its first token: %s", shape.response_id, err.message)
        yield sse(err.body())
    yield sse("[DONE]")

# Defined above the class: @serve.ingress serializes the class when applied.

@serve.ingress(app)
class Ingress:
    """Parses and validates OpenAI requests, picks the model's pool and relays the engine's output."""

    def __init__(self, server: ServerConfig, pools: list[PoolConfig], handles: dict[str, DeploymentHandle]):
        self._timeout_s = server.request_timeout_s
        self._handles = handles
        self._pool_by_model = {name: pool for pool in pools for name in pool.model_names}
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
        return JSONResponse({"status": "ready", "pools": {s["pool"]: s for s in stats}})

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        entries = [(name, pool.model_id) for name, pool in self._pool_by_model.items()]
        return models_list(entries, self._created)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        return await self._serve(body, body.prompt(), "chat", "chatcmpl")

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        return await self._serve(body, body.engine_prompt(), "completion", "cmpl")

    async def _serve(self, body: SamplingFields, prompt: Prompt, kind: Any, id_prefix: str) -> Any:
        pool = self._pool_by_model.get(body.model)
        if pool is None:
            raise ModelNotFound(f"The model '{body.model}' does not exist", param="model")
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        request = GenerationRequest(request_id, prompt, body.sampling())
        shape = ResponseShape(kind, request_id, body.model, int(time.time()))
        handle = self._handles[pool.name]
        if body.stream:
            return await self._stream(handle, request, shape, body.include_usage)
        response = handle.complete.remote(request)
        final = await self._call(response, response.cancel)
        return shape.full(final, final.text)

    async def _call(self, awaitable: Any, cancel: Callable[[], None]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout=self._timeout_s)
        except TimeoutError:
            cancel()
            raise DeadlineExceeded(f"no response within {self._timeout_s:g} s") from None
        except Exception as exc:
            cancel()
            raise as_surge_error(exc) from None

    async def _stream(
        self, handle: DeploymentHandle, request: GenerationRequest, shape: ResponseShape, include_usage: bool
    ) -> StreamingResponse:
        stream = cast(DeploymentResponseGenerator, handle.options(stream=True).generate.remote(request))
        # Errors before the first token still become a proper HTTP status.
        first = await self._call(stream.__anext__(), stream.cancel)
        events = _sse_events(stream, first, shape, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

