"""surge against Ray Serve LLM and a bare vLLM server: same tiny model, same engine, same load, side by side.

    python -m benchmarks.head_to_head [--quick]

Targets, each started fresh in a process of its own and stopped before the next: vLLM's own OpenAI server
(`python -m vllm.entrypoints.openai.api_server`); surge exactly as `make run` configures it (configs/local.yaml:
HAProxy mode, admission on with a real key, response cache on); Ray Serve LLM (`ray.serve.llm.build_openai_app`,
one LLMConfig with the pool's model, engine arguments and engine threads) in Serve's default setup and in its
HAProxy throughput mode (benchmarks/_ray_serve_llm.py). The load comes from the lean generator in a process of its
own (benchmarks/_loadgen.py), unique prompts, streamed chat, 64 output tokens: closed loop at 1, 16 and 64
clients, then open-loop Poisson arrivals at several rates. Per level: TTFT, ITL (token-accurate TPOT and the p99
gap between stream messages), end-to-end latency, output tokens/s, and goodput at the SLO below.

Ratios: surge output tokens/s at 64 clients over Ray Serve LLM's, at its better mode (goal >= 1.8), and over the
vLLM server's (goal >= 1.0). Writes benchmarks/results/head_to_head.json and head_to_head.png (latency vs load).
Last line: `head_to_head: throughput_vs_ray_serve_llm ratio=<x> goal>=1.8`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks._common import (
    RESULTS_DIR,
    RunClock,
    final_line,
    format_table,
    goal_met,
    quick_parser,
    quiet_logs,
    run_part,
    write_results,
)  # fmt: skip
from benchmarks._loadgen import LoadSpec, send_load, send_load_raw, summarize_load
from benchmarks._ray_serve_llm import Mode, ray_serve_llm, serving_args
from benchmarks._targets import Target, surge, vllm_server
from benchmarks._versus import Slo, best_of, goodput, ratio
from cluster.config import SurgeConfig, load_config
from cluster.env import engine_env
from cluster.serving import free_port

__all__ = ["FULL", "QUICK", "SLO", "Plan", "level_specs", "main", "ratios"]

NAME = "head_to_head"
SLO = Slo(ttft_s=1.0, tpot_s=0.05)
RAY_GOAL, VLLM_GOAL = 1.8, 1.0
HEADLINE_LEVEL = "closed_c64"
RAY_MODES: tuple[Mode, ...] = ("default", "haproxy")


@dataclass(frozen=True)
class Plan:
    """How much load each level gets."""

    c1_requests: int
    load_s: float
    rates_rps: tuple[float, ...]
    max_tokens: int = 64
    startup_timeout_s: float = 900.0


QUICK = Plan(c1_requests=16, load_s=5, rates_rps=(4.0, 16.0))
FULL = Plan(c1_requests=60, load_s=20, rates_rps=(2.0, 8.0, 16.0, 32.0))


def level_specs(plan: Plan, url: str, model: str, key: str | None) -> dict[str, LoadSpec]:
    """Every load level, by name: closed loop at 1/16/64 clients, then open loop at each rate."""
    base = LoadSpec(url=url, model=model, api_key=key, max_tokens=plan.max_tokens, duration_s=plan.load_s)
    specs = {
        "closed_c1": replace(base, requests=plan.c1_requests),
        "closed_c16": replace(base, concurrency=16),
        "closed_c64": replace(base, concurrency=64),
    }
    for rate in plan.rates_rps:
        specs[f"open_{rate:g}rps"] = replace(base, rate_rps=rate)
    return {name: replace(spec, tag=name) for name, spec in specs.items()}


def _level(spec: LoadSpec) -> dict[str, Any]:
    raw = send_load_raw(spec)
    return summarize_load(spec, raw) | goodput(raw["records"], raw["wall_s"], SLO)


def _measure(plan: Plan, target: Target, model: str) -> dict[str, Any]:
    url, key = target
    start = time.perf_counter()
    # Not recorded: Ray Serve LLM's first request here takes ~30 s, the others' a fraction of one.
    warmup = send_load(LoadSpec(url=url, model=model, api_key=key, concurrency=4, requests=16, tag="warmup"))
    levels = {"warmup": {"wall_s": time.perf_counter() - start, "errors": warmup["errors"]}}
    for name, spec in level_specs(plan, url, model, key).items():
        levels[name] = _level(spec)
    return levels


def _http_target(plan: Plan, serve: Callable[[], AbstractContextManager[Target]], model: str) -> dict[str, Any]:
    start = time.perf_counter()
    with serve() as target:
        startup_s = time.perf_counter() - start
        levels = _measure(plan, target, model)
        stop = time.perf_counter()
    return {"startup_s": startup_s, "shutdown_s": time.perf_counter() - stop, "levels": levels}


def _surge_config() -> SurgeConfig:
    """`make run`'s own config (configs/local.yaml) on free ports."""
    config = load_config()
    server = config.server.model_copy(update={"port": free_port()})
    metrics = config.observability.metrics.model_copy(update={"export_port": free_port()})
    observability = config.observability.model_copy(update={"metrics": metrics})
    return config.model_copy(update={"server": server, "observability": observability})


