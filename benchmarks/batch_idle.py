"""Batch lines on idle capacity: does a running batch hurt interactive latency, and does it use the troughs?

    python -m benchmarks.batch_idle [--quick]

One app (the tiny model, one replica, admission on). A steady open-loop interactive load (streamed chats at a
fixed rate) runs in two windows with an idle gap between them, in four blocks A B B A: A without any batch, B
with a batch of a few hundred lines submitted through `/v1/files` + `/v1/batches` just before (the machine's
background load drifts; ABBA lets each side see both ends of the run). In each B block the batch first runs
alone on the idle pool for a while: its lines per second there are the pool's idle capacity for batch work at
that time (measured in the block itself, so load from other processes on the host weighs on both sides of the
share alike). Headlines: interactive TTFT p99 of the B windows over the A windows (goal <= 1.1), and the batch
lines finished in the B gaps over what the block's idle rate would finish in them (goal >= 0.7). Each part
records the cores other processes kept busy while it ran, and the first request of each window (the one that
meets the batch's lines in the engine) is reported on its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import (
    RequestResult,
    RunClock,
    cpu_usage,
    final_line,
    goal_met,
    http_client,
    p50_p99,
    quick_parser,
    quiet_logs,
    run_part,
    stream_completion,
    write_results,
)
from cluster.config import SurgeConfig, load_config
from cluster.serving import free_port, isolate_serve_ports, wait_ready

__all__ = ["FULL", "QUICK", "Plan", "main"]

NAME = "batch_idle"
TTFT_GOAL = 1.1
SHARE_GOAL = 0.7


@dataclass(frozen=True)
class Plan:
    rate_rps: float  # interactive arrivals, evenly spaced
    window_s: float  # each of the two interactive windows
    gap_s: float  # the idle stretch between them
    calibration_s: float  # the batch alone on the idle pool
    batch_lines: int
    batch_max_tokens: int = 64
    interactive_max_tokens: int = 32


# Enough lines that the batch outlasts its calibration and the gap even on a quiet machine (~10 lines/s).
# The gap loses resume_after_s plus one line's latency before lines finish in it: 12 s keeps that a small part.
QUICK = Plan(rate_rps=4.0, window_s=10.0, gap_s=12.0, calibration_s=8.0, batch_lines=600)
FULL = Plan(rate_rps=4.0, window_s=30.0, gap_s=20.0, calibration_s=15.0, batch_lines=1500)


def _config(workdir: Path) -> SurgeConfig:
    config = load_config()
    admission = config.admission.model_copy(update={"key_store_dsn": f"sqlite:///{workdir / 'keys.db'}"})
    batch = config.batch.model_copy(update={"files_dir": str(workdir / "files")})
    server = config.server.model_copy(update={"port": free_port()})
    return config.model_copy(update={"admission": admission, "batch": batch, "server": server})


def _keys(dsn: str) -> tuple[str, str]:
    from deployments.admission import open_store

    async def create() -> tuple[str, str]:
        async with await open_store(dsn) as store:
            return (await store.create_key("interactive", "enterprise"))[1], (await store.create_key("batch", "pro"))[1]

    return asyncio.run(create())


def _batch_file(model: str, plan: Plan, tag: str) -> bytes:
    lines = [{"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "max_tokens": plan.batch_max_tokens, "temperature": 0.7,
                       "messages": [{"role": "user", "content": f"summarise record {tag} {i}"}]}}
             for i in range(plan.batch_lines)]  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


class _Batches:
    """The official client on the app's Batch API."""

    def __init__(self, url: str, key: str) -> None:
        import openai

        self._client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2)

    def submit(self, data: bytes) -> str:
        file = self._client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
        batch = self._client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")  # fmt: skip
        return batch.id

    def completed(self, batch_id: str) -> int:
        return self._client.batches.retrieve(batch_id).request_counts.completed  # type: ignore[union-attr]

    def status(self, batch_id: str) -> str:
        return self._client.batches.retrieve(batch_id).status

    def cancel(self, batch_id: str) -> None:
        self._client.batches.cancel(batch_id)
        while self.status(batch_id) != "cancelled":
            time.sleep(0.2)

    def wait_started(self, batch_id: str) -> None:
        while self.completed(batch_id) < 1:
            time.sleep(0.2)


