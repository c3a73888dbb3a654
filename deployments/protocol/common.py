"""Request fields shared by the chat and completions APIs, and the usage object."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.engines.base import SamplingSpec
from deployments.errors import BadRequest

__all__ = ["SamplingFields", "StreamOptions", "Usage"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False
    # vLLM extra: usage (cumulative completion_tokens) on every chunk, so clients count tokens per chunk.
    continuous_usage_stats: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SamplingFields(BaseModel):
    """OpenAI sampling parameters plus vLLM's `repetition_penalty` extra; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    # vLLM extra: generate exactly max_tokens (load tests and benchmarks need fixed lengths).
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI's bounds (token id -> bias in [-100, 100]); validated, then refused: the engine seam has no biases.
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    # surge extra: 1 (most urgent) .. 5, kept within the caller's tier bounds.
    priority: int | None = Field(None, ge=1, le=5)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_bounds(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.isdigit() or not -100.0 <= value <= 100.0:
                raise ValueError("keys must be token ids and biases between -100 and 100")
        if bias:
            raise ValueError("logit_bias is not supported by this server")
        return bias

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk; like vLLM, only together with `include_usage`."""
        return self.include_usage and bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling(self) -> SamplingSpec:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingSpec(
            max_tokens=self.requested_max_tokens(),
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(s for s in stop if s),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            ignore_eos=self.ignore_eos,
        )


def reject_unsupported(fields: dict[str, Any]) -> None:
    """Refuse OpenAI features surge does not serve instead of silently ignoring them."""
    for name, value in fields.items():
        if value not in (None, False, 0, [], {}):
            raise BadRequest(f"'{name}' is not supported by this server", param=name, code="unsupported")
