"""`POST /v1/completions` request model."""

from __future__ import annotations

from pydantic import field_validator

from deployments.engines.base import Prompt, TextPrompt, TokenPrompt
from deployments.errors import BadRequest
from deployments.protocol.common import SamplingFields, reject_unsupported

__all__ = ["CompletionRequest"]


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt: str | list[int] | list[str]) -> str | list[int] | list[str]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be empty")
        return prompt

    def engine_prompt(self) -> Prompt:
        reject_unsupported({"echo": self.echo, "logprobs": self.logprobs, "suffix": self.suffix})
        if self.best_of not in (None, 1):
            raise BadRequest("only best_of=1 is supported", param="best_of", code="unsupported")
        if isinstance(self.prompt, str):
            return TextPrompt(self.prompt)
        if all(isinstance(p, str) for p in self.prompt):
            if len(self.prompt) != 1:
                raise BadRequest("one prompt per request is supported", param="prompt", code="unsupported")
            return TextPrompt(str(self.prompt[0]))
        return TokenPrompt([int(t) for t in self.prompt])
