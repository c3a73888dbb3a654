"""OpenAI response bodies and stream chunks, built as plain dicts (hot path: one per token)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from deployments.engines.base import GenerationChunk

__all__ = ["ResponseShape", "models_list", "sse"]

Kind = Literal["chat", "completion"]


def _usage(chunk: GenerationChunk) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": chunk.prompt_tokens,
        "completion_tokens": chunk.completion_tokens,
        "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
    }
    if chunk.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": chunk.cached_tokens}
    return usage


@dataclass(frozen=True)
class ResponseShape:
    """Shapes one request's output as chat or text completion objects."""

    kind: Kind
    response_id: str
    model: str
    created: int
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage on every delta

    def _envelope(self, stream: bool) -> dict[str, Any]:
        obj = {
            ("chat", False): "chat.completion",
            ("chat", True): "chat.completion.chunk",
            ("completion", False): "text_completion",
            ("completion", True): "text_completion",
        }[(self.kind, stream)]
        return {"id": self.response_id, "object": obj, "created": self.created, "model": self.model}

    def full(self, final: GenerationChunk, text: str) -> dict[str, Any]:
        """The non-streamed response."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": final.finish_reason, "logprobs": None}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._envelope(False), "choices": [choice], "usage": _usage(final)}

    def delta(
        self, text: str, finish_reason: str | None = None, first: bool = False, usage: GenerationChunk | None = None
    ) -> dict[str, Any]:
        """One streamed chunk carrying new text (and, at the end, the finish reason); with continuous usage,
        the counts so far from `usage`."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.kind == "chat":
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
        else:
            choice["text"] = text
        if self.continuous_usage and usage is not None:
            return {**self._envelope(True), "choices": [choice], "usage": _usage(usage)}
        return {**self._envelope(True), "choices": [choice]}

    def usage_chunk(self, final: GenerationChunk) -> dict[str, Any]:
        """The last chunk when `stream_options.include_usage` is set: usage and no choices."""
        return {**self._envelope(True), "choices": [], "usage": _usage(final)}


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event line; strings are sent verbatim (`[DONE]`)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def models_list(entries: list[tuple[str, str]], created: int) -> dict[str, Any]:
    """`GET /v1/models`: (model id, the pool's root model id) pairs."""
    data = [
        {"id": mid, "object": "model", "created": created, "owned_by": "surge", "root": root, "parent": None}
        for mid, root in entries
    ]
    return {"object": "list", "data": data}
