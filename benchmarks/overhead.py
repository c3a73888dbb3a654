"""What surge costs a user over a bare vLLM server, measured the way users run both.

    python -m benchmarks.overhead [--quick] [--profile]

Targets, each started fresh and stopped before the next: vLLM's own OpenAI server; surge exactly as `make run`
configures it (configs/local.yaml: HAProxy mode, admission on with a real key, response cache on, metrics on);
in full mode also surge with admission off and surge asking the traffic router per request (extra rows, not the
headline); and the engine in-process (AsyncLLM, no HTTP: the floor). The load comes from a lean generator in
a process of its own (benchmarks/_loadgen.py; its CPU share is in the JSON), with unique prompts so no cache
answers: chat and completions, streamed and not, one client at a time, then 16 and 64 closed-loop clients. In
full mode vLLM's own `vllm bench serve` runs against surge and the server at 4 req/s, beside the generator's
own open-loop run at that rate, so each client's TTFT can be checked against the other's.

Goals (surge over the vLLM server, same run): TTFT p50 at one client <= 1.0, non-streamed p50 <= 1.0, TTFT p99
<= 1.5, output tokens/s at 16 and 64 clients >= 1.0. Last line: `overhead: ttft_p50_c1 ratio=<x> goal<=1.0`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks._common import (
    RESULTS_DIR,
    GoalOp,
    RunClock,
    cpu_usage,
    final_line,
    format_table,
    goal_met,
    quick_parser,
    quiet_logs,
    run_part,
    write_results,
)  # fmt: skip
from benchmarks._loadgen import LoadSpec, send_load
from benchmarks._peer import bench_serve
from benchmarks._profile import flame_graphs
from benchmarks._targets import BENCH_TIER, Target, in_process, surge, vllm_server
from cluster.config import SurgeConfig, load_config
from cluster.env import engine_env
from cluster.serving import free_port

__all__ = ["FULL", "QUICK", "Plan", "level_specs", "main"]

NAME = "overhead"
# (level, metric, goal op, goal): surge / vLLM server.
GOALS: list[tuple[str, str, GoalOp, float]] = [
    ("stream_c1", "ttft_p50_s", "<=", 1.0),
    ("nonstream_c1", "latency_p50_s", "<=", 1.0),
    ("stream_c1", "ttft_p99_s", "<=", 1.5),
    ("stream_c16", "ttft_p99_s", "<=", 1.5),
    ("stream_c16", "output_tok_s", ">=", 1.0),
    ("stream_c64", "output_tok_s", ">=", 1.0),
]
STRETCH_TOK_S = 1.5


@dataclass(frozen=True)
class Plan:
    """How much load each level gets."""

    c1_requests: int
    load_s: float
    peer_prompts: int  # 0: no cross-check with vllm bench serve
    peer_rate_rps: float = 4.0
    extra_rows: bool = False
    startup_timeout_s: float = 1800.0


QUICK = Plan(c1_requests=30, load_s=10, peer_prompts=0)
FULL = Plan(c1_requests=60, load_s=30, peer_prompts=80, extra_rows=True)


def level_specs(plan: Plan, url: str, model: str, key: str | None) -> dict[str, LoadSpec]:
    """Every load level, by name, against one target."""
    base = LoadSpec(url=url, model=model, api_key=key)
    c1 = replace(base, requests=plan.c1_requests)
    load = replace(base, duration_s=plan.load_s, max_tokens=64)
    specs = {
        "stream_c1": replace(c1, max_tokens=32),
        "nonstream_c1": replace(c1, stream=False, max_tokens=1),
        "completion_stream_c1": replace(c1, api="completion", max_tokens=32),
        "completion_nonstream_c1": replace(c1, api="completion", stream=False, max_tokens=1),
        "stream_c16": replace(load, concurrency=16),
        "stream_c64": replace(load, concurrency=64),
        "nonstream_c16": replace(load, concurrency=16, stream=False, max_tokens=16),
    }
    if plan.peer_prompts:
        # The peer's random dataset: ~64 prompt tokens (a word of this text is about one token), 32 out.
        specs["poisson"] = replace(base, rate_rps=plan.peer_rate_rps, requests=plan.peer_prompts, max_tokens=32,
                                   prompt_words=60)  # fmt: skip
    return {name: replace(spec, tag=name) for name, spec in specs.items()}


def _measure(plan: Plan, target: Target, model: str, profile_dir: Path | None) -> dict[str, Any]:
    url, key = target
    send_load(LoadSpec(url=url, model=model, api_key=key, concurrency=4, requests=16, tag="warmup"))
    levels: dict[str, Any] = {}
    for name, spec in level_specs(plan, url, model, key).items():
        profiler = flame_graphs(profile_dir, spec.duration_s) if profile_dir and name == "stream_c16" else nullcontext()
        with cpu_usage() as cpu, profiler:
            levels[name] = send_load(spec)
        levels[name]["cpu"] = cpu
    return levels


def _peer(plan: Plan, target: Target, model: str, tokenizer: str) -> dict[str, Any]:
    if not plan.peer_prompts:
        return {}
    url, key = target
    return bench_serve(url, model, tokenizer, key, rate_rps=plan.peer_rate_rps, prompts=plan.peer_prompts,
                       input_len=64, output_len=32)  # fmt: skip


def _http_target(
    plan: Plan, serve: Callable[[], AbstractContextManager[Target]], model: str, tokenizer: str,
    profile_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    with serve() as target:
        startup_s = time.perf_counter() - start
        levels = _measure(plan, target, model, profile_dir)
        peer = _peer(plan, target, model, tokenizer)
        stop = time.perf_counter()
    return {"startup_s": startup_s, "shutdown_s": time.perf_counter() - stop, "levels": levels, "peer": peer}


def _surge_config() -> SurgeConfig:
    """`make run`'s own config (configs/local.yaml) on free ports."""
    config = load_config()
    server = config.server.model_copy(update={"port": free_port()})
    metrics = config.observability.metrics.model_copy(update={"export_port": free_port()})
    observability = config.observability.model_copy(update={"metrics": metrics})
    return config.model_copy(update={"server": server, "observability": observability})


