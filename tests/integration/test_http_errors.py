"""Bad input gets an OpenAI-style 4xx, never a 500; a client that leaves aborts its engine request."""

from __future__ import annotations

import json
import socket
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


# Limits checked before the JSON is parsed (deployments/limits.py, `ingress.limits`), and what gets past them.
MIB = 1 << 20


def chat_body(**fields: object) -> dict:
    return {"model": MODEL, "messages": USER, "max_tokens": 2, **fields}


def assert_healthy(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_a_20_mib_body_is_413_from_its_content_length(http: httpx.Client) -> None:
    body = json.dumps(chat_body(messages=[{"role": "user", "content": "a" * (20 * MIB)}])).encode()
    error = assert_openai_error(http.post("/v1/chat/completions", content=body,
                                          headers={"Content-Type": "application/json"}), 413)  # fmt: skip
    assert error["code"] == "request_too_large"
    assert_healthy(http)


def test_a_chunked_20_mib_body_is_413_while_it_arrives(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        yield b'{"model": "surge-tiny", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"a" * MIB
        yield b'"}]}'

    response = http.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert assert_openai_error(response, 413)["code"] == "request_too_large"
    assert_healthy(http)


def test_invalid_utf8_is_400(http: httpx.Client) -> None:
    body = b'{"model": "surge-tiny", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'
    assert_openai_error(http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}),
                        400)  # fmt: skip


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_body_that_is_not_json_is_415(http: httpx.Client, content_type: str) -> None:
    headers = {"Content-Type": content_type}
    response = http.post("/v1/chat/completions", content=json.dumps(chat_body()), headers=headers)
    assert assert_openai_error(response, 415)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("depth", [64, 100_000])
def test_deeply_nested_json_is_400(http: httpx.Client, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = f'{{"model": "surge-tiny", "messages": [{{"role": "user", "content": {nested}}}]}}'
    assert_openai_error(http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}),
                        400)  # fmt: skip
    assert_healthy(http)


def test_ten_thousand_messages_are_400_before_they_are_validated(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat_body(messages=USER * 10_000))
    assert assert_openai_error(response, 400, "messages")["code"] == "too_many_messages"


def test_a_huge_stop_list_is_400(http: httpx.Client) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json=chat_body(stop=["x"] * 10_000)), 400, "stop")


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [("max_tokens", 10**12, 413), ("max_tokens", 10**40, 413), ("n", 10**9, 400),
     ("logit_bias", {"50256": 1e9}, 400), ("logit_bias", {str(i): 1 for i in range(5000)}, 400),
     ("logit_bias", {"not-a-token": 1}, 400)],
)  # fmt: skip
def test_absurd_sampling_values_are_4xx(http: httpx.Client, field: str, value: object, status: int) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json=chat_body(**{field: value})), status)
    assert status == 413 or error["param"].startswith(field)


@pytest.mark.parametrize(
    "headers",
    [{f"X-Flood-{i}": "v" for i in range(500)}, {"X-Huge": "v" * (64 << 10)}],
    ids=["500-headers", "64KiB-header"],
)
def test_a_header_flood_is_refused_with_a_4xx(http: httpx.Client, headers: dict[str, str]) -> None:
    # HAProxy's own limits (101 headers, a 16 KiB buffer) answer first with its 400; the ingress's 431 is the
    # backstop behind Serve's standard proxy.
    response = http.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert_healthy(http)


def test_a_client_sending_its_body_slowly_gets_408_within_the_body_deadline(surge_url: str) -> None:
    from tests.integration.conftest import BODY_TIMEOUT_S

    url = httpx.URL(surge_url)
    with socket.create_connection((url.host, url.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\"")  # fmt: skip
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:  # the server answers by itself; the client sends nothing more
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        waited_s = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert waited_s >= BODY_TIMEOUT_S * 0.9


def test_the_server_is_healthy_after_the_bad_input(http: httpx.Client) -> None:
    assert_healthy(http)
