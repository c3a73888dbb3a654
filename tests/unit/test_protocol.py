import pytest
from pydantic import ValidationError

from deployments.engines.base import ChatPrompt, GenerationChunk, TextPrompt, TokenPrompt
from deployments.errors import BadRequest
from deployments.protocol import ChatCompletionRequest, CompletionRequest, ResponseShape, sse

USER = [{"role": "user", "content": "hi"}]


def test_chat_request_maps_to_sampling_spec() -> None:
    body = ChatCompletionRequest(
        model="m", messages=USER, temperature=0, top_p=0.5, max_tokens=7, stop="END", seed=3,
        presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2,
    )
    spec = body.sampling()
    assert (spec.max_tokens, spec.temperature, spec.top_p, spec.seed) == (7, 0, 0.5, 3)
    assert spec.stop == ("END",)
    assert (spec.presence_penalty, spec.frequency_penalty, spec.repetition_penalty) == (0.5, -0.5, 1.2)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    body = ChatCompletionRequest(model="m", messages=USER, max_tokens=5, max_completion_tokens=9)
    assert body.sampling().max_tokens == 9


def test_text_parts_are_joined_into_plain_content() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = ChatCompletionRequest(model="m", messages=[{"role": "developer", "content": parts}])
    assert body.prompt() == ChatPrompt([{"role": "system", "content": "ab"}])


@pytest.mark.parametrize(
    "field",
    [
        {"messages": []},
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"max_tokens": 0},
        {"max_tokens": -3},
        {"temperature": 3},
        {"temperature": "hot"},
        {"top_p": 0},
        {"n": 2},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stream_options": {"include_usage": True}},
        {"model": ""},
    ],
)
def test_invalid_chat_fields_are_rejected(field: dict) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest(**{"model": "m", "messages": USER, **field})


def test_unsupported_tools_are_refused() -> None:
    body = ChatCompletionRequest(model="m", messages=USER, tools=[{"type": "function"}])
    with pytest.raises(BadRequest, match="tools"):
        body.prompt()


def test_stream_options_with_stream_give_usage() -> None:
    body = ChatCompletionRequest(model="m", messages=USER, stream=True, stream_options={"include_usage": True})
    assert body.include_usage


def test_completion_prompt_forms() -> None:
    assert CompletionRequest(model="m", prompt="x").engine_prompt() == TextPrompt("x")
    assert CompletionRequest(model="m", prompt=["x"]).engine_prompt() == TextPrompt("x")
    assert CompletionRequest(model="m", prompt=[1, 2]).engine_prompt() == TokenPrompt([1, 2])


def test_completion_default_max_tokens_is_16() -> None:
    assert CompletionRequest(model="m", prompt="x").sampling().max_tokens == 16


def test_completion_rejects_several_prompts_and_echo() -> None:
    with pytest.raises(BadRequest, match="one prompt"):
        CompletionRequest(model="m", prompt=["a", "b"]).engine_prompt()
    with pytest.raises(BadRequest, match="echo"):
        CompletionRequest(model="m", prompt="a", echo=True).engine_prompt()


def test_full_chat_response_has_openai_shape() -> None:
    shape = ResponseShape("chat", "chatcmpl-1", "m", 1)
    body = shape.full(GenerationChunk("", 3, 2, "stop"), "hello")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_stream_chunks_and_usage_chunk() -> None:
    shape = ResponseShape("chat", "chatcmpl-1", "m", 1)
    assert shape.delta("a", first=True)["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert shape.delta("b", "length")["choices"][0]["finish_reason"] == "length"
    usage = shape.usage_chunk(GenerationChunk("", 1, 1, "stop"))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 2


def test_sse_framing() -> None:
    assert sse("[DONE]") == "data: [DONE]\n\n"
    assert sse({"a": 1}) == 'data: {"a":1}\n\n'
