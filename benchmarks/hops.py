"""Where one request's milliseconds go, hop by hop, read off each request's own trace.

    python -m benchmarks.hops [--quick]

surge exactly as `make run` configures it, with tracing at 100 % to an OTLP/HTTP receiver in this process, then
vLLM's own OpenAI server with vLLM's tracing to the same receiver; one request at a time from the lean load
generator in a process of its own, which records each request's wall-clock send time. Every request is lined up
with its trace (one client: the n-th request is the n-th trace) and split into one-way hops that add up exactly
to the TTFT the client saw:

    surge:        to_ingress       client send -> surge's ASGI app starts (HAProxy, uvicorn)
                  admission        the admission span (key, tier rules, shedding, quota reservation)
                  ingress_to_dispatch  admission end -> dispatch (parse, validate, route, cache lookup)
                  handle_forward   dispatch -> the replica's span starts (Serve's router, gRPC, the replica's loop)
                  replica_to_engine    replica span -> vLLM's request arrives (tokenize, AsyncLLM input)
                  engine_ttft      vLLM's own time to first token, from the request's arrival
                  return_path      the first output -> the client's first byte (gRPC back, SSE, HAProxy)
    vLLM server:  to_engine, engine_ttft, return_path   (its API server on either side of the engine)

Streamed requests also compare the engine's own decode time per token (from vLLM's span) with the client's TPOT:
whether a slower stream comes from the relay or from an engine that shares its cores with more processes.
Tracing costs a little (see benchmarks/observability.py); the headline ratios are benchmarks/overhead.py's.
Last line: `hops: serving_path_ttft_ms ratio=<x> goal<=1.0`, surge's TTFT outside the engine over the vLLM
server's, at one client, streamed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks._common import (
    RunClock,
    final_line,
    format_table,
    goal_met,
    quick_parser,
    quiet_logs,
    write_results,
)
from benchmarks._loadgen import LoadSpec, RequestRecord, send_load, send_load_raw
from benchmarks._otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from benchmarks._targets import Target, surge, vllm_server
from cluster.config import SurgeConfig, TracingConfig, load_config
from cluster.serving import free_port

__all__ = ["FULL", "QUICK", "Plan", "main", "server_hops", "surge_hops"]

NAME = "hops"
SURGE_HOPS = ("to_ingress", "admission", "ingress_to_dispatch", "handle_forward", "replica_to_engine",
              "engine_ttft", "return_path")  # fmt: skip
SERVER_HOPS = ("to_engine", "engine_ttft", "return_path")
_INGRESS_SPAN = {"chat": "POST /v1/chat/completions", "completion": "POST /v1/completions"}
_TTFT = "gen_ai.latency.time_to_first_token"
_E2E = "gen_ai.latency.e2e"
_OUT_TOKENS = "gen_ai.usage.completion_tokens"


@dataclass(frozen=True)
class Plan:
    requests: int
    stream_tokens: int = 32
    startup_timeout_s: float = 1800.0


QUICK = Plan(requests=30)
FULL = Plan(requests=100)


def _start(span: ReceivedSpan) -> float:
    return span.start_ns / 1e9


def _end(span: ReceivedSpan) -> float:
    return span.end_ns / 1e9


def _first_output(record: RequestRecord, llm: ReceivedSpan) -> tuple[float, float]:
    """(when the engine had its first token, when the client had it), both on the wall clock."""
    assert record.ttft_s is not None
    return _start(llm) + float(llm.attributes[_TTFT]), record.sent_unix_s + record.ttft_s  # type: ignore[arg-type]


def surge_hops(record: RequestRecord, trace: dict[str, ReceivedSpan], ingress_span: str) -> dict[str, float]:
    """One surge request's TTFT split into SURGE_HOPS (seconds); they add up to the client's TTFT."""
    ingress, admission, dispatch = trace[ingress_span], trace["admission"], trace["dispatch"]
    replica, llm = trace["replica.generate"], trace["llm_request"]
    engine_first, client_first = _first_output(record, llm)
    return {
        "to_ingress": _start(ingress) - record.sent_unix_s,
        "admission": _end(admission) - _start(ingress),
        "ingress_to_dispatch": _start(dispatch) - _end(admission),
        "handle_forward": _start(replica) - _start(dispatch),
        "replica_to_engine": _start(llm) - _start(replica),
        "engine_ttft": engine_first - _start(llm),
        "return_path": client_first - engine_first,
    }


def server_hops(record: RequestRecord, llm: ReceivedSpan) -> dict[str, float]:
    """One vLLM server request's TTFT split into SERVER_HOPS (seconds)."""
    engine_first, client_first = _first_output(record, llm)
    return {
        "to_engine": _start(llm) - record.sent_unix_s,
        "engine_ttft": engine_first - _start(llm),
        "return_path": client_first - engine_first,
    }


