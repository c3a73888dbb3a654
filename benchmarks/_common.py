"""Shared pieces of the surge benchmarks: a closed-loop streaming load generator, percentile summaries,
the results file and the one-line verdict every benchmark ends with.

Convention: `python -m benchmarks.NAME [--quick]` writes `benchmarks/results/NAME.json` and prints as its
last line `NAME: <metric> ratio=<x> goal<op><y>`, the ratio taken against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import httpx

from benchmarks._machine import cpu_usage, machine_info

__all__ = [
    "RESULTS_DIR",
    "Answer",
    "LoadResult",
    "RequestResult",
    "RunClock",
    "Sender",
    "cpu_usage",
    "final_line",
    "fire",
    "format_table",
    "goal_met",
    "http_client",
    "http_sender",
    "machine_info",
    "p50_p99",
    "percentile",
    "post_completion",
    "quick_parser",
    "quiet_logs",
    "run_closed_loop",
    "run_part",
    "stream_completion",
    "summarize",
    "utc_now",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GoalOp = Literal["<=", ">=", "<", ">"]


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it; `ttft_s` is None when no token arrived. `replica` (surge's
    X-Surge-Replica header), `prompt_tokens` and `cached_tokens` (usage chunk) are None when not sent."""

    ttft_s: float | None
    latency_s: float
    output_tokens: int
    error: str | None = None
    replica: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


@dataclass(frozen=True)
class LoadResult:
    """All requests of one closed-loop run and its wall time."""

    concurrency: int
    wall_s: float
    requests: list[RequestResult]


# A sender issues request number `i` and reports it; it must not raise for request-level failures.
Sender = Callable[[int], Awaitable[RequestResult]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _maybe_percentile(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


_UNIT_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6}


def p50_p99(seconds: Sequence[float], unit: Literal["s", "ms", "us"]) -> dict[str, float | None]:
    """`{"p50_<unit>": …, "p99_<unit>": …}` of durations given in seconds; None for no samples."""
    scale = _UNIT_PER_SECOND[unit]
    return {f"p{q}_{unit}": None if not seconds else percentile(seconds, q) * scale for q in (50, 99)}


def summarize(load: LoadResult) -> dict[str, Any]:
    """Latency percentiles over successful requests; rates over the run's wall time."""
    ok = [r for r in load.requests if r.error is None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    latencies = [r.latency_s for r in ok]
    tokens = sum(r.output_tokens for r in ok)
    wall_s = load.wall_s if load.wall_s > 0 else math.nan
    errors = [r.error for r in load.requests if r.error is not None]
    return {
        "concurrency": load.concurrency,
        "requests": len(load.requests),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": load.wall_s,
        "requests_per_s": len(ok) / wall_s,
        "output_tok_s": tokens / wall_s,
        "output_tokens_mean": tokens / len(ok) if ok else None,
        "ttft_p50_s": _maybe_percentile(ttfts, 50),
        "ttft_p99_s": _maybe_percentile(ttfts, 99),
        "latency_p50_s": _maybe_percentile(latencies, 50),
        "latency_p99_s": _maybe_percentile(latencies, 99),
    }


async def run_closed_loop(send: Sender, num_requests: int, concurrency: int) -> LoadResult:
    """`concurrency` clients issue `num_requests` requests in total, each waiting for its last to finish."""
    indices = iter(range(num_requests))
    results: list[RequestResult] = []

    async def client() -> None:
        for i in indices:  # shared iterator: each index is taken by exactly one client
            try:
                results.append(await send(i))
            except Exception as exc:  # a broken sender must not end the whole run
                results.append(RequestResult(None, 0.0, 0, error=repr(exc)))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(max(1, min(concurrency, num_requests)))))
    return LoadResult(concurrency, time.perf_counter() - start, results)


async def stream_completion(client: httpx.AsyncClient, url: str, payload: Mapping[str, Any]) -> RequestResult:
    """POST a streamed OpenAI request and time it; TTFT is the first event that carries a choice."""
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")[:200]
                error = f"HTTP {response.status_code}: {body}"
                return RequestResult(None, time.perf_counter() - start, 0, error)
            result = await _read_events(response, start)
            return dataclasses.replace(result, replica=response.headers.get("x-surge-replica"))
    except httpx.HTTPError as exc:
        return RequestResult(None, time.perf_counter() - start, 0, repr(exc))


async def _read_events(response: httpx.Response, start: float) -> RequestResult:
    """Consume an SSE body; output tokens from the usage chunk, else one per event with a choice."""
    ttft_s: float | None = None
    events = 0
    usage: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            return RequestResult(ttft_s, time.perf_counter() - start, events, f"stream error: {event}")
        if event.get("choices"):
            events += 1
            ttft_s = ttft_s if ttft_s is not None else time.perf_counter() - start
        if event.get("usage"):
            usage = event["usage"]
    tokens = int(usage["completion_tokens"]) if "completion_tokens" in usage else events
    prompt_tokens = usage.get("prompt_tokens")
    # Servers that report no cached tokens leave prompt_tokens_details out; with a usage chunk that is 0.
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) if usage else None
    return RequestResult(ttft_s, time.perf_counter() - start, tokens, None, None, prompt_tokens, cached)


