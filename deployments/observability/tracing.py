"""OpenTelemetry spans for one request: ingress (admission, cache, dispatch) -> replica -> engine.

Context crosses Ray as a W3C trace-context carrier inside `GenerationRequest.trace_context`, so it survives
any handle transport (gRPC in Serve's throughput mode, actor calls otherwise). Each process keeps its own
`TracerProvider` (never the global one, which vLLM sets for its `llm_request` span); with no endpoint
configured no provider exists and nothing is created or exported.
"""

from __future__ import annotations

import atexit
import contextvars
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cluster.config import TracingConfig

__all__ = ["Tracing", "engine_trace_headers", "format_traceparent", "otlp_processor", "set_engine_trace_headers"]

_PROPAGATOR = TraceContextTextMapPropagator()
# The replica's span as a W3C carrier, for the engine's own span (vLLM's `trace_headers`); set per request task.
_ENGINE_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "surge_engine_trace_headers", default=None
)


def otlp_processor(endpoint: str) -> SpanProcessor:
    """Batches spans to an OTLP/HTTP collector off the request path, on OpenTelemetry's schedule (5 s, or
    `OTEL_BSP_SCHEDULE_DELAY`), as vLLM's own exporter does: each export is an HTTP post whose thread holds the
    GIL, and a 500 ms schedule made the posts most of what tracing cost the ingress and the replica (profiled)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))


class Tracing:
    """A process's tracer; `root=True` at the ingress (head sampling), children follow their parent."""

    def __init__(self, config: TracingConfig, component: str, root: bool,
                 processors: Sequence[SpanProcessor] | None = None) -> None:
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio)) if root else ParentBased(ALWAYS_ON)
        resource = Resource.create({"service.name": config.service_name, "surge.component": component})
        self._provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        if processors is None:
            assert config.otlp_endpoint is not None
            processors = [otlp_processor(config.otlp_endpoint)]
        for processor in processors:
            self._provider.add_span_processor(processor)
        atexit.register(self._provider.shutdown)
        self._tracer = self._provider.get_tracer("surge")

    def server_span(self, name: str, headers: Mapping[str, str], start_ns: int) -> Span:
        """The request's root span, continuing the client's `traceparent` when it sent one."""
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        return self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, start_time=start_ns)

    def child(self, parent: Span, name: str, start_ns: int | None = None,
              attributes: Mapping[str, Any] | None = None) -> Span:
        context = trace.set_span_in_context(parent)
        return self._tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)

    def from_carrier(self, carrier: Mapping[str, str], name: str, attributes: Mapping[str, Any]) -> Span:
        context = _PROPAGATOR.extract(carrier)
        return self._tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)

    def shutdown(self) -> None:
        self._provider.shutdown()


def carrier_of(span: Span) -> tuple[tuple[str, str], ...]:
    """The span as a W3C `traceparent` (hashable, for the frozen request dataclass)."""
    return (("traceparent", format_traceparent(span)),)


def format_traceparent(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def set_engine_trace_headers(headers: Mapping[str, str] | None) -> None:
    _ENGINE_HEADERS.set(headers)


def engine_trace_headers() -> Mapping[str, str] | None:
    """The carrier the engine should parent its own span on, or None (tracing off, or not sampled)."""
    return _ENGINE_HEADERS.get()
