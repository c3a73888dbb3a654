"""One structured JSON line per request at the ingress; never a key, a tenant id or a prompt."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from typing import Any

from deployments.observability.record import RequestRecord

__all__ = ["REQUEST_LOGGER", "request_fields", "request_logger"]

REQUEST_LOGGER = "surge.requests"


def request_logger() -> logging.Logger:
    """`surge.requests`, writing bare JSON lines to the process's stderr (Ray's worker log)."""
    logger = logging.getLogger(REQUEST_LOGGER)
    if not any(getattr(h, "_surge_json", False) for h in logger.handlers):
        # The event loop only enqueues the line; a thread writes it (stderr is a file or pipe: blocking I/O).
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        # The process's real stderr (Ray's worker-*.err): Serve replaces sys.stderr with a logger that its own
        # filters and format rewrite.
        writer = logging.StreamHandler(sys.__stderr__ or sys.stderr)
        writer.setFormatter(logging.Formatter("%(message)s"))
        handler = logging.handlers.QueueHandler(lines)
        handler._surge_json = True  # type: ignore[attr-defined]
        logging.handlers.QueueListener(lines, writer).start()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # one line, not one more in Serve's own format
    return logger


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


def log_request(logger: logging.Logger, record: RequestRecord, path: str, end_s: float) -> None:
    logger.info(json.dumps(request_fields(record, path, end_s), separators=(",", ":")))
