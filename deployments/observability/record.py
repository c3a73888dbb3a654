"""One request's observations at the ingress, filled in by one-line hooks on the request path.

The ASGI middleware (asgi.py) puts a `RequestRecord` in a context variable; the pipeline's and dispatcher's
hooks find it there (the request's task and the tasks it spawns share the record object).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from opentelemetry.trace import Span

from deployments.engines.base import GenerationChunk, GenerationRequest

__all__ = ["RequestRecord", "cache_lookup", "classified", "current", "dispatching", "finished", "stream_failed"]


class _Decision(Protocol):
    @property
    def pool(self) -> str | None: ...
    @property
    def is_fallback(self) -> bool: ...


class _SpanFactory(Protocol):
    def child(self, parent: Span, name: str, start_ns: int | None = ..., attributes: Any = ...) -> Span: ...


@dataclass(slots=True)
class RequestRecord:
    """What the ingress learned about one HTTP request; labels hold configured names only."""

    request_id: str
    start_s: float
    start_ns: int
    trace_id: str | None = None
    span: Span | None = None
    tracing: _SpanFactory | None = None
    model: str = "unknown"
    pool: str = "none"
    tier: str = "none"
    priority: str = "none"
    status: int = 0
    error_code: str | None = None
    ready_s: float | None = None  # admitted, and the cache (if any) consulted: ready to answer
    cache_hit: bool | None = None
    fallback: bool = False
    attempts: int = 0
    completion_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_byte_s: float | None = None
    last_byte_s: float | None = None
    streamed: bool = False
    spans: list[Span] = field(default_factory=list)


_CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("surge_request", default=None)


def current() -> contextvars.ContextVar[RequestRecord | None]:
    return _CURRENT


def classified(tenant: Any, model: str, pool: str, priority: int) -> None:
    """Admission knows who asks, for which configured route, at which priority."""
    record = _CURRENT.get()
    if record is None:
        return
    key = getattr(tenant, "key", None)
    record.tier = key.tier if key is not None else "none"
    record.model, record.pool, record.priority = model, pool, str(priority)


def cache_lookup(hit: bool) -> None:
    record = _CURRENT.get()
    if record is None:
        return
    record.cache_hit = hit
    now = time.perf_counter()
    record.ready_s = record.ready_s or now
    if record.span is not None and record.tracing is not None:
        _mark(record, "cache", now, {"surge.cache.hit": hit})


def dispatching(request: GenerationRequest, decision: _Decision, attempt: int) -> GenerationRequest:
    """One dispatch attempt starts: its span becomes the replica's parent (carried in the request)."""
    record = _CURRENT.get()
    if record is None:
        return request
    now = time.perf_counter()
    record.ready_s = record.ready_s or now
    record.attempts, record.completion_id = attempt, request.request_id
    if decision.pool is not None:
        record.pool, record.fallback = decision.pool, decision.is_fallback
    if record.span is None or record.tracing is None or not record.span.is_recording():
        return request
    from deployments.observability.tracing import carrier_of

    for earlier in record.spans:
        if earlier.is_recording():
            earlier.end()  # an attempt that is being retried
    attrs = {"surge.pool": record.pool, "surge.attempt": attempt, "surge.fallback": record.fallback}
    span = record.tracing.child(record.span, "dispatch", attributes=attrs)
    record.spans.append(span)
    return replace(request, trace_context=carrier_of(span))


def finished(chunk: GenerationChunk) -> None:
    """The last chunk (or whole completion) of the request, with its token counts."""
    record = _CURRENT.get()
    if record is not None:
        record.prompt_tokens, record.completion_tokens = chunk.prompt_tokens, chunk.completion_tokens


def stream_failed(status: int, code: str | None) -> None:
    """A stream that failed after its 200 was sent: counted with the error's status, not as a success."""
    record = _CURRENT.get()
    if record is not None:
        record.status, record.error_code = status, code or "error"


def _mark(record: RequestRecord, name: str, now_s: float, attributes: dict[str, Any]) -> None:
    """An instant span at `now_s` (the lookup itself takes microseconds; its place in the tree is what matters)."""
    assert record.span is not None and record.tracing is not None
    start_ns = record.start_ns + int((now_s - record.start_s) * 1e9)
    span = record.tracing.child(record.span, name, start_ns=start_ns, attributes=attributes)
    span.end(end_time=start_ns)
