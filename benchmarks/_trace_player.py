"""Play a request schedule against an OpenAI endpoint from a process of its own, so the client's own CPU is not
counted in the serving cluster's latency (on 2 cores an in-process httpx client with dozens of streams takes a
visible share).

    python -m benchmarks._trace_player SPEC.json   → one JSON object on stdout

SPEC: {"url", "model", "requests": [[t_s, prompt_words, max_tokens], ...], "first_index"}. Each request is sent
at its `t_s` after the start (open loop), streamed, with `ignore_eos` and a unique first word (its index from
`first_index`, default 0: schedules played to the same model give theirs apart, or a request that repeats an
earlier one's prompt and parameters is answered by the response cache, all its tokens at once), so neither the
response cache nor vLLM's prefix cache shortens its prefill. A record per request: when it was sent, its TTFT
and latency, the tokens the usage chunk reports (prompt and completion) and the replica that served it
(`x-surge-replica`).
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp

__all__ = ["PlayRecord", "play", "play_schedule", "prompt_words"]

_SENTENCE = (
    "serving tokens through a cluster of replicas keeps the latency promise when the queue grows and the router "
    "sends each request to the engine with the warmest cache"
)
_WORDS = _SENTENCE.split(" ")


@dataclass
class PlayRecord:
    t_s: float  # scheduled offset
    sent_s: float = 0.0  # actual offset at send
    ttft_s: float | None = None
    latency_s: float = 0.0
    tokens: int = 0
    prompt_tokens: int | None = None
    replica: str | None = None
    error: str | None = None


def prompt_words(i: int, words: int) -> str:
    """Request `i`'s prompt: a unique first word, then `words - 1` shared words."""
    return f"r{i}x " + " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(max(0, words - 1)))


async def _read(response: aiohttp.ClientResponse, start: float, record: PlayRecord) -> None:
    async for raw in response.content:
        if not raw.startswith(b"data: ") or raw.startswith(b"data: [DONE]"):
            continue
        if b'"error"' in raw[:16]:
            record.error = raw[:200].decode(errors="replace")
            return
        now = time.perf_counter()
        # Decode only until the first token and the usage chunk: the client stays cheap beside the server.
        if record.ttft_s is None or b'"usage"' in raw:
            event = json.loads(raw[6:])
            if record.ttft_s is None and event.get("choices"):
                record.ttft_s = now - start
            if event.get("usage"):
                usage = event["usage"]
                record.tokens, record.prompt_tokens = int(usage["completion_tokens"]), int(usage["prompt_tokens"])


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any], record: PlayRecord,
               origin: float) -> None:  # fmt: skip
    await asyncio.sleep(max(0.0, record.t_s - (time.perf_counter() - origin)))
    start = time.perf_counter()
    record.sent_s = start - origin
    try:
        async with session.post(url, json=body) as response:
            record.replica = response.headers.get("x-surge-replica")
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            else:
                await _read(response, start, record)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        record.error = repr(exc)
    record.latency_s = time.perf_counter() - start


async def play(url: str, model: str, requests: Sequence[tuple[float, int, int]],
               first_index: int = 0) -> dict[str, Any]:  # fmt: skip
    """Send every (t_s, prompt_words, max_tokens) at its time; the records and the client's CPU share."""
    records = [PlayRecord(t_s) for t_s, _, _ in requests]
    bodies = [{"model": model, "stream": True, "max_tokens": out, "ignore_eos": True, "temperature": 0.0,
               "messages": [{"role": "user", "content": prompt_words(first_index + i, words)}],
               "stream_options": {"include_usage": True}}
              for i, (_, words, out) in enumerate(requests)]  # fmt: skip
    connector = aiohttp.TCPConnector(limit=0)
    cpu = _cpu_s()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        start_unix, origin = time.time(), time.perf_counter()
        await asyncio.gather(*(_one(session, f"{url}/v1/chat/completions", body, record, origin)
                               for body, record in zip(bodies, records, strict=True)))  # fmt: skip
        wall_s = time.perf_counter() - origin
    return {"start_unix_s": start_unix, "wall_s": wall_s, "client_cpu_cores": (_cpu_s() - cpu) / wall_s,
            "records": [asdict(r) for r in records]}  # fmt: skip


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def play_schedule(url: str, model: str, requests: Sequence[tuple[float, int, int]], spec_path: Path,
                  first_index: int = 0) -> dict[str, Any]:  # fmt: skip
    """Run `play` in a process of its own (the spec goes through `spec_path`) and return its report."""
    spec_path.write_text(json.dumps({"url": url, "model": model, "requests": [list(r) for r in requests],
                                     "first_index": first_index}))  # fmt: skip
    last = max((r[0] for r in requests), default=0.0)
    done = subprocess.run([sys.executable, "-m", "benchmarks._trace_player", str(spec_path)], capture_output=True,
                          text=True, check=False, timeout=last + 900)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"trace player failed ({done.returncode}): {done.stderr[-2000:]}")
    return cast(dict[str, Any], json.loads(done.stdout))


def main(argv: Sequence[str] | None = None) -> int:
    spec = json.loads(Path((sys.argv[1:] if argv is None else argv)[0]).read_text())
    requests = [(float(t), int(w), int(o)) for t, w, o in spec["requests"]]
    json.dump(asyncio.run(play(spec["url"], spec["model"], requests, int(spec.get("first_index", 0)))), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
