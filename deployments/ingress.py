"""The HTTP ingress: OpenAI routes, thin; validation in protocol/, the request path in pipeline.py."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from cluster.config import SurgeConfig
from deployments import limits, observability
from deployments.admission.gate import AdmissionGate
from deployments.batch import routes as batch_routes
from deployments.dispatch import Dispatcher
from deployments.errors import BadRequest, SurgeError, error_body
from deployments.failures import validation_error
from deployments.handles import for_this_process, transport
from deployments.pipeline import RequestPipeline, Work
from deployments.protocol import ChatCompletionRequest, CompletionRequest, models_list
from deployments.traffic_router import RouteClient

__all__ = ["Ingress", "app"]

logger = logging.getLogger("surge.ingress")
app = FastAPI(title="surge", description="OpenAI-compatible LLM serving on Ray Serve + vLLM")
# Inside the observability middleware, so refusals for size, type or time are counted like any other.
app.add_middleware(limits.RequestLimitsMiddleware)
observability.install(app)
# OpenAI's Batch API (/v1/files, /v1/batches); its routes and logic live in deployments/batch/.
app.include_router(batch_routes.router)


@app.exception_handler(SurgeError)
async def _surge_error(_: Request, exc: SurgeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (unknown path, wrong method, unreadable body) in the contract."""
    if isinstance(exc, limits.BodyRejected):
        return JSONResponse(exc.error.body(), status_code=exc.status_code, headers={"Connection": "close"})
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_body")
    type_ = "invalid_request_error" if exc.status_code < 500 else "internal_error"
    body = error_body(str(exc.detail), type_, None, code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = validation_error(exc.errors())
    return JSONResponse(err.body(), status_code=err.status)


class BatchChatRequest(BaseModel):
    """`POST /v1/batch/chat/completions`: items are validated one by one, so one bad item fails alone."""

    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(min_length=1)


# Defined above the class: @serve.ingress serializes the class when applied.
@serve.ingress(app)
class Ingress:
    """Parses and validates OpenAI requests; the pipeline admits, routes and answers them."""

    def __init__(
        self,
        config: SurgeConfig,
        handles: dict[str, DeploymentHandle],
        router: DeploymentHandle,
        batch_runner: DeploymentHandle | None = None,  # bound so Serve deploys it; the ingress never calls it
    ) -> None:
        handles = {pool: for_this_process(handle) for pool, handle in handles.items()}
        self._handles = handles
        self._max_batch_items = config.ingress.max_batch_items
        limits.configure(config.ingress.limits, config.batch.max_file_bytes)
        self._gate = AdmissionGate(config.admission)
        batch_routes.install(config, self._gate)
        routes = RouteClient(for_this_process(router), config.route_table(), config.routing)
        dispatcher = Dispatcher(
            handles, routes, config.routing, config.server.request_timeout_s, config.ingress.batching
        )
        self._pipeline = RequestPipeline(self._gate, routes, dispatcher)
        self._routes = routes
        observability.configure_ingress(config.observability, [p.name for p in config.pools], routes.debug_state)
        self._model_roots = {
            model: config.pool(route.primary).model_id for model, route in config.route_table().items()
        }
        self._created = int(time.time())

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        try:
            stats = await asyncio.wait_for(asyncio.gather(*(h.stats.remote() for h in self._handles.values())), 5)
        except Exception as exc:
            logger.warning("readiness check failed: %r", exc)
            body = error_body("a model pool is not answering", "service_unavailable_error", None, "not_ready")
            return JSONResponse(body, status_code=503)
        pools = {s["pool"]: s for s in stats}
        transports = {pool: transport(handle) for pool, handle in self._handles.items()}
        routing = self._routes.debug_state() | {"transport": transports}
        return JSONResponse({"status": "ready", "pools": pools, "routing": routing})

    @app.post("/oauth/token")
    async def oauth_token(self, request: Request) -> JSONResponse:
        """OAuth 2.0 client credentials (RFC 6749 §4.4): a form body in, a signed access token out."""
        reply = await self._gate.identity.issue(
            request.headers.get("content-type"), request.headers.get("authorization"), await request.body()
        )
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    @app.get("/.well-known/jwks.json")
    async def jwks(self) -> dict[str, Any]:
        return self._gate.identity.jwks()

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        await self._gate.authenticate(request.headers.get("authorization"))
        return models_list(list(self._model_roots.items()), self._created)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        tenant = await self._gate.authenticate(request.headers.get("authorization"))
        return await self._pipeline.respond(tenant, Work(body, body.prompt(), "chat"))

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        tenant = await self._gate.authenticate(request.headers.get("authorization"))
        return await self._pipeline.respond(tenant, Work(body, body.engine_prompt(), "completion"))

    @app.post("/v1/batch/chat/completions")
    async def batch_chat_completions(self, body: BatchChatRequest, request: Request) -> dict[str, Any]:
        """surge's own synchronous extension (not OpenAI's) for small interactive groups: every item answered in
        order, each admitted and counted on its own. Large jobs belong on OpenAI's `/v1/files` + `/v1/batches`."""
        tenant = await self._gate.authenticate(request.headers.get("authorization"))
        if len(body.requests) > self._max_batch_items:
            raise BadRequest(f"at most {self._max_batch_items} requests per batch", param="requests")
        results = await asyncio.gather(*(self._batch_item(tenant, item) for item in body.requests))
        return {"object": "list", "data": [{"index": i, **result} for i, result in enumerate(results)]}

    async def _batch_item(self, tenant: Any, item: dict[str, Any]) -> dict[str, Any]:
        try:
            chat = ChatCompletionRequest.model_validate(item)
            if chat.stream:
                raise BadRequest("batch items cannot be streamed", param="stream")
            response, _ = await self._pipeline.complete_json(tenant, Work(chat, chat.prompt(), "chat"))
            return {"status": 200, "response": response}
        except ValidationError as exc:
            err: SurgeError = validation_error(exc.errors())
        except SurgeError as exc:
            err = exc
        return {"status": err.status, "error": err.body()["error"]}
