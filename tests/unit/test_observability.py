"""The ingress's observation point without Ray: metrics, spans and the JSON log line of one request."""

from __future__ import annotations

import io
import json
import queue
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cluster.config import ObservabilityConfig, TracingConfig
from deployments import observability
from deployments.engines.base import GenerationChunk, GenerationRequest, TextPrompt
from deployments.observability.logs import RequestLog
from deployments.observability.metrics import METRIC_NAMES, Instrument
from deployments.routing import RoutingDecision


class _Recorded:
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.samples: list[tuple[float, dict[str, str]]] = []

    def record(self, value: float, tags: dict[str, str]) -> None:
        self.samples.append((value, tags))


class _Instruments:
    """A fake of Ray's metrics: remembers every sample by metric name."""

    def __init__(self) -> None:
        self.by_name: dict[str, _Recorded] = {}

    def __call__(self, kind: str, name: str, desc: str, tags: tuple[str, ...], bounds: Sequence[float]) -> Instrument:
        self.by_name[name] = _Recorded(kind, name)
        return self.by_name[name]

    def tags(self, name: str) -> list[dict[str, str]]:
        return [t for _, t in self.by_name[name].samples]


class _Tenant:
    class key:  # the shape of admission's ApiKey: only the tier name is read
        tier = "pro"


