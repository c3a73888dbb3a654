"""Observability settings: Ray metrics, OpenTelemetry tracing, per-request JSON logs (inert models only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MetricsConfig", "ObservabilityConfig", "TracingConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsConfig(_Strict):
    """surge's own metrics and vLLM's engine metrics, both through Ray's metrics system."""

    enabled: bool = True
    # Where each Ray node started by surge serves Prometheus text (`ray.init(_metrics_export_port=...)`).
    # None lets Ray pick a free port (KubeRay sets `--metrics-export-port=8080` on its own `ray start`).
    export_port: int | None = Field(8080, ge=1, le=65535)
    # How often the ingress samples its in-flight counts and breaker states into gauges.
    gauge_interval_s: float = Field(1.0, gt=0)


class TracingConfig(_Strict):
    """OpenTelemetry spans ingress -> replica -> engine; nothing is exported without an endpoint."""

    # OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces. None: tracing off.
    otlp_endpoint: str | None = None
    # Head sampling at the ingress for requests without a sampled `traceparent`; children follow the parent.
    sample_ratio: float = Field(1.0, ge=0, le=1)
    service_name: str = "surge"
    # vLLM's own `llm_request` span under the replica's span (vLLM's otlp_traces_endpoint).
    engine_spans: bool = True


class ObservabilityConfig(_Strict):
    """What surge exports about its requests."""

    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    # One JSON line per request on the ingress replica's stderr (written by a thread); never a key or a prompt.
    request_log: bool = True