async def _window(client: httpx.AsyncClient, url: str, model: str, plan: Plan, tag: str) -> list[RequestResult]:
    """Interactive requests at plan.rate_rps for plan.window_s, open loop."""
    tasks: list[asyncio.Task[RequestResult]] = []
    start = time.perf_counter()
    for i in range(int(plan.window_s * plan.rate_rps)):
        await asyncio.sleep(max(0.0, start + i / plan.rate_rps - time.perf_counter()))
        payload = {"model": model, "stream": True, "max_tokens": plan.interactive_max_tokens,
                   "messages": [{"role": "user", "content": f"interactive {tag} question {i}"}]}  # fmt: skip
        tasks.append(asyncio.create_task(stream_completion(client, f"{url}/v1/chat/completions", payload)))
    return list(await asyncio.gather(*tasks))


def _load_with_gap(url: str, key: str, model: str, plan: Plan, tag: str, at_gap: Any) -> dict[str, Any]:
    """Window, gap (calling at_gap(start/end) around it), window; the windows' TTFTs."""

    async def run() -> tuple[list[RequestResult], list[RequestResult]]:
        async with http_client(64, key) as client:
            first = await _window(client, url, model, plan, f"{tag}-a")
            at_gap("start")
            await asyncio.sleep(plan.gap_s)
            at_gap("end")
            return first, await _window(client, url, model, plan, f"{tag}-b")

    windows = asyncio.run(run())
    results = [r for window in windows for r in window]
    ttfts = [r.ttft_s for r in results if r.ttft_s is not None]
    statuses = [r.error.split(":")[0] for r in results if r.error]
    return {"requests": len(results), "errors": len(statuses), "error_kinds": sorted(set(statuses)),
            "ttft": p50_p99(ttfts, "ms"), "ttft_p99_s": _p99(ttfts), "ttfts_s": ttfts,
            "window_first_ttfts_s": [w[0].ttft_s for w in windows if w]}  # fmt: skip


def _p99(values: list[float]) -> float:
    from benchmarks._common import percentile

    return percentile(values, 99) if values else math.nan


def _idle_rate(batches: _Batches, batch_id: str, plan: Plan) -> dict[str, Any]:
    """The batch's lines per second alone on the idle pool, over plan.calibration_s."""
    before, start = batches.completed(batch_id), time.perf_counter()
    time.sleep(plan.calibration_s)
    done, elapsed = batches.completed(batch_id) - before, time.perf_counter() - start
    return {"lines": done, "seconds": elapsed, "lines_per_s": done / elapsed}


def _baseline(url: str, keys: tuple[str, str], model: str, plan: Plan, name: str) -> dict[str, Any]:
    with cpu_usage() as cpu:
        record = _load_with_gap(url, keys[0], model, plan, name, lambda _: None)
    return {**record, "cpu": cpu}


def _mixed(url: str, keys: tuple[str, str], model: str, plan: Plan, name: str) -> dict[str, Any]:
    batches = _Batches(url, keys[1])
    batch_id = batches.submit(_batch_file(model, plan, name))
    batches.wait_started(batch_id)
    with cpu_usage() as calibration_cpu:
        idle = _idle_rate(batches, batch_id, plan)
    marks: dict[str, tuple[float, int]] = {}

    def at_gap(which: str) -> None:
        marks[which] = (time.perf_counter(), batches.completed(batch_id))

    with cpu_usage() as cpu:
        record = _load_with_gap(url, keys[0], model, plan, name, at_gap)
    (t0, n0), (t1, n1) = marks["start"], marks["end"]
    rate = idle["lines_per_s"]
    record["idle"] = {**idle, "cpu": calibration_cpu}
    record["gap"] = {"seconds": t1 - t0, "lines": n1 - n0, "idle_rate_lines_per_s": rate,
                     "share": (n1 - n0) / ((t1 - t0) * rate) if rate > 0 else math.nan}  # fmt: skip
    record["cpu"] = cpu
    # "completed" here would mean the batch ran out of lines in the gap: the share would understate it.
    record["batch_status_after"] = batches.status(batch_id)
    if record["batch_status_after"] != "completed":  # a completed batch cannot be cancelled (400)
        batches.cancel(batch_id)
    return record