def _run_all(plan: Plan, config: SurgeConfig) -> dict[str, Any]:
    pool, timeout_s = config.pools[0], plan.startup_timeout_s
    model = pool.model_id
    targets = {
        "vllm_server": run_part(NAME, "vllm_server", lambda: _http_target(
            plan, lambda: vllm_server(pool, timeout_s), model)),
        "surge": run_part(NAME, "surge", lambda: _http_target(plan, lambda: surge(config, timeout_s), model)),
    }  # fmt: skip
    for mode in RAY_MODES:
        name = f"ray_serve_llm_{mode}"
        targets[name] = run_part(NAME, name, lambda m=mode: _http_target(  # type: ignore[misc]
            plan, lambda: ray_serve_llm(pool, m, config.server, config.ray.num_cpus, timeout_s), model))
    return targets


def _metric(targets: dict[str, Any], target: str, level: str, key: str) -> float | None:
    value = targets.get(target, {}).get("levels", {}).get(level, {}).get(key)
    return None if value is None else float(value)


def ratios(targets: dict[str, Any], level: str = HEADLINE_LEVEL) -> dict[str, Any]:
    """surge's output tokens/s at `level` over Ray Serve LLM's better mode and over the vLLM server's."""
    rays: dict[str, float | None] = {
        mode: _metric(targets, f"ray_serve_llm_{mode}", level, "output_tok_s") for mode in RAY_MODES
    }
    best_mode, best_tok_s = best_of(rays)
    ours = _metric(targets, "surge", level, "output_tok_s")
    vs_ray = ratio(ours, best_tok_s)
    vs_vllm = ratio(ours, _metric(targets, "vllm_server", level, "output_tok_s"))
    return {
        "level": level,
        "throughput_vs_ray_serve_llm": {"ratio": vs_ray, "goal": f">={RAY_GOAL}",
                                        "met": goal_met(vs_ray, ">=", RAY_GOAL),
                                        "ray_serve_llm_mode": best_mode,
                                        "per_mode": {m: ratio(ours, v) for m, v in rays.items()}},
        "throughput_vs_vllm_server": {"ratio": vs_vllm, "goal": f">={VLLM_GOAL}",
                                      "met": goal_met(vs_vllm, ">=", VLLM_GOAL)},
    }  # fmt: skip


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _table(targets: dict[str, Any]) -> str:
    headers = ["target", "level", "reqs", "err", "ttft p50", "ttft p99", "tpot p50", "gap p99", "e2e p50",
               "e2e p99", "out tok/s", "good rps", "slo %"]  # fmt: skip
    rows: list[list[Any]] = []
    for name, target in targets.items():
        for level, r in target.get("levels", {}).items():
            if level == "warmup":
                continue
            rows.append([name, level, r["requests"], r["errors"], _ms(r["ttft_p50_s"]), _ms(r["ttft_p99_s"]),
                         _ms(r["tpot_p50_s"]), _ms(r["gap_p99_s"]), _ms(r["latency_p50_s"]),
                         _ms(r["latency_p99_s"]), r["output_tok_s"], r["goodput_rps"],
                         100 * r["slo_met_share"]])  # fmt: skip
        if "error" in target:
            rows.append([name, "-", "-", "FAILED", *[None] * (len(headers) - 4)])
    return "latencies in ms\n" + format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = quick_parser(__doc__, "short levels, a few minutes in total").parse_args(argv)
    quiet_logs()
    plan = QUICK if args.quick else FULL
    config = _surge_config()
    pool = config.pools[0]
    clock = RunClock(NAME, args.quick)
    targets = _run_all(plan, config)
    result = ratios(targets)
    data = {
        **clock.header(),
        "config": {"plan": asdict(plan), "slo": asdict(SLO), "model": pool.model_path(),
                   "engine_args": pool.engine_args, "engine_env": engine_env(pool), "surge_proxy": config.server.proxy,
                   "ray_serve_llm_serving_args": serving_args(pool)},
        "targets": targets, "ratios": result,
    }  # fmt: skip
    path = write_results(NAME, data)
    from benchmarks._versus_plots import plot_head_to_head

    plot = plot_head_to_head(targets, RESULTS_DIR / f"{NAME}.png")
    print(_table(targets))
    print(f"results written to {path}, plot {plot}")
    vs_vllm = result["throughput_vs_vllm_server"]
    print(f"  throughput_vs_vllm_server: {vs_vllm['ratio']:.3f} goal{vs_vllm['goal']} "
          f"{'met' if vs_vllm['met'] else 'NOT met'}")  # fmt: skip
    print(final_line(NAME, "throughput_vs_ray_serve_llm", result["throughput_vs_ray_serve_llm"]["ratio"], ">=",
                     RAY_GOAL))  # fmt: skip
    return 1 if any("error" in t for t in targets.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
