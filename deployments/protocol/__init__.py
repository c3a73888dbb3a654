"""The OpenAI wire protocol: request models that validate, response builders that shape."""

from deployments.protocol.chat import ChatCompletionRequest, ChatMessage
from deployments.protocol.common import SamplingFields, StreamOptions, Usage
from deployments.protocol.completions import CompletionRequest
from deployments.protocol.responses import ResponseShape, models_list, sse

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ResponseShape",
    "SamplingFields",
    "StreamOptions",
    "Usage",
    "models_list",
    "sse",
]
