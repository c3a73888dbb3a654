"""`POST /v1/chat/completions` request model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.engines.base import ChatPrompt
from deployments.errors import BadRequest
from deployments.limits import current_limits
from deployments.protocol.common import SamplingFields, reject_unsupported

__all__ = ["ChatCompletionRequest", "ChatMessage"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def plain(self) -> dict[str, Any]:
        """The message as the chat template expects it: text content only."""
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": text}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_messages(cls, data: Any) -> Any:
        # Before the messages are validated one by one: 10,000 of them cost nothing but this length check.
        max_messages = current_limits()[0].max_messages
        messages = data.get("messages") if isinstance(data, dict) else None
        if isinstance(messages, list) and len(messages) > max_messages:
            raise BadRequest(
                f"At most {max_messages} messages per request; got {len(messages)}.",
                param="messages", code="too_many_messages",
            )  # fmt: skip
        return data

    @field_validator("messages")
    @classmethod
    def _last_message_has_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if all(not m.plain()["content"] for m in messages):
            raise ValueError("messages must contain some text content")
        return messages

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt(self) -> ChatPrompt:
        reject_unsupported({"logprobs": self.logprobs, "top_logprobs": self.top_logprobs, "tools": self.tools})
        return ChatPrompt(messages=[m.plain() for m in self.messages])
