"""The compressed promo day against surge and against Ray Serve LLM: who keeps the top tier's TTFT through a 10x spike.

    python -m benchmarks.promo_day [--quick] [--ray-mode haproxy|default]

The load-test issue's scenario and users (`python -m loadtests run --scenario promo-day`, Locust in a process of
its own): a baseline, a countdown ramp to 2x, a flash sale to 10x within a minute, a plateau and the decay, all
compressed; conversations from loadtests/data, tiers mixed (free 60 % at priority 4, pro 30 % at 2, enterprise
10 % at 1, each request carrying its tier's priority). Same engine capacity on both: one replica of the same tiny
model with the same engine arguments and threads. surge runs `make run`'s config (admission on, a SQLite key
store in a temp dir, one key per tier, the tiers' rate limits and quotas lifted since one key stands for a whole
tier's users here: what refuses is surge's load shedding, not a per-key quota). Ray Serve LLM
(`build_openai_app`, benchmarks/_ray_serve_llm.py) receives the same bodies, priorities included.

Per target and tier: success rate and TTFT p50/p99 over the run and through the spike (where the offered rate is
at least half its peak), what the refused clients were told (status and message), a timeline. Ratio: surge's
top-tier (enterprise) TTFT p99 through the spike over Ray Serve LLM's, goal <= 0.2 with surge's top-tier success
rate >= 99 %. Writes benchmarks/results/promo_day.json and promo_day.png; last line
`promo_day: top_tier_ttft_p99 ratio=<x> goal<=0.2`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import (
    RESULTS_DIR,
    RunClock,
    final_line,
    goal_met,
    quick_parser,
    quiet_logs,
    run_part,
    write_results,
)  # fmt: skip
from benchmarks._ray_serve_llm import Mode, ray_serve_llm
from benchmarks._versus import ratio, refusals, tier_window, timeline, window_of
from cluster.config import SurgeConfig, TierConfig, load_config
from cluster.serving import free_port, isolate_serve_ports, serving

__all__ = ["FULL", "QUICK", "TIERS", "TOP_TIER", "Plan", "loadtest_command", "main", "verdict"]

NAME = "promo_day"
TIERS = "free=0.6@4,pro=0.3@2,enterprise=0.1@1"
TOP_TIER = "enterprise"
RATIO_GOAL, SUCCESS_GOAL = 0.2, 0.99
SPIKE_FRACTION = 0.5  # "through the spike": where the offered rate is at least half its peak


@dataclass(frozen=True)
class Plan:
    """The day's baseline rate, its compression (profile seconds per run second) and the requests' size."""

    base_rps: float
    compress: float
    max_tokens: int = 32
    max_users: int = 256
    bins: int = 40
    startup_timeout_s: float = 900.0


# The day is 5,460 profile seconds: 45 s of run in quick mode, 137 s in full.
QUICK = Plan(base_rps=3.0, compress=120)
FULL = Plan(base_rps=3.0, compress=40)


def loadtest_command(plan: Plan, url: str, report_dir: Path, keys_file: Path, model: str) -> list[str]:
    """`python -m loadtests run` for the promo day against `url`."""
    return [
        sys.executable, "-m", "loadtests", "run", "--scenario", "promo-day", "--host", url,
        "--report", str(report_dir), "--keys", str(keys_file), "--tiers", TIERS, "--model", model,
        "--rate", f"{plan.base_rps:g}", "--compress", f"{plan.compress:g}", "--max-tokens", str(plan.max_tokens),
        "--max-users", str(plan.max_users), "--seed", "0",
    ]  # fmt: skip


def _lifted(tier: TierConfig) -> TierConfig:
    return tier.model_copy(update={"rpm": 10**9, "tpm": 10**12, "daily_token_quota": 10**15,
                                   "daily_call_quota": None, "monthly_call_quota": None,
                                   "monthly_token_quota": None})  # fmt: skip


def _surge_config(base: SurgeConfig, dsn: str) -> SurgeConfig:
    tiers = {name: _lifted(tier) for name, tier in base.admission.tiers.items()}
    admission = base.admission.model_copy(update={"key_store_dsn": dsn, "tiers": tiers})
    server = base.server.model_copy(update={"port": free_port()})
    metrics = base.observability.metrics.model_copy(update={"export_port": free_port()})
    observability = base.observability.model_copy(update={"metrics": metrics})
    return base.model_copy(update={"admission": admission, "server": server, "observability": observability})


async def _create_keys(dsn: str, tiers: list[str]) -> dict[str, str]:
    from deployments.admission import open_store

    async with await open_store(dsn) as store:
        return {tier: (await store.create_key(f"promo-{tier}", tier))[1] for tier in tiers}


@contextmanager
def _surge(base: SurgeConfig, timeout_s: float, workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    isolate_serve_ports()
    dsn = f"sqlite:///{workdir / 'keys.db'}"
    keys = asyncio.run(_create_keys(dsn, [t.split("=")[0] for t in TIERS.split(",")]))
    with serving(_surge_config(base, dsn), startup_timeout_s=timeout_s) as url:
        yield url, keys


@contextmanager
def _ray(base: SurgeConfig, mode: Mode, timeout_s: float) -> Iterator[tuple[str, dict[str, str]]]:
    with ray_serve_llm(base.pools[0], mode, base.server, base.ray.num_cpus, timeout_s) as (url, _):
        yield url, {t.split("=")[0]: "unused" for t in TIERS.split(",")}  # Ray Serve LLM checks no key


def _warm_up(url: str, model: str, key: str) -> None:
    from benchmarks._loadgen import LoadSpec, send_load

    send_load(LoadSpec(url=url, model=model, api_key=key, concurrency=4, requests=16, tag="warmup"))


def _day(plan: Plan, url: str, keys: dict[str, str], model: str, workdir: Path) -> dict[str, Any]:
    from loadtests.report import rate_summary, read_records

    report_dir, keys_file = workdir / "report", workdir / "keys.json"
    keys_file.write_text(json.dumps(keys))  # JSON is YAML: the loadtests keys file
    done = subprocess.run(loadtest_command(plan, url, report_dir, keys_file, model), capture_output=True, text=True,
                          check=False, timeout=5460 / plan.compress + 600)  # fmt: skip
    if done.returncode not in (0, 1):  # 1: an SLO of the load test's own failed, which is expected here
        raise RuntimeError(f"loadtests exited {done.returncode}: {done.stderr[-2000:]}")
    log, objects = read_records(report_dir)
    records = [r.to_json() for r in objects]
    spike = window_of(log.target, SPIKE_FRACTION)
    bin_s = log.duration_s / plan.bins
    tiers = sorted({r["tier"] for r in records})
    return {
        "loadtest_exit_code": done.returncode, "rates": rate_summary(log, objects), "spike_window_s": spike,
        "tiers": tier_window(records), "tiers_spike": tier_window(records, *spike), "refusals": refusals(records),
        "bin_s": bin_s, "timeline": {"all": timeline(records, bin_s),
                                     "tiers": {t: timeline(records, bin_s, t) for t in tiers}},
    }  # fmt: skip


def _target(plan: Plan, serve: Callable[[Path], AbstractContextManager[tuple[str, dict[str, str]]]],
            model: str) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="surge-promo-day-") as tmp:
        start = time.perf_counter()
        with serve(Path(tmp)) as (url, keys):
            startup_s = time.perf_counter() - start
            _warm_up(url, model, keys[TOP_TIER])
            return {"startup_s": startup_s, **_day(plan, url, keys, model, Path(tmp))}


def verdict(runs: dict[str, Any], ray_name: str) -> dict[str, Any]:
    """surge's top-tier TTFT p99 through the spike over Ray Serve LLM's, and surge's top-tier success rate."""
    ours = runs.get("surge", {}).get("tiers_spike", {}).get(TOP_TIER, {})
    theirs = runs.get(ray_name, {}).get("tiers_spike", {}).get(TOP_TIER, {})
    value = ratio(ours.get("ttft_p99_s"), theirs.get("ttft_p99_s"))
    success = ours.get("success_rate")
    success_met = success is not None and success >= SUCCESS_GOAL
    return {"metric": f"{TOP_TIER} TTFT p99 through the spike, surge / {ray_name}", "ratio": value,
            "goal": f"<={RATIO_GOAL}", "surge_top_tier_success_rate": success,
            "success_goal": f">={SUCCESS_GOAL}", "met": goal_met(value, "<=", RATIO_GOAL) and success_met}  # fmt: skip


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = quick_parser(__doc__, "the day compressed to 45 s per target, about 5 minutes in total")
    parser.add_argument("--ray-mode", choices=["haproxy", "default"], default="haproxy",
                        help="Ray Serve LLM's front door (default: its HAProxy throughput mode)")  # fmt: skip
    return parser.parse_args(argv)


