"""What observability costs a request: metrics + tracing (100 % sampled, exported over OTLP/HTTP) on vs off.

    python -m benchmarks.observability [--quick]

Two identical surge apps in one Ray: `on` at / (surge's Ray metrics, vLLM's Ray stat logger, every request
traced ingress -> replica -> engine and exported to an OTLP/HTTP receiver in its own process, which keeps the
bodies and decodes them after the run, JSON request logs)
and `off` at /off (metrics, tracing and request logs all off). Streamed chat completions, measured in
alternating blocks (ABBA) at concurrency 1 and 8 so load from elsewhere falls on both alike.
Headline: latency p50 on / off at concurrency 8 (goal <= 1.05).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks._common import (
    LoadResult,
    RunClock,
    Sender,
    final_line,
    format_table,
    goal_met,
    http_client,
    http_sender,
    quick_parser,
    quiet_logs,
    run_closed_loop,
    run_part,
    summarize,
    write_results,
)
from benchmarks._otlp_receiver import span_sink
from cluster.config import MetricsConfig, ObservabilityConfig, SurgeConfig, TracingConfig, load_config
from cluster.serving import free_port, isolate_serve_ports, serving, wait_ready

__all__ = ["FULL", "QUICK", "Plan", "main"]

NAME = "observability"
GOAL = 1.05
_OFF_PREFIX = "/off"


@dataclass(frozen=True)
class Plan:
    warmup_requests: int
    blocks: int
    requests_c1: int
    requests_c8: int
    max_tokens: int
    startup_timeout_s: float = 300


QUICK = Plan(warmup_requests=16, blocks=4, requests_c1=40, requests_c8=160, max_tokens=16)
FULL = Plan(warmup_requests=32, blocks=6, requests_c1=120, requests_c8=480, max_tokens=32)


def _configs(base: SurgeConfig, endpoint: str) -> tuple[SurgeConfig, SurgeConfig]:
    server = base.server.model_copy(update={"port": free_port()})
    on = ObservabilityConfig(metrics=MetricsConfig(export_port=free_port()),
                             tracing=TracingConfig(otlp_endpoint=endpoint, sample_ratio=1.0), request_log=True)
    off = ObservabilityConfig(metrics=MetricsConfig(enabled=False, export_port=on.metrics.export_port),
                              tracing=TracingConfig(otlp_endpoint=None), request_log=False)
    admission = base.admission.model_copy(update={"enabled": False})  # what is measured is observability alone
    common = {"server": server, "admission": admission}
    return (base.model_copy(update={**common, "observability": on}),
            base.model_copy(update={**common, "observability": off}))


def _payloads(plan: Plan, model: str) -> list[dict[str, Any]]:
    return [{"model": model, "messages": [{"role": "user", "content": f"observe request {i}"}],
             "max_tokens": plan.max_tokens, "ignore_eos": True, "stream": True} for i in range(64)]


async def _interleaved(plan: Plan, sends: dict[str, Sender], requests: int, concurrency: int) -> dict[str, Any]:
    for send in sends.values():
        await run_closed_loop(send, plan.warmup_requests, concurrency)
    runs: dict[str, list[LoadResult]] = {name: [] for name in sends}
    for block in range(plan.blocks):
        for name in sends if block % 2 == 0 else reversed(list(sends)):
            runs[name].append(await run_closed_loop(sends[name], requests // plan.blocks, concurrency))
    pooled = {name: summarize(LoadResult(concurrency, sum(r.wall_s for r in rs), [q for r in rs for q in r.requests]))
              for name, rs in runs.items()}
    block_ratios = [_ratio(summarize(on), summarize(off)) for on, off in zip(runs["on"], runs["off"], strict=True)]
    return pooled | {"ratio": _ratio(pooled["on"], pooled["off"]), "block_ratios": block_ratios}


def _ratio(on: dict[str, Any], off: dict[str, Any]) -> float:
    on_s, off_s = on.get("latency_p50_s"), off.get("latency_p50_s")
    return float(on_s / off_s) if on_s and off_s else float("nan")


async def _measure(plan: Plan, url: str, model: str) -> dict[str, Any]:
    payloads = _payloads(plan, model)
    async with http_client(8) as client:
        sends = {"on": http_sender(client, f"{url}/v1/chat/completions", payloads),
                 "off": http_sender(client, f"{url}{_OFF_PREFIX}/v1/chat/completions", payloads)}
        return {f"c{c}": await _interleaved(plan, sends, n, c) for c, n in ((1, plan.requests_c1),
                                                                           (8, plan.requests_c8))}


def _run_apps(plan: Plan, base: SurgeConfig) -> dict[str, Any]:
    from ray import serve

    from deployments.app import build_app

    isolate_serve_ports()
    with span_sink() as sink:
        on, off = _configs(base, sink.url)
        with serving(on) as url:
            serve.run(build_app(off), name=f"{on.ray.app_name}-off", route_prefix=_OFF_PREFIX, blocking=False)
            for app_url in (url, f"{url}{_OFF_PREFIX}"):
                wait_ready(app_url, timeout_s=plan.startup_timeout_s)
            levels = asyncio.run(_measure(plan, url, on.pools[0].model_id))
            time.sleep(6)  # the last export batch (OpenTelemetry's 5 s schedule) reaches the receiver
    return {"levels": levels, "spans_received": sink.spans_received}


def _table(levels: dict[str, Any]) -> str:
    rows = [[level, app, s["requests"], s["errors"], s["ttft_p50_s"] and s["ttft_p50_s"] * 1000,
             s["latency_p50_s"] and s["latency_p50_s"] * 1000, s["latency_p99_s"] and s["latency_p99_s"] * 1000,
             data["ratio"]]
            for level, data in levels.items() for app in ("off", "on") for s in [data[app]]]
    return format_table(["level", "app", "requests", "errors", "ttft p50 ms", "p50 ms", "p99 ms", "p50 on/off"],
                        rows)


def main(argv: list[str] | None = None) -> int:
    parser = quick_parser(__doc__, "smaller runs, under 3 minutes in total")
    args = parser.parse_args(argv)
    quiet_logs()
    plan = QUICK if args.quick else FULL
    clock = RunClock(NAME, args.quick)
    part = run_part(NAME, "apps", lambda: _run_apps(plan, load_config()))
    levels = part.get("levels", {})
    ratio = float(levels.get("c8", {}).get("ratio", float("nan")))
    data = {
        **clock.header(), "plan": asdict(plan), "parts": {"apps": part},
        "ratio": {"metric": "latency_p50 with metrics + tracing (100 %, OTLP/HTTP) + request log / all off, "
                            "streamed chat at concurrency 8",
                  "ratio": ratio, "c1_ratio": levels.get("c1", {}).get("ratio"),
                  "goal": f"<={GOAL}", "met": goal_met(ratio, "<=", GOAL)},
    }  # fmt: skip
    path = write_results(NAME, data)
    if levels:
        print(_table(levels))
    print(f"spans received: {part.get('spans_received')}; results written to {path}")
    print(final_line(NAME, "latency_p50", ratio, "<=", GOAL))
    return 1 if "error" in part else 0


if __name__ == "__main__":
    sys.exit(main())
