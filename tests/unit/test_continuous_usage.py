"""vLLM's `stream_options.continuous_usage_stats`: cumulative usage on every streamed chunk."""

from __future__ import annotations

from deployments.engines.base import GenerationChunk
from deployments.protocol import ChatCompletionRequest, ResponseShape

USER = [{"role": "user", "content": "hi"}]


def _body(**options: bool) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=USER, stream=True, stream_options=options)


def test_continuous_usage_needs_include_usage_as_in_vllm() -> None:
    assert not _body(continuous_usage_stats=True).continuous_usage
    assert _body(include_usage=True, continuous_usage_stats=True).continuous_usage


def test_include_usage_alone_is_not_continuous() -> None:
    assert not _body(include_usage=True).continuous_usage


def test_a_continuous_delta_carries_the_cumulative_completion_tokens() -> None:
    shape = ResponseShape("chat", "id", "m", 0, continuous_usage=True)
    delta = shape.delta("abcd", usage=GenerationChunk("abcd", prompt_tokens=7, completion_tokens=9))
    assert delta["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    assert delta["choices"][0]["delta"] == {"content": "abcd"}


def test_a_plain_delta_has_no_usage() -> None:
    shape = ResponseShape("completion", "id", "m", 0)
    delta = shape.delta("abcd", usage=GenerationChunk("abcd", prompt_tokens=7, completion_tokens=9))
    assert "usage" not in delta