def _print(runs: dict[str, Any]) -> None:
    for name, run in runs.items():
        if "error" in run:
            print(f"{name}: FAILED")
            continue
        for tier, row in run["tiers_spike"].items():
            p50, p99 = (row[k] * 1000 if row[k] is not None else float("nan") for k in ("ttft_p50_s", "ttft_p99_s"))
            print(f"{name:24s} {tier:10s} spike: {row['ok']}/{row['requests']} ok ({100 * row['success_rate']:.1f} %)"
                  f" TTFT p50 {p50:.0f} ms p99 {p99:.0f} ms  statuses {row['statuses']}")  # fmt: skip
        print(f"{name:24s} refusals: {json.dumps(run['refusals'])[:400]}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quiet_logs()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    plan = QUICK if args.quick else FULL
    base = load_config()
    model, timeout_s = base.pools[0].model_id, plan.startup_timeout_s
    ray_name = f"ray_serve_llm_{args.ray_mode}"
    clock = RunClock(NAME, args.quick)
    runs = {
        "surge": run_part(NAME, "surge", lambda: _target(plan, lambda d: _surge(base, timeout_s, d), model)),
        ray_name: run_part(NAME, ray_name, lambda: _target(plan, lambda _: _ray(base, args.ray_mode, timeout_s),
                                                           model)),
    }  # fmt: skip
    result = verdict(runs, ray_name)
    data = {**clock.header(), "config": {"plan": asdict(plan), "tiers": TIERS, "spike_fraction": SPIKE_FRACTION},
            "runs": runs, "ratio": result}  # fmt: skip
    path = write_results(NAME, data)
    from benchmarks._versus_plots import plot_promo_day

    plot = plot_promo_day(runs, RESULTS_DIR / f"{NAME}.png")
    _print(runs)
    print(f"results written to {path}, plot {plot}")
    print(f"  surge top-tier success rate through the spike: {result['surge_top_tier_success_rate']}")
    print(final_line(NAME, "top_tier_ttft_p99", result["ratio"], "<=", RATIO_GOAL))
    return 1 if any("error" in r for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
