"""Autoscaling policies at promo-day scale, in the simulator (no engine: the scale no CPU can serve).

Scenarios, each played with ray-default, kpa, surge and surge+calendar on one engine profile (default: the
H100 Llama-3.1-8B profile from published numbers, autoscaling/profiles.py):

1. `promo-day`: the bundled trace (autoscaling/traces_data/promo-day.csv): baseline, 10x within 60 s, a
   plateau, a decay; tiers mixed 20/30/50 (enterprise/pro/free); the calendar announces the sale.
2. `azure-x10`: the real Azure LLM conversation trace (../shared/traces/), rate-scaled 10x (a promo multiple),
   starting 10 minutes into the simulated day, the calendar announcing it.

Ratio: surge+calendar's top-tier (enterprise) p99 TTFT over ray-default's on the promo day; goal <= 0.1, at
GPU-hours <= 1.1x ray-default's (recorded beside it). `--quick` time-compresses both scenarios 3x.
Writes benchmarks/results/autoscaling.json and one PNG per scenario.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from autoscaling.profiles import load_profile
from autoscaling.simulate import DEFAULT_ORIGIN, POLICIES, build_policy, summarize
from autoscaling.simulator import SimResult, simulate
from autoscaling.traces import Arrival, load_trace, offered_rps
from benchmarks._common import RESULTS_DIR, final_line, goal_met, machine_info, utc_now, write_results
from cluster.config import PROJECT_ROOT

NAME = "autoscaling"
DATA = PROJECT_ROOT / "autoscaling" / "traces_data"
AZURE = PROJECT_ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
AZURE_CALENDAR = """margin_s: 60
events:
  - {name: azure-promo, start: "%s", end: "%s", multiplier: %g, pools: [sim]}
"""
_GOAL, _GPU_GOAL = 0.1, 1.1


def _scenarios(quick: bool, workdir: Path) -> dict[str, tuple[list[Arrival], str]]:
    scale = 3.0 if quick else 1.0
    promo = load_trace(DATA / "promo-day.csv", time_scale=scale)
    scenarios = {"promo-day": (promo, str(DATA / "promo-day.calendar.yaml"))}
    if quick:
        # The quick promo day is compressed 3x: its sale starts at 200 s, not 600 s.
        scenarios["promo-day"] = (promo, _calendar(workdir, "promo-quick", 600 / scale, 2400 / scale, 10))
    if AZURE.exists():
        lead_s = 600.0 / scale
        azure = [dataclasses.replace(a, t_s=a.t_s + lead_s)
                 for a in load_trace(AZURE, time_scale=scale, rate_scale=10.0)]  # fmt: skip
        scenarios["azure-x10"] = (azure, _calendar(workdir, "azure", lead_s, azure[-1].t_s, 10))
    return scenarios


def _calendar(workdir: Path, name: str, start_s: float, end_s: float, multiplier: float) -> str:
    origin = datetime.fromisoformat(DEFAULT_ORIGIN).timestamp()
    iso = [datetime.fromtimestamp(origin + t, tz=datetime.fromisoformat(DEFAULT_ORIGIN).tzinfo).isoformat()
           for t in (start_s, end_s)]  # fmt: skip
    path = workdir / f"{name}.calendar.yaml"
    path.write_text(AZURE_CALENDAR % (iso[0], iso[1], multiplier))
    return str(path)


Runs = dict[str, tuple[dict[str, Any], SimResult]]


def _run_scenario(arrivals: list[Arrival], calendar: str, profile_name: str) -> Runs:
    profile = load_profile(profile_name)
    origin_s = datetime.fromisoformat(DEFAULT_ORIGIN).timestamp()
    runs = {}
    for policy in POLICIES:
        setup = build_policy(policy, profile, max_replicas=16, calendar=calendar, origin_s=origin_s)
        result = simulate(arrivals, profile, setup)
        runs[policy] = (summarize(policy, arrivals, result), result)
        print(f"[{NAME}] {policy}: enterprise p99 {runs[policy][0]['ttft_p99_s_by_tier']['enterprise']} s, "
              f"gpu-hours {result.gpu_hours:.2f}", flush=True)  # fmt: skip
    return runs


def _plot(path: Path, title: str, arrivals: list[Arrival], runs: Runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    rates = offered_rps(arrivals, 10.0)
    axes[0].plot([i * 10.0 for i in range(len(rates))], rates, color="gray")
    axes[0].set_ylabel("offered req/s")
    for policy, (summary, result) in runs.items():
        axes[1].plot([p["t_s"] for p in result.timeline], [p["target"] for p in result.timeline], label=policy)
        buckets: dict[int, list[float]] = {}
        for r in result.requests:
            if r.first_token_s is not None and r.arrival.tier.name == "enterprise":
                buckets.setdefault(int(r.arrival.t_s // 30), []).append(r.first_token_s - r.arrival.t_s)
        series = sorted((b * 30, sorted(v)[int(0.9 * (len(v) - 1))]) for b, v in buckets.items())
        p99 = summary["ttft_p99_s_by_tier"]["enterprise"]
        axes[2].plot([t for t, _ in series], [v for _, v in series],
                     label=f"{policy} (p99 {p99:.2f} s, {summary['gpu_hours']:.1f} GPU-h)")  # fmt: skip
    axes[1].set_ylabel("target replicas")
    axes[1].legend()
    axes[2].set_yscale("log")
    axes[2].set_ylabel("enterprise TTFT p90 (s)")
    axes[2].set_xlabel("time (s)")
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _compare(runs: Runs, baseline: str) -> dict[str, float]:
    top = runs["surge+calendar"][0]["ttft_p99_s_by_tier"]["enterprise"]
    base = runs[baseline][0]["ttft_p99_s_by_tier"]["enterprise"]
    return {
        "top_tier_p99_ratio": top / base if base else math.nan,
        "gpu_hours_ratio": runs["surge+calendar"][0]["gpu_hours"] / runs[baseline][0]["gpu_hours"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.autoscaling", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", default="h100-llama3.1-8b")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="surge-autoscaling-"))  # generated calendars for the scenarios
    results: dict[str, Any] = {"benchmark": NAME, "started_at": utc_now(), "quick": args.quick,
                               "profile": args.profile, "machine": machine_info(), "scenarios": {}}  # fmt: skip
    for name, (arrivals, calendar) in _scenarios(args.quick, workdir).items():
        runs = _run_scenario(arrivals, calendar, args.profile)
        png = RESULTS_DIR / f"{NAME}-{name}.png"
        _plot(png, f"{name} ({len(arrivals)} requests, profile {args.profile})", arrivals, runs)
        results["scenarios"][name] = {
            "policies": {p: s for p, (s, _) in runs.items()},
            "vs_ray_default": _compare(runs, "ray-default"),
            "vs_kpa": _compare(runs, "kpa"),
            "png": str(png.relative_to(PROJECT_ROOT)),
        }
    promo = results["scenarios"]["promo-day"]["vs_ray_default"]
    ratio = promo["top_tier_p99_ratio"]
    results["ratio"] = ratio
    results["goal"] = {"top_tier_p99_ratio_le": _GOAL, "gpu_hours_ratio_le": _GPU_GOAL,
                       "met": goal_met(ratio, "<=", _GOAL) and promo["gpu_hours_ratio"] <= _GPU_GOAL}  # fmt: skip
    write_results(NAME, results)
    print(final_line(NAME, "surge+calendar/ray-default top-tier p99 TTFT", ratio, "<=", _GOAL))


if __name__ == "__main__":
    main()