async def post_completion(client: httpx.AsyncClient, url: str, payload: Mapping[str, Any]) -> RequestResult:
    """POST a non-streamed OpenAI request and time it; output tokens from its usage, no TTFT."""
    start = time.perf_counter()
    try:
        response = await client.post(url, json=payload)
    except httpx.HTTPError as exc:
        return RequestResult(None, time.perf_counter() - start, 0, repr(exc))
    latency_s = time.perf_counter() - start
    if response.status_code != 200:
        return RequestResult(None, latency_s, 0, f"HTTP {response.status_code}: {response.text[:200]}")
    usage = response.json().get("usage") or {}
    return RequestResult(None, latency_s, int(usage.get("completion_tokens", 0)))


def http_sender(
    client: httpx.AsyncClient, url: str, payloads: Sequence[Mapping[str, Any]], *, stream: bool = True
) -> Sender:
    """A sender that posts `payloads[i % len(payloads)]` to `url`, streamed or as one JSON answer."""
    post = stream_completion if stream else post_completion

    async def send(i: int) -> RequestResult:
        return await post(client, url, payloads[i % len(payloads)])

    return send


def http_client(connections: int, api_key: str | None = None, timeout_s: float = 120.0) -> httpx.AsyncClient:
    """A client for `connections` concurrent requests, with `Authorization: Bearer <api_key>` if given."""
    limits = httpx.Limits(max_connections=connections + 8, max_keepalive_connections=connections + 8)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, headers=headers)


@dataclass(frozen=True)
class Answer:
    """One request of `fire`: HTTP status (0 when no answer came), latency, whether it carried Retry-After."""

    status: int
    latency_s: float
    retry_after: bool = False


async def fire(
    url: str,
    count: int,
    *,
    concurrent: bool,
    payloads: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> tuple[list[Answer], float]:
    """`count` requests all at once (a burst) or one after another, POSTing `payloads[i % len]` (GET without
    payloads); returns the answers and the wall time. aiohttp, not httpx: httpx's connection pool takes seconds
    to issue a few hundred concurrent requests (320 GETs to a bare uvicorn: httpx 2.5-5 s, aiohttp 0.1-0.2 s)."""
    connector = aiohttp.TCPConnector(limit=count + 8 if concurrent else 1)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def one(i: int) -> Answer:
            start = time.perf_counter()
            try:
                method, body = ("POST", payloads[i % len(payloads)]) if payloads else ("GET", None)
                async with session.request(method, url, json=body) as response:
                    await response.read()
                    return Answer(response.status, time.perf_counter() - start, "Retry-After" in response.headers)
            except (aiohttp.ClientError, TimeoutError):
                return Answer(0, time.perf_counter() - start)

        start = time.perf_counter()
        if concurrent:
            answers = list(await asyncio.gather(*(one(i) for i in range(count))))
        else:
            answers = [await one(i) for i in range(count)]
        return answers, time.perf_counter() - start


def run_part(benchmark: str, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part of a benchmark, timed, its failure recorded in the result instead of ending the run."""
    print(f"[{benchmark}] {name}: starting (loadavg {os.getloadavg()[0]:.2f})", flush=True)
    record: dict[str, Any] = {"loadavg_1m_before": os.getloadavg()[0], "started_at": utc_now()}
    started = time.perf_counter()
    try:
        record |= run()
    except Exception as exc:
        record["error"] = "".join(traceback.format_exception(exc, limit=6))
        print(f"[{benchmark}] {name} FAILED: {exc!r}", file=sys.stderr, flush=True)
    record["wall_s"] = time.perf_counter() - started
    record["loadavg_1m_after"] = os.getloadavg()[0]
    print(f"[{benchmark}] {name}: done in {record['wall_s']:.0f} s", flush=True)
    return record


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def quick_parser(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first line and `--quick`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


@dataclass(frozen=True)
class RunClock:
    """When and on what machine a benchmark run started (taken when it is made); `header()` opens its results."""

    name: str
    quick: bool
    started_at: str = field(default_factory=lambda: utc_now())
    started: float = field(default_factory=time.perf_counter)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def header(self) -> dict[str, Any]:
        return {
            "benchmark": self.name, "mode": "quick" if self.quick else "full", "started_at": self.started_at,
            "finished_at": utc_now(), "duration_s": time.perf_counter() - self.started, "machine": self.machine,
        }  # fmt: skip


def write_results(name: str, data: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write `directory/NAME.json` (pretty, NaN as null) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")
    return path


def _finite(value: Any) -> Any:
    # JSON has no NaN; a failed target's ratio is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def goal_met(ratio: float, op: GoalOp, goal: float) -> bool:
    """Whether `ratio <op> goal` holds; NaN (no measurement) never meets a goal."""
    checks = {"<=": ratio <= goal, ">=": ratio >= goal, "<": ratio < goal, ">": ratio > goal}
    return math.isfinite(ratio) and checks[op]


def final_line(name: str, metric: str, ratio: float, op: GoalOp, goal: float) -> str:
    """The verdict line: `NAME: <metric> ratio=<x> goal<op><y>`."""
    shown = f"{ratio:.3f}" if math.isfinite(ratio) else "nan"
    return f"{name}: {metric} ratio={shown} goal{op}{goal}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned; None shows as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(padded))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def quiet_logs() -> None:
    """Keep Ray's and vLLM's INFO chatter out of a benchmark's report."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # the engine's own processes
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("ray", "ray.serve", "vllm", "surge", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
