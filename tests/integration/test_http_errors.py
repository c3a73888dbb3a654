"""Bad input gets an OpenAI-style 4xx, never a 500; a client that leaves aborts its engine request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "surge-tiny"
USER = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def http(surge_url: str, api_key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=surge_url, timeout=60, headers=headers) as client:
        yield client


def test_invalid_json_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400)


def test_body_that_is_not_an_object_is_400(http: httpx.Client) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json=[1, 2]), 400)


def test_missing_messages_is_400(http: httpx.Client) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json={"model": MODEL}), 400, "messages")


def test_empty_messages_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert_openai_error(response, 400, "messages")


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", "hot"), ("max_tokens", "many"), ("messages", "hello"), ("stream", {"a": 1})],
)
def test_wrong_types_are_400(http: httpx.Client, field: str, value: object) -> None:
    body = {"model": MODEL, "messages": USER, field: value}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert error["param"].startswith(field)


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_non_positive_max_tokens_is_400(http: httpx.Client, max_tokens: int) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": max_tokens}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, "max_tokens")


def test_prompt_plus_max_tokens_beyond_context_is_413(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 5000}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 413)
    assert error["code"] == "context_length_exceeded"


def test_prompt_alone_beyond_context_is_413(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "order " * 3000, "max_tokens": 1}
    assert_openai_error(http.post("/v1/completions", json=body), 413)


def test_streamed_request_beyond_context_is_413_not_a_broken_stream(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 5000, "stream": True}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 413)


def test_unknown_model_is_404(http: httpx.Client) -> None:
    body = {"model": "gpt-17", "messages": USER}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 404, "model")
    assert error["code"] == "model_not_found"


def test_n_above_one_is_400(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": USER, "n": 2}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, "n")


def test_token_ids_outside_vocabulary_are_400(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": [1, 99999999], "max_tokens": 2}
    assert_openai_error(http.post("/v1/completions", json=body), 400, "prompt")


def test_openai_client_raises_typed_errors(surge_url: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{surge_url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=0)


def pool_stats(http: httpx.Client) -> dict:
    return http.get("/readyz").json()["pools"]["main"]


def test_client_disconnect_aborts_the_engine_request(http: httpx.Client) -> None:
    aborted_before = pool_stats(http)["aborted_requests"]
    body = {
        "model": MODEL, "messages": USER, "max_tokens": 900, "stream": True, "ignore_eos": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["object"] == "chat.completion.chunk"
    # The connection is closed mid-stream; the engine must drop the request, not finish 900 tokens.
    deadline = time.monotonic() + 30
    stats = pool_stats(http)
    while time.monotonic() < deadline and (stats["unfinished_requests"] or stats["aborted_requests"] == aborted_before):
        time.sleep(0.2)
        stats = pool_stats(http)
    assert stats["aborted_requests"] == aborted_before + 1
    assert stats["unfinished_requests"] == 0