def _variants(config: SurgeConfig) -> dict[str, SurgeConfig]:
    """The stripped variants: no admission; a traffic-router call per request (the rejected routing design)."""
    admission = config.admission.model_copy(update={"enabled": False})
    routing = config.routing.model_copy(update={"decide_per_request": True})
    return {
        "surge_admission_off": config.model_copy(update={"admission": admission}),
        "surge_router_hop": config.model_copy(update={"routing": routing}),
    }


def _run_all(plan: Plan, config: SurgeConfig, profile_dir: Path | None) -> dict[str, Any]:
    pool = config.pools[0]
    model, tokenizer = pool.model_id, pool.model_path()
    timeout_s = plan.startup_timeout_s
    targets = {
        "vllm_server": run_part(NAME, "vllm_server", lambda: _http_target(
            plan, lambda: vllm_server(pool, timeout_s), model, tokenizer)),
        "surge": run_part(NAME, "surge", lambda: _http_target(
            plan, lambda: surge(config, timeout_s), model, tokenizer, profile_dir)),
    }  # fmt: skip
    if plan.extra_rows:
        for name, variant in _variants(config).items():
            targets[name] = run_part(NAME, name, lambda v=variant: _http_target(  # type: ignore[misc]
                replace(plan, peer_prompts=0), lambda: surge(v, timeout_s), model, tokenizer))
    streamed = {k: v for k, v in level_specs(plan, "", model, None).items() if k.startswith("stream_")}
    targets["in_process"] = run_part(NAME, "in_process", lambda: {"levels": in_process(pool, streamed)})
    return targets


def _metric(targets: dict[str, Any], target: str, level: str, key: str) -> float:
    value = targets.get(target, {}).get("levels", {}).get(level, {}).get(key)
    return float(value) if value is not None else float("nan")


def _ratio(targets: dict[str, Any], level: str, key: str, target: str = "surge", base: str = "vllm_server") -> float:
    baseline = _metric(targets, base, level, key)
    return _metric(targets, target, level, key) / baseline if baseline else float("nan")


