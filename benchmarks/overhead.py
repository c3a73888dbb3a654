"""What surge costs over the engine: the same streamed completions through surge (Ray Serve, HAProxy
mode), through an in-process AsyncLLM (the engine floor, no HTTP) and through vLLM's own OpenAI server.

    python -m benchmarks.overhead [--quick]

Each target is started fresh, warmed, measured at concurrency 1, 16 and 64 and stopped before the next.
Headline: surge's TTFT p50 at concurrency 16 over the vLLM server's (goal <= 1.0); also surge's output
tokens/s at concurrency 64 over the server's (goal >= 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import (
    RequestResult,
    Sender,
    cpu_usage,
    final_line,
    format_table,
    goal_met,
    http_sender,
    machine_info,
    quiet_logs,
    run_closed_loop,
    run_part,
    summarize,
    utc_now,
    write_results,
)
from cluster.config import PoolConfig, SurgeConfig, load_config
from cluster.env import engine_env
from cluster.serving import free_port, isolate_serve_ports, wait_ready

__all__ = ["FULL", "QUICK", "Plan", "main", "prompts", "server_command"]

NAME = "overhead"
TARGETS = ("surge", "surge_router_hop", "in_process", "vllm_server")
TTFT_GOAL = 1.0
THROUGHPUT_GOAL = 1.5


@dataclass(frozen=True)
class Plan:
    """How much load each target gets: requests per concurrency level, tokens per request."""

    max_tokens: int
    requests_by_concurrency: dict[int, int] = field(default_factory=dict)
    warmup_requests: int = 8
    warmup_concurrency: int = 4
    startup_timeout_s: float = 180.0


QUICK = Plan(max_tokens=32, requests_by_concurrency={1: 20, 16: 64, 64: 128})
FULL = Plan(max_tokens=128, requests_by_concurrency={1: 100, 16: 320, 64: 640}, warmup_requests=16)

_TEXT = (
    "serving tokens through a cluster of replicas keeps the latency promise when the queue grows "
    "and the router sends each request to the engine with the warmest cache"
)
_WORDS = _TEXT.split(" ")


def prompts(count: int = 8) -> list[str]:
    """A fixed prompt set of varied lengths (about 20 to 75 words), identical for every target."""
    return [
        f"Request {i}: " + " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(20 + 8 * i))
        for i in range(count)
    ]


def _payloads(plan: Plan, model: str) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "prompt": text,
            "max_tokens": plan.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for text in prompts()
    ]


async def _measure(send: Sender, plan: Plan) -> dict[str, Any]:
    """Warm up (not recorded), then one closed-loop run per concurrency level."""
    await run_closed_loop(send, plan.warmup_requests, plan.warmup_concurrency)
    levels: dict[str, Any] = {}
    for concurrency, count in plan.requests_by_concurrency.items():
        with cpu_usage() as cpu:
            load = await run_closed_loop(send, count, concurrency)
        levels[f"c{concurrency}"] = summarize(load) | {"cpu": cpu}
    return levels


async def _measure_http(url: str, plan: Plan, model: str) -> dict[str, Any]:
    peak = max(plan.requests_by_concurrency)
    limits = httpx.Limits(max_connections=peak + 8, max_keepalive_connections=peak + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
        return await _measure(http_sender(client, url, _payloads(plan, model)), plan)



def _surge_config() -> SurgeConfig:
    """configs/local.yaml on a free port, admission off: this measures the serving path. The response
    cache would answer the repeated temperature-0 prompts itself, and keys, quotas and shedding have
    no counterpart in the bare vLLM server."""
    config = load_config()
    server = config.server.model_copy(update={"port": free_port()})
    cache = config.admission.cache.model_copy(update={"enabled": False})
    admission = config.admission.model_copy(update={"enabled": False, "cache": cache})
    return config.model_copy(update={"server": server, "admission": admission})


def _run_surge(plan: Plan, config: SurgeConfig) -> dict[str, Any]:
    from cluster.serving import serving

    isolate_serve_ports()
    start = time.perf_counter()
    with serving(config) as url:
        wait_ready(url, timeout_s=plan.startup_timeout_s)
        startup_s = time.perf_counter() - start
        levels = asyncio.run(_measure_http(f"{url}/v1/completions", plan, config.pools[0].model_id))
        stop = time.perf_counter()
    shutdown_s = time.perf_counter() - stop
    return {"startup_s": startup_s, "shutdown_s": shutdown_s, "levels": levels, "proxy": config.server.proxy}



def _engine_sender(engine: Any, plan: Plan) -> Sender:
    from deployments.engines.base import SamplingSpec, TextPrompt

    spec = SamplingSpec(max_tokens=plan.max_tokens, temperature=0.0, ignore_eos=True)
    texts = prompts()

    async def send(i: int) -> RequestResult:
        start = time.perf_counter()
        token_ids = engine.tokenize(TextPrompt(texts[i % len(texts)]))  # surge's replica tokenizes too
        ttft_s: float | None = None
        tokens = 0
        async for chunk in engine.generate(f"bench-{uuid.uuid4().hex}", token_ids, spec, 3):
            ttft_s = ttft_s if ttft_s is not None else time.perf_counter() - start
            tokens = chunk.completion_tokens
        return RequestResult(ttft_s, time.perf_counter() - start, tokens)

    return send


async def _in_process_async(plan: Plan, pool: PoolConfig) -> dict[str, Any]:
    from deployments.engines.vllm import VllmEngine

    start = time.perf_counter()
    engine = VllmEngine(pool.model_path(), pool.engine_args)
    startup_s = time.perf_counter() - start
    try:
        levels = await _measure(_engine_sender(engine, plan), plan)
    finally:
        stop = time.perf_counter()
        engine.shutdown()
    return {"startup_s": startup_s, "shutdown_s": time.perf_counter() - stop, "levels": levels}


def _in_process_child(plan: Plan, pool: PoolConfig, results: Connection) -> None:
    # A fresh process: the engine env (OMP_NUM_THREADS…) is set before torch loads, as in a replica.
    os.environ.update(engine_env(pool))
    quiet_logs()
    try:
        results.send(("ok", asyncio.run(_in_process_async(plan, pool))))
    except Exception as exc:
        results.send(("error", "".join(traceback.format_exception(exc, limit=6))))
    sys.stdout.flush()
    sys.stderr.flush()
    # The engine is already shut down; vLLM keeps the AsyncLLM alive through a cached traceback and its
    # __del__ fails noisily during interpreter teardown, so skip the teardown.
    os._exit(0)


def _run_in_process(plan: Plan, pool: PoolConfig) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_in_process_child, args=(plan, pool, sender), name="overhead-in-process")
    child.start()
    sender.close()  # so that recv() fails instead of hanging if the child dies
    try:
        status, payload = receiver.recv()
    except EOFError:
        raise RuntimeError(f"in-process engine exited with status {child.exitcode}") from None
    finally:
        child.join(timeout=30)
    if status != "ok":
        raise RuntimeError(f"in-process engine failed:\n{payload}")
    return dict(payload)



def server_command(pool: PoolConfig, port: int) -> list[str]:
    """`vllm.entrypoints.openai.api_server` with the pool's engine arguments as flags."""
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", pool.model_path(), "--served-model-name", pool.model_id,
        "--host", "127.0.0.1", "--port", str(port),
        # surge turns its access log off too
        "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    for key, value in pool.engine_args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else f"--no-{flag[2:]}")
        else:
            command += [flag, str(value)]
    return command