def _engine_tpot(llm: ReceivedSpan) -> float | None:
    tokens = int(llm.attributes.get(_OUT_TOKENS, 0))  # type: ignore[call-overload]
    if tokens < 2:
        return None
    return (float(llm.attributes[_E2E]) - float(llm.attributes[_TTFT])) / (tokens - 1)  # type: ignore[arg-type]


def _client_tpot(record: RequestRecord) -> float | None:
    if record.ttft_s is None or record.output_tokens < 2:
        return None
    return (record.latency_s - record.ttft_s) / (record.output_tokens - 1)


def _traces(receiver: OtlpReceiver, root: str, expected: int, since_s: float) -> list[dict[str, ReceivedSpan]]:
    """The `expected` complete traces whose root span is named `root` and started after `since_s` (a late
    export of the warm-up's spans must not shift the line-up), in the order they started."""

    def complete() -> list[dict[str, ReceivedSpan]]:
        by_trace: dict[str, dict[str, ReceivedSpan]] = {}
        for span in list(receiver.spans):
            by_trace.setdefault(span.trace_id, {})[span.name] = span
        ours = (t for t in by_trace.values() if root in t and "llm_request" in t and _start(t[root]) >= since_s)
        return sorted(ours, key=lambda t: t[root].start_ns)

    receiver.wait_for(lambda: len(complete()) >= expected, timeout_s=120)
    return complete()