def _app() -> FastAPI:
    """Stands in for the ingress: calls the same hooks the pipeline and dispatcher call."""
    app = FastAPI()
    observability.install(app)
    decision = RoutingDecision(pool="main", is_fallback=False, reason="primary")

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> Any:
        observability.classified(_Tenant(), "surge-tiny", "main", 2)
        if body.get("refuse"):
            err = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                             "code": "rate_limit_exceeded"}}
            return JSONResponse(err, status_code=429)
        observability.cache_lookup(False)
        request = observability.dispatching(GenerationRequest("chatcmpl-1", TextPrompt("secret prompt")), decision, 1)
        assert bool(request.trace_context) == body.get("traced", False)
        last = GenerationChunk("hi", prompt_tokens=3, completion_tokens=5, finish_reason="stop")
        if not body.get("stream"):
            observability.finished(last)
            return {"ok": True}

        async def events() -> AsyncIterator[str]:
            yield "data: first\n\n"
            yield "data: second\n\n"
            observability.finished(last)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def _post(app: FastAPI, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/v1/chat/completions", json=body, headers=headers or {})


async def test_a_streamed_request_records_latencies_by_bounded_labels() -> None:
    fake = _Instruments()
    observability.configure_ingress(ObservabilityConfig(request_log=False), ["main"], instruments=fake)
    response = await _post(_app(), {"stream": True})
    assert response.status_code == 200
    assert set(fake.by_name) == set(METRIC_NAMES)
    labels = {"model": "surge-tiny", "pool": "main", "tier": "pro", "priority": "2"}
    assert fake.tags("surge_time_to_first_token_seconds") == [labels]
    assert fake.tags("surge_inter_token_latency_seconds") == [labels]
    assert fake.tags("surge_requests_total") == [{"model": "surge-tiny", "pool": "main", "tier": "pro",
                                                  "status": "200"}]
    assert fake.tags("surge_cache_misses_total") == [{"model": "surge-tiny"}]


async def test_a_refusal_counts_its_reason_and_no_latency() -> None:
    fake = _Instruments()
    observability.configure_ingress(ObservabilityConfig(request_log=False), ["main"], instruments=fake)
    response = await _post(_app(), {"refuse": True})
    assert response.status_code == 429
    assert fake.tags("surge_rate_limited_total") == [{"tier": "pro"}]
    assert fake.by_name["surge_time_to_first_token_seconds"].samples == []
    assert fake.tags("surge_requests_total")[0]["status"] == "429"


async def test_metrics_off_records_nothing() -> None:
    fake = _Instruments()
    config = ObservabilityConfig.model_validate({"metrics": {"enabled": False}, "request_log": False})
    observability.configure_ingress(config, ["main"], instruments=fake)
    assert (await _post(_app(), {})).status_code == 200
    assert fake.by_name == {}


def test_log_fields_name_the_outcome() -> None:
    import asyncio

    written: queue.SimpleQueue[str] = queue.SimpleQueue()
    log = RequestLog(on_line=written.put)
    observability.configure_ingress(ObservabilityConfig(), ["main"], instruments=_Instruments(), log=log)
    asyncio.run(_post(_app(), {"stream": True}, {"X-Request-Id": "client-42", "Authorization": "Bearer sk-x"}))
    asyncio.run(_post(_app(), {"refuse": True}))
    lines = [json.loads(written.get(timeout=60)) for _ in range(2)]  # the writer thread's lines, in order
    ok, refused = lines
    assert ok["request_id"] == "client-42" and ok["status"] == 200 and ok["completion_tokens"] == 5
    assert (ok["model"], ok["pool"], ok["tier"], ok["priority"], ok["stream"]) == ("surge-tiny", "main", "pro", "2",
                                                                                   True)
    assert ok["ttft_ms"] is not None and ok["refusal_reason"] is None
    assert refused["status"] == 429 and refused["refusal_reason"] == "rate_limit_exceeded"
    text = json.dumps(lines)
    assert "secret prompt" not in text and "sk-x" not in text


def test_the_request_log_writes_one_compact_line_per_request() -> None:
    done: queue.SimpleQueue[None] = queue.SimpleQueue()

    class _Stream(io.StringIO):
        def flush(self) -> None:
            super().flush()
            done.put(None)

    stream = _Stream()
    log = RequestLog(stream=stream)
    log.write({"event": "request", "request_id": "r-1", "status": 200})
    done.get(timeout=60)  # flushed once the writer caught up
    assert stream.getvalue() == '{"event":"request","request_id":"r-1","status":200}\n'


async def test_spans_form_one_tree_under_the_clients_traceparent() -> None:
    exporter = InMemorySpanExporter()
    config = ObservabilityConfig(tracing=TracingConfig(sample_ratio=1.0), request_log=False)
    observability.configure_ingress(config, ["main"], instruments=_Instruments(),
                                    processors=[SimpleSpanProcessor(exporter)])
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    response = await _post(_app(), {"traced": True}, {"traceparent": parent})
    assert response.headers["x-trace-id"] == trace_id
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/chat/completions", "admission", "cache", "dispatch"}
    root = spans["POST /v1/chat/completions"]
    assert root.parent is not None and root.parent.span_id == 0x00F067AA0BA902B7
    for name in ("admission", "cache", "dispatch"):
        assert spans[name].context.trace_id == int(trace_id, 16)
        assert spans[name].parent is not None and spans[name].parent.span_id == root.context.span_id


async def test_tracing_off_creates_no_carrier() -> None:
    observability.configure_ingress(ObservabilityConfig(request_log=False), ["main"], instruments=_Instruments())
    assert (await _post(_app(), {"traced": False})).status_code == 200


def test_pool_gauges_cover_every_configured_pool() -> None:
    fake = _Instruments()
    observer = observability.configure_ingress(
        ObservabilityConfig(), ["main", "fallback"],
        lambda: {"admitted": {"main": 3}, "breakers": {"fallback": "open"}}, instruments=fake,
    )
    assert observer.metrics is not None
    state = observability._pool_state(["main", "fallback"], lambda: {"admitted": {"main": 3},
                                                                      "breakers": {"fallback": "open"}})
    observer.metrics.pools(*state())
    assert fake.by_name["surge_in_flight_requests"].samples == [(3.0, {"pool": "main"}), (0.0, {"pool": "fallback"})]
    assert fake.by_name["surge_breaker_state"].samples == [(0.0, {"pool": "main"}), (2.0, {"pool": "fallback"})]


def test_replicas_read_their_settings_from_the_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ObservabilityConfig(tracing=TracingConfig(otlp_endpoint="http://127.0.0.1:1/v1/traces"))
    monkeypatch.setenv(observability.ENV_VAR, observability.observability_env(config)[observability.ENV_VAR])
    assert observability.settings() == config
    assert observability.engine_tracing_args() == {"otlp_traces_endpoint": "http://127.0.0.1:1/v1/traces"}
    monkeypatch.delenv(observability.ENV_VAR)
    assert observability.engine_tracing_args() == {}


def test_the_middleware_finds_its_observer_after_the_app_is_pickled() -> None:
    """Serve ships the ingress's FastAPI app to its replicas by value (cloudpickle), middleware options included."""
    import cloudpickle

    app = FastAPI()
    observability.install(app)
    shipped = cloudpickle.loads(cloudpickle.dumps(app.user_middleware[0].kwargs["observer"]))
    observer = observability.configure_ingress(ObservabilityConfig(request_log=False), ["main"],
                                               instruments=_Instruments())
    assert shipped() is observer
