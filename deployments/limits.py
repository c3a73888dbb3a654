"""Request limits checked before any JSON is parsed: header count and size, content type, body size (on
Content-Length and while a chunked body arrives) and the time the body may take to arrive.

A pure ASGI middleware outside FastAPI: a request over a limit is answered from here, in the one error contract,
without reading (or after reading at most `max_body_bytes` of) its body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.exceptions import HTTPException

from cluster.config import RequestLimitsConfig
from deployments.errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    SurgeError,
    UnsupportedMediaType,
)

__all__ = ["BodyRejected", "RequestLimitsMiddleware", "configure", "current_limits", "json_paths"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes whose body is JSON: anything else sent to them is 415 (a missing Content-Type is read as JSON).
json_paths = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/batch/chat/completions", "/v1/batches"})
_UPLOAD_PATH = "/v1/files"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_limits = RequestLimitsConfig()
_upload_bytes = _limits.max_body_bytes


def configure(limits: RequestLimitsConfig, max_file_bytes: int) -> None:
    """This ingress replica's limits; until called, the defaults."""
    global _limits, _upload_bytes
    _limits = limits
    _upload_bytes = max_file_bytes + limits.upload_overhead_bytes


def current_limits() -> tuple[RequestLimitsConfig, int]:
    """The limits and the upload bound. A named function, so the pickled app reads this module's live state."""
    return _limits, _upload_bytes


class BodyRejected(HTTPException):
    """Raised from `receive` while FastAPI reads a body; an HTTPException so FastAPI re-raises it untouched."""

    def __init__(self, error: SurgeError) -> None:
        super().__init__(status_code=error.status, detail=error.message)
        self.error = error


class RequestLimitsMiddleware:
    """Refuses requests over the configured limits before the app parses them."""

    def __init__(self, app: ASGIApp, limits: Callable[[], tuple[RequestLimitsConfig, int]] = current_limits) -> None:
        self._app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limits, upload_bytes = self._limits()
        max_bytes = upload_bytes if scope["path"] == _UPLOAD_PATH else limits.max_body_bytes
        try:
            _check_head(scope, limits, max_bytes)
        except SurgeError as error:
            await _answer(send, error)
            return
        if scope["method"] not in _BODY_METHODS:
            await self._app(scope, receive, send)
            return
        await self._app(scope, _bounded_receive(receive, max_bytes, limits.body_timeout_s), send)


def _check_head(scope: Scope, limits: RequestLimitsConfig, max_bytes: int) -> None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    if len(headers) > limits.max_headers:
        raise HeadersTooLarge(f"At most {limits.max_headers} request headers are accepted.")
    if sum(len(k) + len(v) for k, v in headers) > limits.max_header_bytes:
        raise HeadersTooLarge(f"Request headers may total at most {limits.max_header_bytes} bytes.")
    length = next((v for k, v in headers if k == b"content-length"), None)
    if length is not None:
        if not length.isdigit():
            raise BadRequest("Content-Length must be a non-negative integer.", code="invalid_content_length")
        if int(length) > max_bytes:
            raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    if scope["method"] in _BODY_METHODS and scope["path"] in json_paths:
        content_type = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(f"Send the body as application/json, not {media[:64]!r}.")


def _bounded_receive(receive: Receive, max_bytes: int, timeout_s: float) -> Receive:
    """`receive` that refuses a body over `max_bytes` (413) or still arriving `timeout_s` after the headers (408)."""
    deadline = time.monotonic() + timeout_s
    received = 0
    done = False

    async def bounded() -> Message:
        nonlocal received, done
        if done:  # the body is complete: what follows is a disconnect, which may take as long as the response
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise BodyRejected(RequestTimeout(f"The request body did not arrive within {timeout_s:g} s.")) from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise BodyRejected(PayloadTooLarge(f"The request body is over {max_bytes} bytes."))
            done = not message.get("more_body", False)
        return message

    return bounded


async def _answer(send: Send, error: SurgeError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
