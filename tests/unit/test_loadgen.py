"""The benchmarks' load generator: what it sends, and how it counts what a streaming server answers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from aiohttp import web

from benchmarks._loadgen import LoadSpec, payload, run_load, summarize_load

SPEC = LoadSpec(url="", model="m", concurrency=2, requests=6, max_tokens=8)


def test_every_request_has_a_unique_prompt_so_no_cache_answers() -> None:
    prompts = {payload(SPEC, i)["messages"][0]["content"] for i in range(50)}
    assert len(prompts) == 50


def test_requests_ask_for_the_same_work_on_every_server() -> None:
    body = payload(replace(SPEC, api="completion"), 0)
    assert body["ignore_eos"] is True and body["max_tokens"] == 8 and "prompt" in body


async def _streaming_server(tokens_per_message: int, messages: int) -> web.AppRunner:
    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(messages):
            await asyncio.sleep(0.01)
            delta = {"choices": [{"delta": {"content": "x" * tokens_per_message}}]}
            await response.write(f"data: {json.dumps(delta)}\n\n".encode())
        usage = {"choices": [], "usage": {"completion_tokens": tokens_per_message * messages}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_tpot_counts_tokens_not_messages() -> None:
    runner = await _streaming_server(tokens_per_message=4, messages=5)
    try:
        port = runner.addresses[0][1]
        spec = replace(SPEC, url=f"http://127.0.0.1:{port}")
        summary = summarize_load(spec, await run_load(spec))
    finally:
        await runner.cleanup()
    assert summary["errors"] == 0 and summary["requests"] == 6
    # 20 tokens over 4 gaps of ~10 ms: ~2 ms a token, not the ~10 ms between messages.
    assert summary["tpot_p50_s"] < summary["gap_p99_s"] / 2
    assert summary["output_tok_s"] > 0 and summary["client_cpu_cores"] >= 0
