"""Batch API input and output lines, and the OpenAI objects (file, batch), as pure functions.

Input lines are OpenAI's: `{"custom_id", "method": "POST", "url", "body"}`. Output and error lines are
`{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deployments.errors import SurgeError

__all__ = [
    "ENDPOINTS",
    "BatchCounts",
    "FileTooLarge",
    "InputLine",
    "NotFound",
    "error_line",
    "parse_input",
    "response_line",
]

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class NotFound(SurgeError):
    """A file or batch that does not exist for this tenant (another tenant's look the same)."""

    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class FileTooLarge(SurgeError):
    status = 413
    type = "invalid_request_error"
    default_code = "file_too_large"


class InvalidFile(SurgeError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_file"


@dataclass(frozen=True)
class InputLine:
    """One request of a batch; `line` counts from 1, as editors and error messages do."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class BatchCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0

    def as_json(self) -> dict[str, int]:
        return {"total": self.total, "completed": self.completed, "failed": self.failed}


def parse_input(data: bytes, max_lines: int) -> list[InputLine]:
    """Every line of a batch input file, or a 400 naming the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"the file is not UTF-8 (byte {exc.start})", param="file") from None
    lines: list[InputLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            raise InvalidFile(f"line {number}: a batch file holds at most {max_lines} requests", param="file")
        line = _parse_line(number, raw)
        if line.custom_id in seen:
            raise InvalidFile(f"line {number}: custom_id {line.custom_id!r} is not unique in the file", param="file")
        seen.add(line.custom_id)
        lines.append(line)
    if not lines:
        raise InvalidFile("the file holds no requests", param="file")
    return lines


def _parse_line(number: int, raw: str) -> InputLine:
    def bad(why: str) -> InvalidFile:
        return InvalidFile(f"line {number}: {why}", param="file", code="invalid_jsonl")

    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict):
        raise bad("each line must be a JSON object")
    custom_id, method, url, body = (item.get(k) for k in ("custom_id", "method", "url", "body"))
    if not isinstance(custom_id, str) or not custom_id:
        raise bad("custom_id must be a non-empty string")
    if method != "POST":
        raise bad("method must be 'POST'")
    if url not in ENDPOINTS:
        raise bad(f"url must be one of {', '.join(ENDPOINTS)}")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise bad("body must be an object naming a model")
    extra = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if extra:
        raise bad(f"unknown field(s) {', '.join(extra)}")
    return InputLine(number, custom_id, str(url), body)


def response_line(batch_id: str, line: InputLine, status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """A line that got an answer (a completion, or an error from the endpoint) in OpenAI's output format."""
    request_id = body.get("id") if status_code == 200 else None
    return {
        "id": _line_id(batch_id, line.line),
        "custom_id": line.custom_id,
        "response": {"status_code": status_code, "request_id": request_id or _line_id(batch_id, line.line),
                     "body": body},
        "error": None,
    }  # fmt: skip


def error_line(batch_id: str, line: InputLine, code: str, message: str) -> dict[str, Any]:
    """A line that never got an answer (the batch expired or was cancelled first)."""
    return {
        "id": _line_id(batch_id, line.line),
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _line_id(batch_id: str, line: int) -> str:
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line}"
