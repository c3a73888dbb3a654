"""A lean OpenAI load generator that runs in a process of its own, so the server (not the client) is measured.

    python -m benchmarks._loadgen '<LoadSpec as JSON>'   → one JSON object on stdout

One asyncio loop, aiohttp (its C HTTP parser), and SSE read as raw lines: only the first event and the usage
event are decoded as JSON. Each request gets a unique prefix, so no response cache can answer it, and asks for
`ignore_eos`, so every target does the same work. Closed loop (`concurrency` clients, each waiting for its last
answer) or open loop (Poisson arrivals at `rate_rps`, independent of the server's speed). The report carries the
generator's own CPU use, so a run can show that the client was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import aiohttp

__all__ = [
    "LoadSpec", "RequestRecord", "main", "payload", "prompt_text", "prompts", "run_load", "send_load", "send_load_raw",
    "summarize_load",
]  # fmt: skip

_SENTENCE = (
    "serving tokens through a cluster of replicas keeps the latency promise when the queue grows "
    "and the router sends each request to the engine with the warmest cache"
)
_TEXT = _SENTENCE.split()


@dataclass(frozen=True)
class LoadSpec:
    """What to send: where, how (chat or completion, streamed or not), how much and how often."""

    url: str
    model: str
    api: str = "chat"  # chat | completion
    stream: bool = True
    max_tokens: int = 32
    prompt_words: int = 40
    concurrency: int = 1
    requests: int = 0  # 0: run for duration_s
    duration_s: float = 10.0
    rate_rps: float = 0.0  # > 0: open loop, Poisson arrivals
    api_key: str | None = None
    seed: int = 0
    timeout_s: float = 120.0
    tag: str = "run"


@dataclass
class RequestRecord:
    """One request as the client saw it. `gaps_s`: the time between consecutive SSE messages."""

    status: int
    latency_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    messages: int = 0
    max_gap_s: float = 0.0
    error: str | None = None
    gaps_s: list[float] = field(default_factory=list)
    sent_unix_s: float = 0.0  # wall clock at send, to line the request up with its trace's spans


def prompts(count: int = 8) -> list[str]:
    """A fixed prompt set of varied lengths (about 20 to 75 words)."""
    return [f"Request {i}: " + " ".join(_TEXT[(i + j) % len(_TEXT)] for j in range(20 + 8 * i)) for i in range(count)]


def prompt_text(spec: LoadSpec, i: int) -> str:
    """Request `i`'s prompt: a unique prefix (no response cache can answer it), then shared words."""
    words = " ".join(_TEXT[(i + j) % len(_TEXT)] for j in range(spec.prompt_words))
    return f"[{spec.tag} {spec.seed} {i}] {words}"


def payload(spec: LoadSpec, i: int) -> dict[str, Any]:
    """The OpenAI request body of request `i`."""
    text = prompt_text(spec, i)
    body: dict[str, Any] = {"model": spec.model, "max_tokens": spec.max_tokens, "temperature": 0.0,
                            "ignore_eos": True, "stream": spec.stream}  # fmt: skip
    if spec.stream:
        body["stream_options"] = {"include_usage": True}
    if spec.api == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def _path(spec: LoadSpec) -> str:
    return "/v1/chat/completions" if spec.api == "chat" else "/v1/completions"


def _has_usage(raw: bytes) -> bool:
    """Whether an SSE line carries a usage object (not `"usage": null`), without decoding every line."""
    at = raw.find(b'"usage"')
    return at >= 0 and raw[at + 7 :].lstrip(b": ").startswith(b"{")


async def _read_stream(response: aiohttp.ClientResponse, start: float, record: RequestRecord) -> None:
    last = start
    async for raw in response.content:
        if not raw.startswith(b"data: "):
            continue
        now = time.perf_counter()
        if raw.startswith(b"data: [DONE]"):
            break
        if b'"error"' in raw[:16]:
            record.error = raw[:200].decode(errors="replace")
            return
        if record.ttft_s is None:
            record.ttft_s = now - start
        else:
            record.gaps_s.append(now - last)
        last = now
        record.messages += 1
        if _has_usage(raw):
            record.output_tokens = int(json.loads(raw[6:])["usage"]["completion_tokens"])
    record.max_gap_s = max(record.gaps_s, default=0.0)


