"""`python -m autoscaling.simulate --trace FILE.csv --policy NAME [--calendar FILE] [--profile FILE]
[--time-scale X] [--rate-scale Y] --json OUT [--png OUT]`: compare autoscaling policies at any scale.

Policies: ray-default, kpa, surge, surge+calendar (autoscaling/baselines.py, autoscaling/policy.py).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ray.serve.config import AutoscalingConfig

from autoscaling.baselines import KpaPolicy, ray_default_config, ray_default_policy
from autoscaling.policy import SurgePolicy
from autoscaling.profiles import PROFILE_DIR, EngineProfile, load_profile
from autoscaling.simulator import PolicySetup, SimResult, simulate
from autoscaling.traces import DEFAULT_TIERS, Arrival, load_trace, offered_rps

__all__ = ["POLICIES", "build_policy", "default_profile", "main", "summarize"]

POLICIES = ("ray-default", "kpa", "surge", "surge+calendar")
DEFAULT_ORIGIN = "2026-11-27T07:50:00+00:00"


def default_profile() -> EngineProfile:
    """The profile measured here when `python -m autoscaling.profile` has run, else the H100 one."""
    measured = PROFILE_DIR / "local-vllm-cpu.json"
    return load_profile(str(measured) if measured.exists() else "h100-llama3.1-8b")


def build_policy(name: str, profile: EngineProfile, *, min_replicas: int = 1, max_replicas: int = 16,
                 calendar: str | None = None, origin_s: float = 0.0) -> PolicySetup:  # fmt: skip
    """The policy object and its Serve AutoscalingConfig, as a pool would be deployed with it."""
    target = max(1.0, profile.max_ongoing_requests / 2)
    bounds = {"min_replicas": min_replicas, "max_replicas": max_replicas, "initial_replicas": min_replicas}
    if name == "ray-default":
        return PolicySetup(name, ray_default_policy, ray_default_config(min_replicas, max_replicas, target), False,
                           origin_s=origin_s)  # fmt: skip
    no_delays = AutoscalingConfig(**bounds, upscale_delay_s=0, downscale_delay_s=0, look_back_period_s=5,
                                  metrics_interval_s=1)
    if name == "kpa":
        kpa_config = no_delays.model_copy(update={"look_back_period_s": 1.0})
        return PolicySetup(name, KpaPolicy(target), kpa_config, False, origin_s=origin_s)
    if name not in ("surge", "surge+calendar"):
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if name == "surge+calendar" and not calendar:
        raise ValueError("surge+calendar needs --calendar FILE")
    policy = SurgePolicy(
        pool="sim", deployment="pool-sim", min_replicas=min_replicas, max_replicas=max_replicas,
        target_per_replica=target, cold_start_s=profile.cold_start_s,
        calendar=calendar if name == "surge+calendar" else None,
    )  # fmt: skip
    return PolicySetup(name, policy, no_delays, True, origin_s=origin_s)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(name: str, arrivals: list[Arrival], result: SimResult) -> dict[str, Any]:
    """The JSON the CLI writes: TTFT percentiles overall and by tier, SLO attainment, shedding, cost."""
    ttfts = {t.name: [] for t in DEFAULT_TIERS}  # type: dict[str, list[float]]
    for r in result.requests:
        if r.first_token_s is not None:
            ttfts.setdefault(r.arrival.tier.name, []).append(r.first_token_s - r.arrival.t_s)
    offered = {t.name: sum(1 for a in arrivals if a.tier.name == t.name) for t in DEFAULT_TIERS}
    shed = {t.name: sum(1 for a in result.shed if a.tier.name == t.name) for t in DEFAULT_TIERS}
    slo = {t.name: t.ttft_slo_s for t in DEFAULT_TIERS}
    every = [x for values in ttfts.values() for x in values]
    return {
        "policy": name,
        "requests": len(arrivals),
        "ttft_p50_s": _quantile(every, 0.5),
        "ttft_p99_s": _quantile(every, 0.99),
        "ttft_p99_s_by_tier": {tier: _quantile(v, 0.99) for tier, v in ttfts.items()},
        "ttft_p50_s_by_tier": {tier: _quantile(v, 0.5) for tier, v in ttfts.items()},
        # Shed requests count as misses: the promise is about everyone who asked.
        "slo_attainment_by_tier": {
            tier: (sum(1 for x in v if x <= slo[tier]) / offered[tier]) if offered[tier] else None
            for tier, v in ttfts.items()
        },
        "ttft_slo_s_by_tier": slo,
        "shed_fraction_by_tier": {tier: (shed[tier] / offered[tier]) if offered[tier] else 0.0 for tier in shed},
        "gpu_hours": result.gpu_hours,
        "max_replicas": result.max_replicas,
        "scaling_decisions": result.decisions[:200],
    }


def _ttft_series(result: SimResult, bucket_s: float) -> dict[str, list[tuple[float, float]]]:
    """p90 TTFT per tier per bucket of arrival time (for the plot)."""
    buckets: dict[str, dict[int, list[float]]] = {}
    for r in result.requests:
        if r.first_token_s is not None:
            per = buckets.setdefault(r.arrival.tier.name, {})
            per.setdefault(int(r.arrival.t_s // bucket_s), []).append(r.first_token_s - r.arrival.t_s)
    return {tier: [(b * bucket_s, _quantile(v, 0.9) or 0.0) for b, v in sorted(per.items())]
            for tier, per in buckets.items()}  # fmt: skip


def plot(path: str | Path, name: str, arrivals: list[Arrival], result: SimResult) -> None:
    """Offered load, replicas, queue and TTFT per tier over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    bucket = 10.0
    rates = offered_rps(arrivals, bucket)
    axes[0].plot([i * bucket for i in range(len(rates))], rates)
    axes[0].set_ylabel("offered req/s")
    times = [p["t_s"] for p in result.timeline]
    axes[1].plot(times, [p["replicas"] for p in result.timeline], label="serving")
    axes[1].plot(times, [p["target"] for p in result.timeline], label="target", linestyle="--")
    axes[1].set_ylabel("replicas")
    axes[1].legend()
    axes[2].plot(times, [p["queue"] for p in result.timeline])
    axes[2].set_ylabel("queued requests")
    for tier, series in _ttft_series(result, 30.0).items():
        axes[3].plot([t for t, _ in series], [v for _, v in series], label=tier)
    axes[3].set_yscale("log")
    axes[3].set_ylabel("TTFT p90 (s)")
    axes[3].set_xlabel("time (s)")
    axes[3].legend()
    fig.suptitle(f"policy {name}: GPU-hours {result.gpu_hours:.2f}, max replicas {result.max_replicas}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = load_profile(args.profile) if args.profile else default_profile()
    origin_s = datetime.fromisoformat(args.origin).timestamp()
    arrivals = load_trace(args.trace, time_scale=args.time_scale, rate_scale=args.rate_scale, seed=args.seed)
    setup = build_policy(args.policy, profile, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                         calendar=args.calendar, origin_s=origin_s)  # fmt: skip
    result = simulate(arrivals, profile, setup)
    summary = {**summarize(args.policy, arrivals, result), "profile": profile.name, "trace": str(args.trace),
               "time_scale": args.time_scale, "rate_scale": args.rate_scale}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.png:
        plot(args.png, args.policy, arrivals, result)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autoscaling.simulate", description=__doc__.split("\n")[0])
    p.add_argument("--trace", required=True, help="t_s,rps or TIMESTAMP,ContextTokens,GeneratedTokens CSV")
    p.add_argument("--policy", required=True, choices=POLICIES)
    p.add_argument("--calendar", help="promo calendar YAML (surge+calendar)")
    p.add_argument("--profile", help="engine profile: a JSON file or a name (h100-llama3.1-8b, a100-llama3.1-8b)")
    p.add_argument("--time-scale", type=float, default=1.0, help="play the trace X times faster")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the request rate by Y")
    p.add_argument("--json", required=True)
    p.add_argument("--png")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=16)
    p.add_argument("--origin", default=DEFAULT_ORIGIN, help="wall time of the trace's t=0 (for calendars)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    summary = run(parser().parse_args(argv))
    by_tier = summary["ttft_p99_s_by_tier"]
    print(f"{summary['policy']}: ttft p99 {summary['ttft_p99_s']} s by tier {by_tier}; "
          f"gpu_hours {summary['gpu_hours']:.3f}, max replicas {summary['max_replicas']}")  # fmt: skip


if __name__ == "__main__":
    main()