def _exited(process: subprocess.Popen[bytes]) -> Callable[[], None]:
    def check() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM server exited with status {process.returncode} before it was healthy")

    return check


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it runs in a new session), SIGKILL if it lingers."""
    for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _run_vllm_server(plan: Plan, pool: PoolConfig) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = server_command(pool, port)
    log_path = Path(tempfile.gettempdir()) / f"surge-overhead-vllm-{port}.log"
    start = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **engine_env(pool)}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(url, plan.startup_timeout_s, path="/health", check_alive=_exited(process))
            startup_s = time.perf_counter() - start
            levels = asyncio.run(_measure_http(f"{url}/v1/completions", plan, pool.model_id))
        except Exception as exc:
            raise RuntimeError(f"vLLM server failed ({exc}); its output is in {log_path}") from exc
        finally:
            stop = time.perf_counter()
            _stop_process_group(process)
    log_path.unlink()  # kept only when the server failed
    shutdown_s = time.perf_counter() - stop
    return {"startup_s": startup_s, "shutdown_s": shutdown_s, "levels": levels, "command": command[1:]}



def _metric(targets: dict[str, Any], target: str, level: str, key: str) -> float:
    value = targets.get(target, {}).get("levels", {}).get(level, {}).get(key)
    return float(value) if value is not None else float("nan")


def _ratio(targets: dict[str, Any], level: str, key: str, baseline: str, target: str = "surge") -> float:
    base = _metric(targets, baseline, level, key)
    return _metric(targets, target, level, key) / base if base else float("nan")


def _ratios(targets: dict[str, Any]) -> dict[str, Any]:
    ttft = _ratio(targets, "c16", "ttft_p50_s", "vllm_server")
    tok_s = _ratio(targets, "c64", "output_tok_s", "vllm_server")
    return {
        "ttft_p50_c16_surge_over_server": {"ratio": ttft, "goal": f"<={TTFT_GOAL}",
                                           "met": goal_met(ttft, "<=", TTFT_GOAL)},
        "output_tok_s_c64_surge_over_server": {"ratio": tok_s, "goal": f">={THROUGHPUT_GOAL}",
                                               "met": goal_met(tok_s, ">=", THROUGHPUT_GOAL)},
        "ttft_p50_c16_surge_over_in_process": _ratio(targets, "c16", "ttft_p50_s", "in_process"),
        "output_tok_s_c64_surge_over_in_process": _ratio(targets, "c64", "output_tok_s", "in_process"),
        # The routing design: a per-request router hop over routing on the ingress's snapshot.
        "ttft_p50_c1_router_hop_over_snapshot": _ratio(targets, "c1", "ttft_p50_s", "surge", "surge_router_hop"),
        "ttft_p50_c16_router_hop_over_snapshot": _ratio(targets, "c16", "ttft_p50_s", "surge", "surge_router_hop"),
    }  # fmt: skip


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _table(targets: dict[str, Any]) -> str:
    headers = ["target", "conc", "reqs", "err", "ttft p50 ms", "ttft p99 ms", "e2e p50 ms", "e2e p99 ms",
               "req/s", "out tok/s", "other cores"]  # fmt: skip
    rows: list[list[Any]] = []
    for name in (t for t in TARGETS if t in targets):
        for level in targets[name].get("levels", {}).values():
            rows.append([
                name, level["concurrency"], level["requests"], level["errors"],
                _ms(level["ttft_p50_s"]), _ms(level["ttft_p99_s"]),
                _ms(level["latency_p50_s"]), _ms(level["latency_p99_s"]),
                level["requests_per_s"], level["output_tok_s"], level["cpu"]["other_cores"],
            ])  # fmt: skip
        if "error" in targets[name]:
            rows.append([name, "-", "-", "FAILED", *[None] * (len(headers) - 4)])
    return format_table(headers, rows)


def _with_router_hop(config: SurgeConfig) -> SurgeConfig:
    """The rejected design, kept measurable: ask the traffic-router deployment on every request."""
    routing = config.routing.model_copy(update={"decide_per_request": True})
    server = config.server.model_copy(update={"port": free_port()})
    return config.model_copy(update={"routing": routing, "server": server})


def _run_all(plan: Plan, config: SurgeConfig, router_hop: bool) -> dict[str, Any]:
    pool = config.pools[0]
    targets = {"surge": run_part(NAME, "surge", lambda: _run_surge(plan, config))}
    if router_hop:
        hop = _with_router_hop(config)
        targets["surge_router_hop"] = run_part(NAME, "surge_router_hop", lambda: _run_surge(plan, hop))
    targets["in_process"] = run_part(NAME, "in_process", lambda: _run_in_process(plan, pool))
    targets["vllm_server"] = run_part(NAME, "vllm_server", lambda: _run_vllm_server(plan, pool))
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small load, under 3 minutes in total")
    parser.add_argument(
        "--router-hop", action=argparse.BooleanOptionalAction, default=None,
        help="also measure surge asking the router deployment per request (default: full mode only)",
    )
    args = parser.parse_args(argv)
    quiet_logs()
    plan = QUICK if args.quick else FULL
    config = _surge_config()
    pool = config.pools[0]
    started_at, started = utc_now(), time.perf_counter()
    machine = machine_info()
    router_hop = not args.quick if args.router_hop is None else args.router_hop
    targets = _run_all(plan, config, router_hop)
    ratios = _ratios(targets)
    data = {
        "benchmark": NAME, "mode": "quick" if args.quick else "full",
        "started_at": started_at, "finished_at": utc_now(), "duration_s": time.perf_counter() - started,
        "machine": machine,
        "config": {"plan": asdict(plan), "prompts": prompts(), "model": pool.model_path(),
                   "engine_args": pool.engine_args, "engine_env": engine_env(pool),
                   "proxy": config.server.proxy, "ingress": config.ingress.model_dump(),
                   "admission_enabled": config.admission.enabled},
        "targets": targets, "ratios": ratios,
    }  # fmt: skip
    path = write_results(NAME, data)
    print(_table(targets))
    print(f"results written to {path}")
    tok_s = ratios["output_tok_s_c64_surge_over_server"]["ratio"]
    print(final_line(NAME, "output_tok_s_c64", tok_s, ">=", THROUGHPUT_GOAL))
    print(final_line(NAME, "ttft_p50", ratios["ttft_p50_c16_surge_over_server"]["ratio"], "<=", TTFT_GOAL))
    return 1 if any("error" in t for t in targets.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