def _measure(plan: Plan) -> dict[str, Any]:
    from cluster.serving import serving

    with tempfile.TemporaryDirectory(prefix="surge-batch-idle-") as tmp:
        config = _config(Path(tmp))
        keys = _keys(config.admission.key_store_dsn)
        model = config.pools[0].model_id
        with serving(config) as url:
            wait_ready(url, timeout_s=300)
            runs: dict[str, Any] = {}
            # A B B A: the machine's background load drifts; each side sees both ends of the run.
            for name in ("baseline_1", "batch_1", "batch_2", "baseline_2"):
                part = _baseline if name.startswith("baseline") else _mixed
                runs[name] = run_part(NAME, name, partial(part, url, keys, model, plan, name))
    return runs


def _pooled(runs: dict[str, Any], prefix: str) -> dict[str, Any]:
    parts = [run for name, run in runs.items() if name.startswith(prefix)]
    ttfts = [t for run in parts for t in run.get("ttfts_s", [])]
    firsts = [t for run in parts for t in run.get("window_first_ttfts_s", []) if t is not None]
    gaps = [run["gap"] for run in parts if "gap" in run]
    p99s = [run["ttft_p99_s"] for run in parts if "ttft_p99_s" in run]
    pooled: dict[str, Any] = {
        "ttft": p50_p99(ttfts, "ms"), "ttft_p99_s": _p99(ttfts), "errors": sum(run.get("errors", 0) for run in parts),
        "window_first_ttft_ms": [t * 1000 for t in firsts],
        # The spread of the blocks' own p99s: how far apart two runs of the same condition came out.
        "block_ttft_p99_ms": [p * 1000 for p in p99s],
        "other_cores": [run["cpu"]["other_cores"] for run in parts if "cpu" in run],
    }  # fmt: skip
    if gaps:
        seconds, lines = sum(g["seconds"] for g in gaps), sum(g["lines"] for g in gaps)
        idle_lines = sum(g["seconds"] * g["idle_rate_lines_per_s"] for g in gaps)
        pooled["gap"] = {"seconds": seconds, "lines": lines, "idle_lines": idle_lines,
                         "share": lines / idle_lines if idle_lines else math.nan}  # fmt: skip
    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = quick_parser(__doc__, "shorter windows, under 3 minutes in total")
    args = parser.parse_args(argv)
    quiet_logs()
    isolate_serve_ports()
    plan = QUICK if args.quick else FULL
    clock = RunClock(NAME, args.quick)
    runs = _measure(plan)
    base, mixed = _pooled(runs, "baseline"), _pooled(runs, "batch")
    ttft_ratio = mixed.get("ttft_p99_s", math.nan) / base.get("ttft_p99_s", math.nan)
    share = mixed.get("gap", {}).get("share", math.nan)
    data = {
        **clock.header(),
        "config": {"plan": asdict(plan), "runner": load_config().batch.runner.model_dump()},
        "runs": runs, "pooled": {"baseline": base, "with_batch": mixed},
        "ratios": {
            "ttft_p99_with_batch_over_without": {"ratio": ttft_ratio, "goal": f"<={TTFT_GOAL}",
                                                 "met": goal_met(ttft_ratio, "<=", TTFT_GOAL)},
            "gap_idle_capacity_used": {"ratio": share, "goal": f">={SHARE_GOAL}",
                                       "met": goal_met(share, ">=", SHARE_GOAL)},
        },
    }  # fmt: skip
    path = write_results(NAME, data)
    print(f"baseline ttft {base.get('ttft')}  with batch {mixed.get('ttft')}  gap {mixed.get('gap')}")
    print(f"results written to {path} in {data['duration_s']:.0f} s")
    print(final_line(NAME, "gap_idle_share", share, ">=", SHARE_GOAL))
    print(final_line(NAME, "ttft_p99", ttft_ratio, "<=", TTFT_GOAL))
    return 1 if any("error" in run for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
