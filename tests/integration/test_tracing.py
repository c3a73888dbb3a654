"""One trace and one JSON log line per request, over the real wire: the session's app exports OTLP/HTTP to a
receiver in the test (benchmarks/_otlp_receiver.py); the span tree runs ingress (admission, dispatch) -> replica
-> vLLM's engine span."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import httpx
import pytest

from benchmarks._otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

ROOT = "POST /v1/chat/completions"
_TREE = {ROOT, "admission", "dispatch", "replica.generate", "llm_request"}


def _send(url: str, key: str, stream: bool, traceparent: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if traceparent:
        headers["traceparent"] = traceparent
    body = {"model": "surge-tiny", "messages": [{"role": "user", "content": "trace me"}], "max_tokens": 6,
            "stream": stream}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200
    response.read()
    return response


def _tree(otlp: OtlpReceiver, trace_id: str) -> dict[str, ReceivedSpan]:
    otlp.wait_for(lambda: {s.name for s in otlp.trace(trace_id)} >= _TREE, timeout_s=90)
    spans = otlp.trace(trace_id)
    assert len([s for s in spans if s.name == ROOT]) == 1, "one root span per request"
    return {s.name: s for s in spans}


def _assert_parentage(spans: dict[str, ReceivedSpan]) -> None:
    root = spans[ROOT]
    assert spans["admission"].parent_span_id == root.span_id
    assert spans["dispatch"].parent_span_id == root.span_id
    assert spans["replica.generate"].parent_span_id == spans["dispatch"].span_id
    assert spans["llm_request"].parent_span_id == spans["replica.generate"].span_id
    assert root.service == "surge" and spans["replica.generate"].service == "surge"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "non-streamed"])
def test_a_request_is_one_trace_under_the_clients_traceparent(
    surge_url: str, api_key: str, otlp: OtlpReceiver, stream: bool
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    response = _send(surge_url, api_key, stream, f"00-{trace_id}-{parent_id}-01")
    assert response.headers["x-trace-id"] == trace_id
    assert response.headers["x-request-id"]
    spans = _tree(otlp, trace_id)
    assert spans[ROOT].parent_span_id == parent_id
    assert spans[ROOT].attributes["surge.stream"] is stream
    assert spans["dispatch"].attributes["surge.pool"] == "main"
    _assert_parentage(spans)


def test_a_request_without_traceparent_starts_its_own_trace(surge_url: str, api_key: str, otlp: OtlpReceiver) -> None:
    response = _send(surge_url, api_key, True, None)
    trace_id = response.headers["x-trace-id"]
    spans = _tree(otlp, trace_id)
    assert spans[ROOT].parent_span_id == ""
    _assert_parentage(spans)


def _logged_line(request_id: str) -> dict[str, object] | None:
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    for path in logs.glob("worker-*.err"):
        for line in path.read_text(errors="replace").splitlines():
            if f'"request_id":"{request_id}"' in line:
                parsed: dict[str, object] = json.loads(line)
                return parsed
    return None


def test_the_ingress_logs_one_json_line_per_request(surge_url: str, api_key: str) -> None:
    request_id = f"log-{secrets.token_hex(8)}"
    body = {"model": "surge-tiny", "messages": [{"role": "user", "content": "a private prompt"}], "max_tokens": 4}
    response = httpx.post(f"{surge_url}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {api_key}", "X-Request-Id": request_id})
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 60
    while (line := _logged_line(request_id)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert line is not None, "no JSON log line for the request"
    assert (line["status"], line["model"], line["pool"], line["tier"]) == (200, "surge-tiny", "main", "enterprise")
    assert line["trace_id"] == response.headers["x-trace-id"] and line["completion_tokens"]
    text = json.dumps(line)
    assert "a private prompt" not in text and api_key not in text