def _summary(rows: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {
        name: {"p50_ms": 1000 * statistics.median(r[name] for r in rows),
               "mean_ms": 1000 * statistics.fmean(r[name] for r in rows)}
        for name in names
    }  # fmt: skip


def _median_ms(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return 1000 * statistics.median(present) if present else None


def _measure(spec: LoadSpec, receiver: OtlpReceiver, root: str | None) -> dict[str, Any]:
    """Send `spec` one request at a time and account for each; `root`: surge's ingress span (None: vLLM server)."""
    receiver.clear()
    report = send_load_raw(spec)
    records = [RequestRecord(**r) for r in report["records"]]
    failed = [r.error for r in records if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, the first: {failed[0]}")
    since_s = min(r.sent_unix_s for r in records)
    traces = _traces(receiver, root or "llm_request", len(records), since_s)[: len(records)]
    if root is None:
        hops = [server_hops(r, t["llm_request"]) for r, t in zip(records, traces, strict=True)]
    else:
        hops = [surge_hops(r, t, root) for r, t in zip(records, traces, strict=True)]
    names = SERVER_HOPS if root is None else SURGE_HOPS
    return {
        "requests": len(records),
        "client_ttft_p50_ms": _median_ms([r.ttft_s for r in records]),
        "hops": _summary(hops, names),
        "accounted_p50_ms": 1000 * statistics.median(sum(h.values()) for h in hops),
        "client_tpot_p50_ms": _median_ms([_client_tpot(r) for r in records]),
        "engine_tpot_p50_ms": _median_ms([_engine_tpot(t["llm_request"]) for t in traces]),
        "client_cpu_cores": report["client_cpu_cores"],
    }


def _levels(plan: Plan, target: Target, model: str) -> dict[str, LoadSpec]:
    url, key = target
    base = LoadSpec(url=url, model=model, api_key=key, requests=plan.requests, tag="hops")
    return {
        "nonstream_c1": replace(base, stream=False, max_tokens=1, tag="nonstream"),
        "stream_c1": replace(base, max_tokens=plan.stream_tokens, tag="stream"),
    }


def _run_target(
    plan: Plan, serve: Callable[[], AbstractContextManager[Target]], model: str, receiver: OtlpReceiver,
    root: str | None,
) -> dict[str, Any]:  # fmt: skip
    with serve() as target:
        url, key = target
        send_load(LoadSpec(url=url, model=model, api_key=key, requests=8, tag="warmup"))
        time.sleep(1.0)  # the warm-up's spans leave the exporters' batches before the first measured request
        return {name: _measure(spec, receiver, root) for name, spec in _levels(plan, target, model).items()}


def _surge_config(endpoint: str) -> SurgeConfig:
    """`make run`'s config on free ports, every request traced to `endpoint`."""
    config = load_config()
    server = config.server.model_copy(update={"port": free_port()})
    observability = config.observability.model_copy(update={
        "metrics": config.observability.metrics.model_copy(update={"export_port": free_port()}),
        "tracing": TracingConfig(otlp_endpoint=endpoint, sample_ratio=1.0, engine_spans=True),
    })  # fmt: skip
    return config.model_copy(update={"server": server, "observability": observability})


def _server_pool(config: SurgeConfig, endpoint: str) -> Any:
    """The same pool for vLLM's server, with vLLM's tracing to `endpoint` over OTLP/HTTP."""
    os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"  # vLLM's default is gRPC
    pool = config.pools[0]
    return pool.model_copy(update={"engine_args": {**pool.engine_args, "otlp_traces_endpoint": endpoint}})


def _run_all(plan: Plan, receiver: OtlpReceiver) -> dict[str, Any]:
    config = _surge_config(receiver.url)
    pool = config.pools[0]
    timeout_s = plan.startup_timeout_s
    server_pool = _server_pool(config, receiver.url)
    return {
        "vllm_server": _run_target(plan, lambda: vllm_server(server_pool, timeout_s), pool.model_id, receiver, None),
        "surge": _run_target(plan, lambda: surge(config, timeout_s), pool.model_id, receiver, _INGRESS_SPAN["chat"]),
    }


def serving_path_ratio(targets: dict[str, Any], level: str = "stream_c1") -> float:
    """surge's TTFT outside the engine over the vLLM server's (p50s of the per-request sums)."""

    def outside(target: str) -> float:
        hops = targets[target][level]["hops"]
        return sum(h["p50_ms"] for name, h in hops.items() if name != "engine_ttft")

    return outside("surge") / outside("vllm_server")


def _table(targets: dict[str, Any]) -> str:
    rows = []
    for target, levels in targets.items():
        for level, result in levels.items():
            for hop, value in result["hops"].items():
                rows.append([target, level, hop, value["p50_ms"], value["mean_ms"]])
            rows.append([target, level, "= client TTFT", result["client_ttft_p50_ms"], None])
            if result["engine_tpot_p50_ms"] is not None:
                rows.append([target, level, "TPOT engine / client", result["engine_tpot_p50_ms"],
                             result["client_tpot_p50_ms"]])  # fmt: skip
    return "milliseconds, one client\n" + format_table(["target", "level", "hop", "p50", "mean (client)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = quick_parser(__doc__, "30 requests per level (about 3 minutes)")
    args = parser.parse_args(argv)
    quiet_logs()
    plan = QUICK if args.quick else FULL
    clock = RunClock(NAME, args.quick)
    with otlp_receiver() as receiver:
        targets = _run_all(plan, receiver)
    ratio = serving_path_ratio(targets)
    data = {
        **clock.header(),
        "config": {"plan": asdict(plan), "tracing": "100 %, OTLP/HTTP to an in-process receiver"},
        "targets": targets,
        "ratio": {"metric": "surge TTFT outside the engine / vLLM server's, stream c=1, p50", "value": ratio,
                  "goal": "<=1.0", "met": goal_met(ratio, "<=", 1.0)},
    }  # fmt: skip
    path = write_results(NAME, data)
    print(_table(targets))
    print(f"results written to {path}")
    print(final_line(NAME, "serving_path_ttft_ms", ratio, "<=", 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
