"""Prefix-cache affinity against Serve's default replica choice, on a shared-system-prompt workload.

    python -m benchmarks.prefix_routing [--quick]

Forty long, distinct system prompts; each request is a "user" picking one (uniformly, seeded) plus a
short question of its own, streamed with a few fixed output tokens. The same workload runs twice, each
time on a fresh app: pool `main` (the `small` model, 2 replicas, prefix caching) routed by Ray Serve's power
of two choices, then by surge's PrefixAffinityRouter. Each replica's KV cache is sized from the model so
that the prompts' cached prefixes overflow one replica but fit the pool: only affinity keeps them all.
Headline: the prefix run's TTFT p50 over the default run's (goal <= 0.4).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

import httpx

from benchmarks._common import (
    LoadResult,
    RequestResult,
    RunClock,
    cpu_usage,
    final_line,
    format_table,
    goal_met,
    http_sender,
    percentile,
    quick_parser,
    quiet_logs,
    run_closed_loop,
    run_part,
    summarize,
    write_results,
)
from cluster.config import PoolConfig, SurgeConfig, load_config
from cluster.env import engine_env
from cluster.serving import free_port, isolate_serve_ports, wait_ready
from cluster.tiny_model import build, model_dir

__all__ = ["FULL", "QUICK", "Plan", "Workload", "kv_sizing", "main", "system_prompts", "user_requests"]

NAME = "prefix_routing"
GOAL = 0.4
Router = Literal["power_of_two", "prefix"]
RUNS: tuple[Router, ...] = ("power_of_two", "prefix")  # baseline first
# The model where a prefix-cache hit saves most of TTFT (notes/vllm-cpu.md: cached/cold TTFT 0.08, mid 0.18).
MODEL = "small"
MODEL_DIR = model_dir(MODEL)
SERVED_NAME = f"surge-{MODEL}"
BLOCK_TOKENS = 128  # vLLM's KV block on CPU; only whole blocks are cached and shared


@dataclass(frozen=True)
class Plan:
    """The workload and the load put on each run."""

    requests: int
    # Four clients keep the 2-core machine busy without a standing queue, so TTFT shows prefill rather than
    # waiting (at 6 the ratio was 0.49: both runs mostly queue).
    concurrency: int = 4
    # Forty, not twenty: the rendezvous hash splits few prompts unevenly between 2 replicas (70/30 was seen
    # with 20), overflowing the busier one's KV cache.
    num_prompts: int = 40
    prompt_tokens: tuple[int, int] = (600, 900)  # each system prompt's length, drawn uniformly
    max_tokens: int = 6
    # One replica's KV cache as a share of the prompts' cached prefixes: above 0.5 the pool holds them
    # all (with room for in-flight requests and an uneven hash split), below 1 one replica cannot.
    kv_share: float = 0.7
    seed: int = 7
    readyz_samples: int = 6
    startup_timeout_s: float = 180.0


QUICK = Plan(requests=320)
FULL = Plan(requests=1500)


@dataclass(frozen=True)
class Workload:
    """The system prompts, their shared prefix lengths in tokens, and the requests built from them."""

    prompts: list[str]
    prefix_tokens: list[int]
    warmup: list[dict[str, Any]]
    load: list[dict[str, Any]]
    load_prompt_ids: list[int]  # which system prompt each load request carries


# Words the models' byte-level tokenizer mostly knows whole (it was trained on support-desk text).
_WORD_TEXT = (
    "order parcel return customer email item delivery refund account address payment invoice shipping "
    "warehouse courier tracking number week day store card support team policy label package receipt "
    "replace damaged missing late early size colour price discount voucher member premium standard "
    "express weekend holiday morning evening service request update status confirm cancel change please "
    "thank you we will can your our the a of to in on for with at by from is are be as it this that"
)
_WORDS = _WORD_TEXT.split()


def system_prompts(plan: Plan, tokenizer: Any) -> list[str]:
    """`plan.num_prompts` distinct system prompts of the planned token lengths (seeded)."""
    rng = random.Random(plan.seed)
    prompts: list[str] = []
    for i in range(plan.num_prompts):
        target = rng.randint(*plan.prompt_tokens)
        # Distinct from the first word on, so no two prompts share a cached block.
        words = [f"Desk {i}:", *rng.sample(_WORDS, 12)]
        while len(tokenizer.encode(" ".join(words)).ids) < target:
            words += rng.choices(_WORDS, k=16)
        while len(tokenizer.encode(" ".join(words)).ids) > target:
            words.pop()
        prompts.append(" ".join(words))
    return prompts


def user_requests(plan: Plan, count: int, tag: str) -> list[tuple[int, str]]:
    """`count` (system prompt index, question) pairs: uniform prompt choice, a distinct short question."""
    rng = random.Random(f"{plan.seed}-{tag}")
    return [
        (rng.randrange(plan.num_prompts), f"{tag} user {i}: " + " ".join(rng.choices(_WORDS, k=rng.randint(6, 14))))
        for i in range(count)
    ]


def _payloads(plan: Plan, prompts: list[str], requests: list[tuple[int, str]], model: str) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "messages": [{"role": "system", "content": prompts[p]}, {"role": "user", "content": question}],
            "max_tokens": plan.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for p, question in requests
    ]


def _prefix_tokens(tokenizer: Any, prompt: str) -> int:
    # What every request with this system prompt shares, rendered as the model's chat template does.
    text = f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{prompt.strip()}<|eot_id|>"
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def kv_sizing(prefix_tokens: list[int], model_config: dict[str, Any], kv_share: float) -> dict[str, Any]:
    """KV bytes per replica: `kv_share` of the blocks the prompts' shared prefixes fill (float32 cache)."""
    layers, kv_heads = model_config["num_hidden_layers"], model_config["num_key_value_heads"]
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // model_config["num_attention_heads"]
    bytes_per_token = 2 * layers * kv_heads * head_dim * 4  # K and V, float32
    working_set_blocks = sum(n // BLOCK_TOKENS for n in prefix_tokens)
    replica_blocks = math.ceil(working_set_blocks * kv_share)
    return {
        "kv_bytes_per_token": bytes_per_token,
        "block_tokens": BLOCK_TOKENS,
        "block_bytes": bytes_per_token * BLOCK_TOKENS,
        "prefix_tokens": prefix_tokens,
        "working_set_blocks": working_set_blocks,
        "replica_blocks": replica_blocks,
        "kv_cache_memory_bytes": replica_blocks * bytes_per_token * BLOCK_TOKENS,
        "working_set_over_one_replica": working_set_blocks / replica_blocks,
        "working_set_over_pool": working_set_blocks / (2 * replica_blocks),
    }


def _surge_config(kv_bytes: int, router: Router) -> SurgeConfig:
    """configs/local.yaml with pool `main` replaced by the benchmark's model on 2 one-thread replicas; admission
    (keys, quotas, response cache) off: this measures replica choice."""
    base = load_config()
    pool = PoolConfig(
        name="main", model=str(MODEL_DIR), served_model_name=SERVED_NAME, num_replicas=2, engine_threads=1,
        request_router=router, max_ongoing_requests=base.pools[0].max_ongoing_requests,
        engine_args={
            "dtype": "float32", "enforce_eager": True, "max_model_len": 2048,
            "enable_prefix_caching": True, "kv_cache_memory_bytes": kv_bytes,
        },
    )  # fmt: skip
    server = base.server.model_copy(update={"port": free_port(), "proxy": "haproxy"})
    cache = base.admission.cache.model_copy(update={"enabled": False})
    admission = base.admission.model_copy(update={"enabled": False, "cache": cache})
    return base.model_copy(update={"server": server, "admission": admission, "pools": [pool]})


def _cache_stats(results: list[RequestResult]) -> dict[str, Any]:
    """Client-side prefix cache hits from each response's usage, and TTFT of hits against misses."""
    ok = [r for r in results if r.error is None and r.prompt_tokens]
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    hits = [r for r in ok if r.cached_tokens]
    misses = [r for r in ok if not r.cached_tokens]

    def ttft_p50(rs: list[RequestResult]) -> float | None:
        values = [r.ttft_s for r in rs if r.ttft_s is not None]
        return percentile(values, 50) if values else None

    return {
        "cached_token_share": sum(r.cached_tokens or 0 for r in ok) / prompt if prompt else None,
        "requests_with_hit_share": len(hits) / len(ok) if ok else None,
        "prompt_tokens_mean": prompt / len(ok) if ok else None,
        "ttft_p50_hit_s": ttft_p50(hits),
        "ttft_p50_miss_s": ttft_p50(misses),
    }


def _replica_shares(results: list[RequestResult]) -> dict[str, float]:
    served = [r.replica or "unknown" for r in results if r.error is None]
    return {replica: served.count(replica) / len(served) for replica in sorted(set(served))}


def _affinity(by_index: dict[int, RequestResult], prompt_ids: list[int]) -> dict[str, Any]:
    """How consistently each system prompt went to one replica: the share of requests served by their
    prompt's most frequent replica (0.5 to 1 with 2 replicas), and how many prompts each replica owns."""
    served: dict[int, list[str]] = {}
    for i, result in by_index.items():
        if result.error is None and result.replica:
            served.setdefault(prompt_ids[i], []).append(result.replica)
    owners = {p: max(set(rs), key=rs.count) for p, rs in served.items()}
    on_owner = sum(rs.count(owners[p]) for p, rs in served.items())
    total = sum(len(rs) for rs in served.values())
    owned = {r: list(owners.values()).count(r) for r in sorted(set(owners.values()))}
    return {"requests_on_prompt_owner_share": on_owner / total if total else None, "prompts_owned": owned}


async def _readyz_samples(client: httpx.AsyncClient, url: str, count: int) -> list[dict[str, Any]]:
    """Pool stats from /readyz; each call reaches one replica (counters since start, warm-up included)."""
    samples = []
    for _ in range(count):
        response = await client.get(f"{url}/readyz")
        samples.append(response.json().get("pools", {}).get("main", {}))
    return samples


async def _drive(url: str, plan: Plan, work: Workload) -> dict[str, Any]:
    """One unrecorded pass over the system prompts, then the recorded closed-loop run."""
    limits = httpx.Limits(max_connections=plan.concurrency + 4)
    by_index: dict[int, RequestResult] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
        endpoint = f"{url}/v1/chat/completions"
        warm = await run_closed_loop(http_sender(client, endpoint, work.warmup), len(work.warmup), plan.concurrency)
        send = http_sender(client, endpoint, work.load)

        async def send_and_keep(i: int) -> RequestResult:
            by_index[i] = await send(i)
            return by_index[i]

        with cpu_usage() as cpu:
            measured: LoadResult = await run_closed_loop(send_and_keep, len(work.load), plan.concurrency)
        readyz = await _readyz_samples(client, url, plan.readyz_samples)
    return summarize(measured) | {
        "cpu": cpu,
        "warmup_errors": sum(r.error is not None for r in warm.requests),
        "replica_share": _replica_shares(measured.requests),
        "affinity": _affinity(by_index, work.load_prompt_ids),
        "cache": _cache_stats(measured.requests),
        "readyz_pool_samples": readyz,
    }


def _run(router: Router, plan: Plan, kv_bytes: int, work: Workload) -> dict[str, Any]:
    """A fresh app with this request router, measured, and torn down."""
    from cluster.serving import serving

    started = time.perf_counter()
    record: dict[str, Any] = {"router": router}
    with serving(_surge_config(kv_bytes, router)) as url:
        wait_ready(url, timeout_s=plan.startup_timeout_s)
        record["startup_s"] = time.perf_counter() - started
        record |= asyncio.run(_drive(url, plan, work))
        stop = time.perf_counter()
    record["shutdown_s"] = time.perf_counter() - stop
    return record


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _table(runs: dict[str, Any]) -> str:
    headers = ["router", "reqs", "err", "ttft p50 ms", "ttft p99 ms", "e2e p50 ms", "e2e p99 ms", "req/s",
               "cached share", "ttft hit ms", "ttft miss ms", "on owner", "replica shares", "other cores"]  # fmt: skip
    rows: list[list[Any]] = []
    for router, run in runs.items():
        if "error" in run:
            rows.append([router, "-", "FAILED", *[None] * (len(headers) - 3)])
            continue
        cache = run["cache"]
        shares = "/".join(f"{s:.2f}" for s in run["replica_share"].values())
        rows.append([
            router, run["requests"], run["errors"], _ms(run["ttft_p50_s"]), _ms(run["ttft_p99_s"]),
            _ms(run["latency_p50_s"]), _ms(run["latency_p99_s"]), run["requests_per_s"],
            cache["cached_token_share"], _ms(cache["ttft_p50_hit_s"]), _ms(cache["ttft_p50_miss_s"]),
            run["affinity"]["requests_on_prompt_owner_share"], shares, run["cpu"]["other_cores"],
        ])  # fmt: skip
    return format_table(headers, rows)


def _ratio(runs: dict[str, Any], key: str) -> float:
    base, prefix = runs["power_of_two"].get(key), runs["prefix"].get(key)
    return float(prefix) / float(base) if base and prefix is not None else math.nan


def _workload(plan: Plan) -> Workload:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    prompts = system_prompts(plan, tokenizer)
    # Warm-up: each system prompt once, in order, with questions of its own.
    warmup = [(i, q) for i, (_, q) in enumerate(user_requests(plan, plan.num_prompts, "warmup"))]
    load = user_requests(plan, plan.requests, "load")
    return Workload(
        prompts=prompts,
        prefix_tokens=[_prefix_tokens(tokenizer, p) for p in prompts],
        warmup=_payloads(plan, prompts, warmup, SERVED_NAME),
        load=_payloads(plan, prompts, load, SERVED_NAME),
        load_prompt_ids=[p for p, _ in load],
    )


def main(argv: list[str] | None = None) -> int:
    parser = quick_parser(__doc__, "fewer requests, under 3 minutes in total")
    args = parser.parse_args(argv)
    quiet_logs()
    isolate_serve_ports()
    plan = QUICK if args.quick else FULL
    build(MODEL)  # a no-op once built
    clock = RunClock(NAME, args.quick)
    work = _workload(plan)
    sizing = kv_sizing(work.prefix_tokens, json.loads((MODEL_DIR / "config.json").read_text()), plan.kv_share)
    kv_bytes = sizing["kv_cache_memory_bytes"]
    runs: dict[str, Any] = {r: run_part(NAME, r, partial(_run, r, plan, kv_bytes, work)) for r in RUNS}
    ratio = _ratio(runs, "ttft_p50_s")
    pool = _surge_config(sizing["kv_cache_memory_bytes"], "prefix").pools[0]
    data = {
        **clock.header(),
        "config": {"plan": asdict(plan), "kv_sizing": sizing, "pool": pool.model_dump(exclude={"request_router"}),
                   "engine_env": engine_env(pool), "proxy": "haproxy", "admission_enabled": False,
                   "system_prompts": work.prompts, "sample_payload": work.load[0]},
        "runs": runs,
        "ratios": {
            "ttft_p50_prefix_over_default": {"ratio": ratio, "goal": f"<={GOAL}", "met": goal_met(ratio, "<=", GOAL)},
            "ttft_p99_prefix_over_default": _ratio(runs, "ttft_p99_s"),
            "latency_p50_prefix_over_default": _ratio(runs, "latency_p50_s"),
            "requests_per_s_prefix_over_default": _ratio(runs, "requests_per_s"),
        },
    }  # fmt: skip
    path = write_results(NAME, data)
    print(_table(runs))
    print(f"results written to {path} in {data['duration_s']:.0f} s")
    print(final_line(NAME, "ttft_p50", ratio, "<=", GOAL))
    return 1 if any("error" in run for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
