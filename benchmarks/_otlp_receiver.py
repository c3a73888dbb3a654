"""A small OTLP/HTTP traces receiver (tests, benchmarks): decodes what real exporters send with opentelemetry-proto."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OtlpReceiver", "ReceivedSpan", "SpanSink", "otlp_receiver", "span_sink"]


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    attributes: dict[str, object]
    start_ns: int = 0
    end_ns: int = 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class OtlpReceiver:
    """Spans received so far; `wait_for` polls until a predicate over them holds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attrs = {a.key: _value(a.value) for a in span.attributes}
                    received.append(ReceivedSpan(span.name, span.trace_id.hex(), span.span_id.hex(),
                                                 span.parent_span_id.hex(), resource.get("service.name", ""), attrs,
                                                 span.start_time_unix_nano, span.end_time_unix_nano))
        with self._lock:
            self.spans.extend(received)

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, done: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the expected spans did not arrive")
            time.sleep(0.2)


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serves POST /v1/traces on a free loopback port for the duration of the block."""
    holder: list[OtlpReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            holder[0].add(request)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(OtlpReceiver(f"http://127.0.0.1:{server.server_port}/v1/traces"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()


def _sink_main() -> None:
    """`python -m benchmarks._otlp_receiver`: a lean receiver in its own process (benchmarks): keeps the bodies
    without decoding them, prints its URL, and on end of stdin the number of spans received, then exits."""
    import sys

    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            bodies.append(gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{server.server_port}/v1/traces", flush=True)
    sys.stdin.read()
    server.shutdown()
    receiver = OtlpReceiver("")
    for body in list(bodies):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        receiver.add(request)
    print(len(receiver.spans), flush=True)


class SpanSink:
    """The URL of a receiver in its own process, and (after the block) how many spans reached it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.spans_received: int | None = None


@contextmanager
def span_sink() -> Iterator[SpanSink]:
    """A receiver in its own process, so that taking spans in costs the load generator nothing."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "benchmarks._otlp_receiver"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    sink = SpanSink(proc.stdout.readline().strip())
    try:
        yield sink
    finally:
        out, _ = proc.communicate("", timeout=120)
        sink.spans_received = int(out.strip() or 0)


if __name__ == "__main__":
    _sink_main()
