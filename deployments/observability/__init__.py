"""surge's observability: Ray metrics, OpenTelemetry spans, JSON request logs.

The request path calls these one-line hooks; each process builds its instruments from the
`ObservabilityConfig` it was given (the ingress) or finds in `SURGE_OBSERVABILITY` (pool replicas, set in
their runtime env by deployments/app.py). Everything is a no-op until configured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Span

from cluster.config import ObservabilityConfig
from deployments.engines.base import GenerationRequest
from deployments.observability.asgi import ObservabilityMiddleware, Observer
from deployments.observability.logs import RequestLog, request_log
from deployments.observability.metrics import InstrumentFactory, SurgeMetrics, ray_instruments
from deployments.observability.record import cache_lookup, classified, dispatching, finished, stream_failed
from deployments.observability.tracing import Tracing, engine_trace_headers, set_engine_trace_headers

__all__ = [
    "ENV_VAR",
    "cache_lookup",
    "classified",
    "configure_ingress",
    "current_observer",
    "dispatching",
    "end_span",
    "engine_stat_loggers",
    "engine_trace_headers",
    "engine_tracing_args",
    "finished",
    "install",
    "observability_env",
    "replica_span",
    "settings",
    "stream_failed",
]

ENV_VAR = "SURGE_OBSERVABILITY"
_observer: Observer | None = None
_replica_tracing: Tracing | bool | None = False  # False: not built yet in this process
_engine_spans = False  # vLLM traces too (its otlp_traces_endpoint is set): hand it the replica's span


def observability_env(config: ObservabilityConfig) -> dict[str, str]:
    """Environment for a pool's runtime env: its replicas read their settings from it."""
    return {ENV_VAR: config.model_dump_json()}


def settings() -> ObservabilityConfig:
    """This process's settings: from `SURGE_OBSERVABILITY`, else the defaults (metrics on, tracing off)."""
    raw = os.environ.get(ENV_VAR)
    return ObservabilityConfig.model_validate_json(raw) if raw else ObservabilityConfig()


def current_observer() -> Observer | None:
    """This process's observer. A named function, not a lambda: Serve pickles the ingress's app by value, and a
    lambda would carry a frozen copy of this module's globals (where the observer stays None)."""
    return _observer


def install(app: Any) -> None:
    """Adds the middleware to the ingress's FastAPI app; it observes once `configure_ingress` has run."""
    app.add_middleware(ObservabilityMiddleware, observer=current_observer)


def configure_ingress(
    config: ObservabilityConfig,
    pools: Sequence[str],
    debug_state: Callable[[], dict[str, Any]] | None = None,
    instruments: InstrumentFactory = ray_instruments,
    processors: Sequence[SpanProcessor] | None = None,
    log: RequestLog | None = None,
) -> Observer:
    """Build the ingress replica's instruments. `debug_state` is the route client's (its "admitted" and
    "breakers" per pool feed the gauges); tests pass fake `instruments`, in-memory span `processors` and a `log`."""
    global _observer
    pool_state = None if debug_state is None else _pool_state(list(pools), debug_state)
    metrics = SurgeMetrics(instruments) if config.metrics.enabled else None
    tracing = None
    if config.tracing.otlp_endpoint or processors is not None:
        tracing = Tracing(config.tracing, "ingress", root=True, processors=processors)
    log = (log or request_log()) if config.request_log else None
    observer = Observer(metrics, tracing, log, pool_state, config.metrics.gauge_interval_s)
    # All off: the middleware passes requests straight through (no record, no ids, no headers).
    _observer = observer if metrics or tracing or log else None
    return observer


def _pool_state(
    pools: list[str], debug_state: Callable[[], dict[str, Any]]
) -> Callable[[], tuple[dict[str, int], dict[str, str]]]:
    def state() -> tuple[dict[str, int], dict[str, str]]:
        snapshot = debug_state()
        admitted, breakers = snapshot.get("admitted", {}), snapshot.get("breakers", {})
        return {p: int(admitted.get(p, 0)) for p in pools}, {p: str(breakers.get(p, "closed")) for p in pools}

    return state


def replica_span(pool: str, request: GenerationRequest) -> Span | None:
    """The replica's span under the ingress's dispatch span, or None; the engine parents its span on it."""
    global _replica_tracing, _engine_spans
    if not request.trace_context:
        return None
    if _replica_tracing is False:
        config = settings().tracing
        _replica_tracing = Tracing(config, "replica", root=False) if config.otlp_endpoint else None
        _engine_spans = config.engine_spans
    if not isinstance(_replica_tracing, Tracing):
        return None
    attrs = {"surge.pool": pool, "surge.completion_id": request.request_id, "surge.priority": request.priority}
    span = _replica_tracing.from_carrier(dict(request.trace_context), "replica.generate", attrs)
    if span.is_recording() and _engine_spans:
        from deployments.observability.tracing import format_traceparent

        set_engine_trace_headers({"traceparent": format_traceparent(span)})
    return span


def end_span(span: Span | None) -> None:
    if span is not None:
        span.end()


def engine_stat_loggers() -> list[Any]:
    """vLLM's own Ray stat logger (`ray_vllm_*` metrics) when metrics are on, beside surge's stats reader; its
    scheduler gauges are sampled (engine_metrics.py), its per-request metrics are all vLLM's."""
    if not settings().metrics.enabled:
        return []
    from deployments.observability.engine_metrics import SampledRayStatLogger

    return [SampledRayStatLogger]


def engine_tracing_args() -> dict[str, Any]:
    """vLLM's `otlp_traces_endpoint` (its `llm_request` span) when tracing and engine spans are on."""
    config = settings().tracing
    if not config.otlp_endpoint or not config.engine_spans:
        return {}
    # vLLM's exporter speaks gRPC unless told otherwise; surge's endpoint is OTLP/HTTP.
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    return {"otlp_traces_endpoint": config.otlp_endpoint}
