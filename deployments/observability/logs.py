"""One structured JSON line per request at the ingress; never a key, a tenant id or a prompt."""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from deployments.observability.record import RequestRecord

__all__ = ["RequestLog", "request_fields", "request_log"]

_default: RequestLog | None = None


class RequestLog:
    """Bare JSON lines, one per request. The event loop only enqueues the line's fields; a thread of its own
    encodes and writes them, flushing when it has caught up (a flush per line is a syscall per request). Not
    through `logging`: a log record per request (Ray's record factory, QueueHandler's format and copy) cost the
    ingress more than the encoding itself."""

    def __init__(self, stream: TextIO | None = None, on_line: Callable[[str], None] | None = None) -> None:
        # The process's real stderr (Ray's worker-*.err): Serve replaces sys.stderr with a logger whose filters
        # and format would rewrite the lines.
        self._stream = stream or sys.__stderr__ or sys.stderr
        self._on_line = on_line
        self._fields: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        threading.Thread(target=self._write_forever, name="surge-request-log", daemon=True).start()

    def write(self, fields: dict[str, Any]) -> None:
        self._fields.put(fields)

    def _write_forever(self) -> None:
        while True:
            line = json.dumps(self._fields.get(), separators=(",", ":"))
            if self._on_line is not None:
                self._on_line(line)
                continue
            self._stream.write(line + "\n")
            if self._fields.empty():
                self._stream.flush()


def request_log() -> RequestLog:
    """This process's request log (one writer thread per process)."""
    global _default
    if _default is None:
        _default = RequestLog()
    return _default


def _ms(start_s: float, at_s: float | None) -> float | None:
    return None if at_s is None else round((at_s - start_s) * 1000, 3)


def request_fields(record: RequestRecord, path: str, end_s: float) -> dict[str, Any]:
    """The log line's fields: identifiers, bounded labels, outcome and timings."""
    ok = record.status < 400
    return {
        "event": "request",
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "completion_id": record.completion_id,
        "path": path,
        "model": record.model,
        "pool": record.pool,
        "tier": record.tier,
        "priority": record.priority,
        "status": record.status,
        "refusal_reason": None if ok else record.error_code,
        "stream": record.streamed,
        "cache": None if record.cache_hit is None else ("hit" if record.cache_hit else "miss"),
        "fallback": record.fallback,
        "attempts": record.attempts,
        "ttft_ms": _ms(record.start_s, record.first_byte_s) if ok else None,
        "e2e_ms": _ms(record.start_s, end_s),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }


def log_request(log: RequestLog, record: RequestRecord, path: str, end_s: float) -> None:
    log.write(request_fields(record, path, end_s))