async def _one(session: aiohttp.ClientSession, spec: LoadSpec, i: int) -> RequestRecord:
    start = time.perf_counter()
    record = RequestRecord(status=0, latency_s=0.0, sent_unix_s=time.time())
    try:
        async with session.post(spec.url + _path(spec), json=payload(spec, i)) as response:
            record.status = response.status
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            elif spec.stream:
                await _read_stream(response, start, record)
            else:
                body = await response.json()
                record.output_tokens = int(body["usage"]["completion_tokens"])
                record.ttft_s = time.perf_counter() - start
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        record.error = repr(exc)
    record.latency_s = time.perf_counter() - start
    return record


async def _closed_loop(session: aiohttp.ClientSession, spec: LoadSpec) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + spec.duration_s

    async def client() -> None:
        for i in counter:
            if (spec.requests and i >= spec.requests) or (not spec.requests and time.perf_counter() >= stop_at):
                return
            records.append(await _one(session, spec, i))

    await asyncio.gather(*(client() for _ in range(spec.concurrency)))
    return records


async def _open_loop(session: aiohttp.ClientSession, spec: LoadSpec) -> list[RequestRecord]:
    rng = random.Random(spec.seed)
    tasks = []
    next_at = time.perf_counter()
    count = spec.requests or max(1, round(spec.rate_rps * spec.duration_s))
    for i in range(count):
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(session, spec, i)))
        next_at += rng.expovariate(spec.rate_rps)
    return list(await asyncio.gather(*tasks))


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Send the load; returns the records, the wall time and the generator's CPU use."""
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    cpu_start = _cpu_s()
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        start = time.perf_counter()
        runner = _open_loop if spec.rate_rps > 0 else _closed_loop
        records = await runner(session, spec)
        wall_s = time.perf_counter() - start
    cpu_s = _cpu_s() - cpu_start
    return {"wall_s": wall_s, "client_cpu_cores": cpu_s / wall_s, "records": [asdict(r) for r in records]}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def send_load(spec: LoadSpec) -> dict[str, Any]:
    """Run the generator in a process of its own and return its summarized report."""
    return summarize_load(spec, send_load_raw(spec))


def send_load_raw(spec: LoadSpec) -> dict[str, Any]:
    """Run the generator in a process of its own and return its report, every request's record included."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._loadgen", json.dumps(asdict(spec))],
        capture_output=True, text=True, check=False, timeout=spec.duration_s + spec.timeout_s + 600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return cast(dict[str, Any], json.loads(done.stdout))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_load(spec: LoadSpec, report: dict[str, Any]) -> dict[str, Any]:
    """Percentiles over successful requests; TPOT is token-accurate ((e2e - TTFT) / (tokens - 1)), so a server
    that sends several tokens per message is not flattered; `gap` is the time between messages (stalls)."""
    records = [RequestRecord(**r) for r in report["records"]]
    ok = [r for r in records if r.error is None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.latency_s for r in ok]
    tpot = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.ttft_s and r.output_tokens > 1]
    gaps = [g for r in ok for g in r.gaps_s]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    wall_s = report["wall_s"]
    errors = [r.error for r in records if r.error is not None]
    return {
        "api": spec.api, "stream": spec.stream, "concurrency": spec.concurrency, "rate_rps": spec.rate_rps,
        "max_tokens": spec.max_tokens, "requests": len(records), "errors": len(errors),
        "first_error": errors[0] if errors else None, "statuses": statuses, "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s, "output_tok_s": sum(r.output_tokens for r in ok) / wall_s,
        "ttft_p50_s": _pct(ttft, 50), "ttft_p90_s": _pct(ttft, 90), "ttft_p99_s": _pct(ttft, 99),
        "latency_p50_s": _pct(e2e, 50), "latency_p90_s": _pct(e2e, 90), "latency_p99_s": _pct(e2e, 99),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p99_s": _pct(tpot, 99),
        "gap_p99_s": _pct(gaps, 99), "gap_max_s": max(gaps, default=None),
        "client_cpu_cores": report["client_cpu_cores"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = LoadSpec(**json.loads(args[0]))
    json.dump(asyncio.run(run_load(spec)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
