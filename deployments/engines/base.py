"""The engine seam: what a model replica needs from an inference engine, and the data crossing it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChatPrompt",
    "Engine",
    "EngineStats",
    "FinishReason",
    "GenerationBatch",
    "GenerationChunk",
    "GenerationRequest",
    "Prompt",
    "SamplingSpec",
    "TextPrompt",
    "TokenPrompt",
]

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages, rendered with the model's chat template by the engine's tokenizer."""

    messages: list[dict[str, Any]]


@dataclass(frozen=True)
class TextPrompt:
    text: str


@dataclass(frozen=True)
class TokenPrompt:
    token_ids: list[int]


Prompt = ChatPrompt | TextPrompt | TokenPrompt


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters in engine-neutral form; `max_tokens=None` means up to the context limit."""

    max_tokens: int | None = None
    # When max_tokens is unset: generate up to this many (a tier's cap), else up to the context limit.
    max_tokens_cap: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, as the ingress hands it to a replica of a pool."""

    request_id: str
    prompt: Prompt
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    # 1 is the most urgent; vLLM's priority scheduler serves lower numbers first.
    priority: int = 3
    # Hash of the prompt's prefix, read by the request router for prefix-cache affinity.
    routing_key: str | None = None
    # W3C trace context of the ingress's dispatch span (("traceparent", ...),); empty when not traced.
    trace_context: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GenerationBatch:
    """Several requests in one call; the batch goes where most of its requests' prefixes are cached."""

    requests: list[GenerationRequest]

    @property
    def routing_key(self) -> str | None:
        keys = Counter(r.routing_key for r in self.requests if r.routing_key)
        return keys.most_common(1)[0][0] if keys else None


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of output: new text since the last chunk, with cumulative token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0
    # Set by the replica on the chunks it sends; tells operators (and tests) which replica served.
    replica_id: str = ""


@dataclass(frozen=True)
class EngineStats:
    """Load as the engine sees it; the autoscaler and router read these."""

    running_requests: int = 0
    waiting_requests: int = 0
    unfinished_requests: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0


class Engine(ABC):
    """An inference engine hosted by a model replica."""

    #: Longest prompt + completion in tokens.
    max_model_len: int

    @abstractmethod
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of the prompt exactly as the engine will see it."""

    @abstractmethod
    def generate(
        self, request_id: str, token_ids: list[int], sampling: SamplingSpec, priority: int
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the completion; the last chunk carries `finish_reason`."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a running request and free its resources; unknown ids are ignored."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """Current load, cheap enough to call on every request."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release the engine's processes and memory."""
