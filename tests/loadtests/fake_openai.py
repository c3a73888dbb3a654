"""A small local OpenAI-compatible chat server that streams several tokens per SSE message, at a known pace.

It implements the wire format the load-test users read (chat completions, `stream_options.include_usage` and
vLLM's `continuous_usage_stats`), so the users' timings can be checked against the pace it was told to keep.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from cluster.serving import free_port

__all__ = ["FakeOpenAI", "fake_openai"]


@dataclass
class FakeOpenAI:
    """Pace: first message after `ttft_s` with one token, then `tokens_per_chunk` tokens every `chunk_gap_s`."""

    ttft_s: float = 0.05
    chunk_gap_s: float = 0.04
    tokens_per_chunk: int = 4
    usage_per_chunk: bool = True  # honour continuous_usage_stats (a server without it: False)
    rejected_keys: frozenset[str] = frozenset()  # these keys get a 429
    unavailable_keys: frozenset[str] = frozenset()  # these keys get a 503
    retry_after: str | None = None  # the Retry-After of those refusals (None: no header)
    bodies: list[dict[str, object]] = field(default_factory=list)
    url: str = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
        if key in self.rejected_keys:
            error = {"message": "Rate limit exceeded", "type": "rate_limit_error", "param": None, "code": "rpm"}
            return web.json_response({"error": error}, status=429, headers=headers)
        if key in self.unavailable_keys:
            error = {"message": "Overloaded", "type": "service_unavailable_error", "param": None, "code": "overloaded"}
            return web.json_response({"error": error}, status=503, headers=headers)
        n, prompt = int(body.get("max_tokens") or 16), 11
        await asyncio.sleep(self.ttft_s)
        if not body.get("stream"):
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            message = {"role": "assistant", "content": "tok " * n}
            return web.json_response({"choices": [{"index": 0, "message": message}], "usage": usage})
        return await self._stream(request, body, n, prompt)

    async def _stream(self, request: web.Request, body: dict[str, object], n: int, prompt: int) -> web.StreamResponse:
        options = body.get("stream_options") or {}
        assert isinstance(options, dict)
        continuous = self.usage_per_chunk and options.get("continuous_usage_stats") and options.get("include_usage")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        sent = 0
        while sent < n:
            if sent:
                await asyncio.sleep(self.chunk_gap_s)
            k = 1 if sent == 0 else min(self.tokens_per_chunk, n - sent)
            sent += k
            event: dict[str, object] = {"choices": [{"index": 0, "delta": {"content": "tok " * k},
                                                     "finish_reason": "length" if sent == n else None}]}
            if continuous:
                event["usage"] = {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        if options.get("include_usage"):
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@contextmanager
def fake_openai(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """Serve `server` on 127.0.0.1 from a thread of its own until the block ends."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
