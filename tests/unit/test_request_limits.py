"""The ingress's request limits, checked before any JSON is parsed (deployments/limits.py), on a bare ASGI app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cluster.config import RequestLimitsConfig
from deployments.limits import BodyRejected, RequestLimitsMiddleware

LIMITS = RequestLimitsConfig(max_body_bytes=1024, body_timeout_s=0.2, max_headers=10, max_header_bytes=2048)


class BodyReader:
    """An app that reads the whole body like FastAPI does, and records what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(headers: list[tuple[bytes, bytes]], path: str = "/v1/chat/completions") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


async def call(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes], gap_s: float = 0.0,
               path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any] | None]:  # fmt: skip
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(gap_s)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await RequestLimitsMiddleware(app, lambda: (LIMITS, 4096))(scope(headers, path), receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, (json.loads(body) if status != 200 else None)


JSON = (b"content-type", b"application/json")


def assert_error(reply: tuple[int, dict[str, Any] | None], status: int, code: str) -> None:
    assert reply[0] == status
    assert reply[1] is not None
    assert set(reply[1]["error"]) == {"message", "type", "param", "code"}
    assert reply[1]["error"]["code"] == code


async def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    app = BodyReader()
    assert await call(app, [JSON], [b"{", b"}"]) == (200, None)
    assert app.bodies == [b"{}"]


async def test_content_length_over_the_limit_is_413_without_reading_the_body() -> None:
    app = BodyReader()
    reply = await call(app, [JSON, (b"content-length", b"2048")], [b"x" * 2048])
    assert_error(reply, 413, "request_too_large")
    assert app.bodies == []


async def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives() -> None:
    # Without Content-Length the app starts reading; the 600th byte past the limit raises from `receive`.
    with pytest.raises(BodyRejected) as caught:
        await call(BodyReader(), [JSON], [b"x" * 600, b"x" * 600, b"x" * 600])
    assert caught.value.error.status == 413


async def test_a_body_that_arrives_too_slowly_is_408() -> None:
    with pytest.raises(BodyRejected) as caught:
        await call(BodyReader(), [JSON], [b"{", b"}"], gap_s=0.5)
    assert caught.value.error.status == 408


async def test_uploads_have_their_own_bound() -> None:
    app = BodyReader()
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"3000")]
    assert (await call(app, headers, [b"x" * 3000], path="/v1/files"))[0] == 200


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/x-www-form-urlencoded", b"image/png"])
async def test_a_json_route_refuses_other_content_types_with_415(content_type: bytes) -> None:
    assert_error(await call(BodyReader(), [(b"content-type", content_type)], [b"{}"]), 415, "unsupported_media_type")


async def test_json_with_a_charset_and_a_missing_content_type_are_accepted() -> None:
    assert (await call(BodyReader(), [(b"content-type", b"application/json; charset=utf-8")], [b"{}"]))[0] == 200
    assert (await call(BodyReader(), [], [b"{}"]))[0] == 200


async def test_too_many_headers_are_431() -> None:
    headers = [(f"x-h{i}".encode(), b"v") for i in range(11)]
    assert_error(await call(BodyReader(), headers, [b"{}"]), 431, "headers_too_large")


async def test_oversized_headers_are_431() -> None:
    assert_error(await call(BodyReader(), [(b"x-big", b"v" * 3000)], [b"{}"]), 431, "headers_too_large")


async def test_a_malformed_content_length_is_400() -> None:
    assert_error(await call(BodyReader(), [(b"content-length", b"-5")], [b"{}"]), 400, "invalid_content_length")
