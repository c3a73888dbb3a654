"""The ingress's observation point: a pure ASGI middleware around the OpenAI routes.

It times the request as the client sees it (first and last body byte), opens the root span (continuing a
client's W3C `traceparent`), logs under Serve's `X-Request-Id`, echoes the trace id, and when the response is
done records metrics, ends the spans and writes the JSON log line. Pure ASGI, not BaseHTTPMiddleware: it adds no task or
queue per request and never buffers a stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry.trace import Status, StatusCode

from deployments.observability.logs import RequestLog, log_request
from deployments.observability.metrics import SurgeMetrics
from deployments.observability.record import RequestRecord, current
from deployments.observability.tracing import Tracing

__all__ = ["ObservabilityMiddleware", "ObservedPaths", "Observer"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ObservedPaths = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/batch/chat/completions"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a client's own id, echoed only if it is tame
_RECORD = current()


class Observer:
    """What the middleware reports to: any of metrics, tracing and the request log may be off (None)."""

    def __init__(self, metrics: SurgeMetrics | None, tracing: Tracing | None, log: RequestLog | None,
                 pool_state: Callable[[], tuple[dict[str, int], dict[str, str]]] | None = None,
                 gauge_interval_s: float = 1.0) -> None:
        self.metrics, self.tracing, self.log = metrics, tracing, log
        self._pool_state = pool_state
        self._gauge_interval_s = gauge_interval_s
        self._sampler: asyncio.Task[None] | None = None

    def ensure_sampling(self) -> None:
        """Pool gauges are sampled by a task of their own, started on the ingress's loop at its first request."""
        if self._sampler is None and self.metrics is not None and self._pool_state is not None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def _sample_forever(self) -> None:
        assert self.metrics is not None and self._pool_state is not None
        while True:
            in_flight, breakers = self._pool_state()
            self.metrics.pools(in_flight, breakers)
            await asyncio.sleep(self._gauge_interval_s)

    def begin(self, scope: Scope) -> RequestRecord:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
                   if k in (b"traceparent", b"tracestate", b"x-request-id")}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        record = RequestRecord(request_id, time.perf_counter(), time.time_ns())
        if self.tracing is not None:
            record.span = self.tracing.server_span(f"POST {scope['path']}", headers, record.start_ns)
            record.tracing = self.tracing
            ctx = record.span.get_span_context()
            record.trace_id = f"{ctx.trace_id:032x}"
        elif "traceparent" in headers:
            parts = headers["traceparent"].split("-")
            record.trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
        return record

    def end(self, record: RequestRecord, path: str) -> None:
        end_s = time.perf_counter()
        if self.metrics is not None:
            self._count(self.metrics, record, end_s)
        if record.span is not None:
            self._end_spans(record, end_s)
        if self.log is not None:
            log_request(self.log, record, path, end_s)

    def _count(self, metrics: SurgeMetrics, record: RequestRecord, end_s: float) -> None:
        ok = record.status < 400
        ttft_s = record.first_byte_s - record.start_s if ok and record.first_byte_s is not None else None
        itl_s = None
        tokens = record.completion_tokens or 0
        if ok and record.streamed and tokens > 1 and record.first_byte_s is not None and record.last_byte_s:
            itl_s = (record.last_byte_s - record.first_byte_s) / (tokens - 1)
        metrics.request(record.model, record.pool, record.tier, record.priority, str(record.status),
                        ttft_s, itl_s, end_s - record.start_s)
        metrics.admission(record.tier, (record.ready_s or end_s) - record.start_s)
        if record.error_code is not None:
            metrics.refusal(record.error_code, record.tier, record.pool, record.priority)
        if record.cache_hit is not None:
            metrics.cache(record.model, record.cache_hit)
        if record.fallback and ok:
            metrics.fallback(record.model, record.pool)
        if record.attempts > 1:
            metrics.retry(record.pool)

    def _end_spans(self, record: RequestRecord, end_s: float) -> None:
        assert record.span is not None and self.tracing is not None
        def ns(at_s: float) -> int:
            return record.start_ns + int((at_s - record.start_s) * 1e9)
        admission = self.tracing.child(record.span, "admission", start_ns=record.start_ns,
                                       attributes={"surge.tier": record.tier, "surge.priority": record.priority})
        admission.end(end_time=ns(record.ready_s or end_s))
        for span in record.spans:
            if span.is_recording():
                span.end(end_time=ns(end_s))
        attrs: dict[str, str | int | bool] = {
            "http.response.status_code": record.status, "surge.request_id": record.request_id,
            "surge.model": record.model, "surge.pool": record.pool, "surge.stream": record.streamed}
        record.span.set_attributes(attrs)
        if record.status >= 500:
            record.span.set_status(Status(StatusCode.ERROR, record.error_code or ""))
        record.span.end(end_time=ns(end_s))


class ObservabilityMiddleware:
    """ASGI middleware; observes only the OpenAI generation routes, passes everything else straight on."""

    def __init__(self, app: ASGIApp, observer: Callable[[], Observer | None]) -> None:
        self._app = app
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer = self._observer() if scope["type"] == "http" else None
        if observer is None or scope["path"] not in ObservedPaths:
            await self._app(scope, receive, send)
            return
        observer.ensure_sampling()
        record = observer.begin(scope)
        token = _RECORD.set(record)

        async def observed_send(message: Message) -> None:
            _on_message(record, message)
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            _RECORD.reset(token)
            observer.end(record, scope["path"])


def _on_message(record: RequestRecord, message: Message) -> None:
    if message["type"] == "http.response.start":
        record.status = message["status"]
        headers = list(message.get("headers", ()))
        record.streamed = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
        # X-Request-Id is Serve's: it gives every request one (the client's own when sent) and echoes it.
        if record.trace_id is not None:
            message["headers"] = [*headers, (b"x-trace-id", record.trace_id.encode())]
    elif message["type"] == "http.response.body":
        body = message.get("body", b"")
        if not body:
            return
        now = time.perf_counter()
        record.first_byte_s = record.first_byte_s or now
        record.last_byte_s = now
        if record.status >= 400 and record.error_code is None:
            record.error_code = _error_code(body)


def _error_code(body: bytes) -> str:
    """The OpenAI error's `code` (or `type`): a fixed vocabulary set by errors.py, safe as a label."""
    try:
        error = json.loads(body)["error"]
        return str(error.get("code") or error.get("type") or "error")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "error"
