"""One batch line as a request: validated like the online endpoint, charged to the tenant's quotas, sent to its
pool at the batch priority, answered in OpenAI's shape (an error answer is an answer too)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import ValidationError

from cluster.config import RouteConfig
from deployments.admission.gate import AdmissionGate, Tenant, prompt_token_bound
from deployments.batch.lines import InputLine
from deployments.engines.base import GenerationChunk, GenerationRequest, Prompt
from deployments.errors import BadRequest, ModelNotFound, RateLimited, SurgeError, Unauthorized
from deployments.failures import validation_error
from deployments.protocol import ChatCompletionRequest, CompletionRequest, ResponseShape
from deployments.protocol.common import SamplingFields
from deployments.routing.prefix import prefix_key

__all__ = ["Call", "LineExecutor", "RetryLater"]

# Sends one request to a pool and returns its whole completion.
Kind = Literal["chat", "completion"]
Call = Callable[[str, GenerationRequest], Awaitable[GenerationChunk]]


class RetryLater(Exception):
    """The line could not run now (a rate limit, an overloaded or failing pool); it goes back in the queue."""

    def __init__(self, after_s: float, why: str) -> None:
        super().__init__(why)
        self.after_s = after_s


class LineExecutor:
    """Turns lines into answers; holds the settle tasks so accounting survives a cancelled line."""

    def __init__(self, gate: AdmissionGate, routes: dict[str, RouteConfig], priority: int) -> None:
        self._gate = gate
        self._routes = routes
        self._priority = priority
        self._settling: set[asyncio.Task[None]] = set()

    def pool_of(self, line: InputLine) -> str | None:
        """The pool a line will run on (None: it fails before reaching one)."""
        route = self._routes.get(str(line.body.get("model")))
        return route.primary if route is not None else None

    async def answer(
        self, endpoint: str, line: InputLine, tenant: Tenant | None, call: Call
    ) -> tuple[int, dict[str, Any]]:
        """(status code, response body) of the line; raises RetryLater when it should run again later."""
        try:
            if tenant is None:
                raise Unauthorized("The batch's API key was revoked.")
            body, prompt, kind = _parse(endpoint, line)
            route = self._routes.get(body.model)
            if route is None:
                raise ModelNotFound(f"The model '{body.model}' does not exist", param="model")
            self._gate.check_model(tenant, body.model)
            sampling = body.sampling()
            cap = self._gate.max_tokens(tenant, sampling.max_tokens)
            if tenant.tier is not None:
                sampling = replace(sampling, max_tokens=sampling.max_tokens and cap, max_tokens_cap=cap)
            reservation = await self._gate.reserve(tenant, prompt_token_bound(prompt) + (cap or 0))
        except ValidationError as exc:
            return _error(validation_error(exc.errors()))
        except RateLimited as exc:
            if exc.code == "rate_limit_exceeded":  # a minute window: the line waits for the next one
                raise RetryLater(float(exc.headers.get("Retry-After", "1")), exc.message) from None
            return _error(exc)
        except SurgeError as exc:
            return _error(exc)
        request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        request = GenerationRequest(request_id, prompt, sampling, self._priority, prefix_key(prompt))
        used = 0
        try:
            chunk = await call(route.primary, request)
            used = chunk.prompt_tokens + chunk.completion_tokens
        except SurgeError as exc:
            if exc.status >= 500:
                raise RetryLater(1.0, exc.message) from None
            return _error(exc)
        finally:
            self._settle_later(reservation, used)
        shape = ResponseShape(kind, request_id, body.model, int(time.time()))
        return 200, shape.full(chunk, chunk.text)

    def _settle_later(self, reservation: Any, used: int) -> None:
        task = asyncio.get_running_loop().create_task(self._gate.settle(reservation, used))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)


def _parse(endpoint: str, line: InputLine) -> tuple[SamplingFields, Prompt, Kind]:
    if line.url != endpoint:
        raise BadRequest(f"the line's url {line.url} is not the batch's endpoint {endpoint}", param="url")
    body: SamplingFields
    prompt: Prompt
    kind: Kind
    if endpoint == "/v1/chat/completions":
        chat = ChatCompletionRequest.model_validate(line.body)
        body, prompt, kind = chat, chat.prompt(), "chat"
    else:
        completion = CompletionRequest.model_validate(line.body)
        body, prompt, kind = completion, completion.engine_prompt(), "completion"
    if body.stream:
        raise BadRequest("batch lines cannot be streamed", param="stream")
    return body, prompt, kind


def _error(err: SurgeError) -> tuple[int, dict[str, Any]]:
    return err.status, err.body()