def _ratios(targets: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for level, key, op, goal in GOALS:
        value = _ratio(targets, level, key)
        ratios[f"{level}:{key}"] = {"ratio": value, "goal": f"{op}{goal}", "met": goal_met(value, op, goal)}
    for level in ("stream_c16", "stream_c64"):
        value = _ratio(targets, level, "output_tok_s")
        ratios[f"{level}:output_tok_s"]["stretch"] = {"goal": f">={STRETCH_TOK_S}",
                                                      "met": goal_met(value, ">=", STRETCH_TOK_S)}  # fmt: skip
    for level in ("completion_stream_c1:ttft_p50_s", "completion_nonstream_c1:latency_p50_s",
                  "nonstream_c16:latency_p50_s", "stream_c1:tpot_p50_s", "stream_c64:ttft_p50_s"):  # fmt: skip
        ratios[level] = _ratio(targets, *level.split(":"))
    for variant in ("surge_admission_off", "surge_router_hop", "in_process"):
        key = f"stream_c1:ttft_p50_s:surge_over_{variant}"
        ratios[key] = _ratio(targets, "stream_c1", "ttft_p50_s", "surge", variant)
    return ratios | {"peer_cross_check": _cross_check(targets)}


def _cross_check(targets: dict[str, Any]) -> dict[str, Any]:
    """The generator's open-loop TTFT p50 over `vllm bench serve`'s at the same rate, per target."""
    checks = {}
    for name in ("surge", "vllm_server"):
        peer = targets.get(name, {}).get("peer", {}).get("median_ttft_s")
        ours = _metric(targets, name, "poisson", "ttft_p50_s")
        checks[name] = ours / peer if peer else None
    return checks


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _table(targets: dict[str, Any]) -> str:
    headers = ["target", "level", "reqs", "err", "ttft p50", "ttft p90", "ttft p99", "e2e p50", "tpot p50",
               "gap p99", "out tok/s", "client cores"]  # fmt: skip
    rows: list[list[Any]] = []
    for name, target in targets.items():
        for level, r in target.get("levels", {}).items():
            rows.append([name, level, r["requests"], r["errors"], _ms(r["ttft_p50_s"]), _ms(r.get("ttft_p90_s")),
                         _ms(r["ttft_p99_s"]), _ms(r["latency_p50_s"]), _ms(r.get("tpot_p50_s")),
                         _ms(r.get("gap_p99_s")), r["output_tok_s"], r.get("client_cpu_cores")])  # fmt: skip
        if "error" in target:
            rows.append([name, "-", "-", "FAILED", *[None] * (len(headers) - 4)])
    return "latencies in ms\n" + format_table(headers, rows)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = quick_parser(__doc__, "small load, about 3 minutes in total")
    parser.add_argument("--profile", action="store_true",
                        help="flame graphs of surge's ingress, replica and engine at 16 clients (py-spy)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quiet_logs()
    plan = QUICK if args.quick else FULL
    config = _surge_config()
    pool = config.pools[0]
    clock = RunClock(NAME, args.quick)
    profile_dir = RESULTS_DIR / "profiles" if args.profile else None
    targets = _run_all(plan, config, profile_dir)
    ratios = _ratios(targets)
    data = {
        **clock.header(),
        "config": {"plan": asdict(plan), "model": pool.model_path(), "engine_args": pool.engine_args,
                   "engine_env": engine_env(pool), "proxy": config.server.proxy, "bench_tier": BENCH_TIER,
                   "admission_enabled": config.admission.enabled, "cache_enabled": config.admission.cache.enabled},
        "targets": targets, "ratios": ratios,
    }  # fmt: skip
    path = write_results(NAME, data)
    print(_table(targets))
    print(f"results written to {path}")
    for key, ratio in ratios.items():
        if isinstance(ratio, dict) and "met" in ratio:
            print(f"  {key}: {ratio['ratio']:.3f} goal{ratio['goal']} {'met' if ratio['met'] else 'NOT met'}")
    print(final_line(NAME, "ttft_p50_c1", ratios["stream_c1:ttft_p50_s"]["ratio"], "<=", 1.0))
    return 1 if any("error" in t for t in targets.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
