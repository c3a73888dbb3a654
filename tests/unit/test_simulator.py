"""The autoscaling simulator: trace formats, the replica model, Serve's own policy and delays, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from autoscaling.baselines import ray_default_config, ray_serve_defaults
from autoscaling.profiles import GPU_PROFILES, EngineProfile, load_profile
from autoscaling.simulate import build_policy, main
from autoscaling.simulator import simulate
from autoscaling.traces import DEFAULT_TIERS, Arrival, load_trace
from tests.unit.test_sim_host import fixed

PROFILE = EngineProfile(
    name="test", decode_step_s=[(1, 0.01), (8, 0.02)], prefill_s_per_token=0.0, prefill_base_s=0.0,
    max_num_seqs=8, max_ongoing_requests=8, cold_start_s=30.0,
)  # fmt: skip


def rates_csv(tmp_path: Path, rows: list[tuple[int, float]]) -> Path:
    path = tmp_path / "rates.csv"
    path.write_text("t_s,rps\n" + "".join(f"{t},{r}\n" for t, r in rows))
    return path


def test_a_rate_trace_becomes_poisson_arrivals_at_that_rate(tmp_path: Path) -> None:
    arrivals = load_trace(rates_csv(tmp_path, [(t, 50.0) for t in range(20)]))
    assert 800 < len(arrivals) < 1200
    assert {a.tier.name for a in arrivals} == {t.name for t in DEFAULT_TIERS}


def test_a_per_request_trace_keeps_each_rows_tokens_and_timing(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:50.9951690,396,109\n")  # fmt: skip
    first, second = load_trace(path, time_scale=2.0)
    assert (first.t_s, first.prompt_tokens, first.output_tokens) == (0.0, 374, 44)
    assert second.t_s == pytest.approx((50.9951690 - 46.6805900) / 2)


def test_rate_scale_multiplies_a_per_request_trace(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{s:02d}.0000000,10,10\n" for s in range(40)))  # fmt: skip
    assert len(load_trace(path, rate_scale=3.0)) == 120


def test_an_unknown_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="neither"):
        load_trace(path)


def test_every_admitted_request_finishes_with_its_tokens() -> None:
    tier = DEFAULT_TIERS[0]
    arrivals = [Arrival(i * 0.05, 100, 20, tier) for i in range(200)]
    result = simulate(arrivals, PROFILE, build_policy("surge", PROFILE, max_replicas=4))
    assert len(result.requests) + len(result.shed) == 200
    assert all(r.done_s is not None and r.generated == 20 for r in result.requests)
    assert all(r.first_token_s is not None and r.first_token_s >= r.arrival.t_s for r in result.requests)


def test_ray_default_uses_the_installed_rays_delays() -> None:
    config = ray_default_config(1, 4, 10)
    defaults = ray_serve_defaults()
    assert (config.upscale_delay_s, config.downscale_delay_s) == (defaults["upscale_delay_s"],
                                                                  defaults["downscale_delay_s"])  # fmt: skip
    assert defaults["upscale_delay_s"] == 30.0 and config.target_ongoing_requests == 10


def test_ray_default_waits_its_upscale_delay_and_surge_does_not() -> None:
    tier = DEFAULT_TIERS[0]
    burst = [Arrival(1.0 + i * 0.01, 10, 400, tier) for i in range(200)]
    first_up = {}
    for name in ("ray-default", "surge"):
        result = simulate(burst, PROFILE, build_policy(name, PROFILE, max_replicas=8))
        first_up[name] = min(d["t_s"] for d in result.decisions if d["replicas"] > 1)
    assert first_up["surge"] < 5 and first_up["ray-default"] >= 30


def test_gpu_profiles_cite_their_sources() -> None:
    assert all(p.source.startswith(("InferenceBench", "vLLM")) and "http" in p.source for p in GPU_PROFILES.values())
    assert load_profile("h100-llama3.1-8b").step_s(16) == pytest.approx(0.01094)


@pytest.mark.parametrize("policy", ["ray-default", "kpa", "surge", "surge+calendar"])
def test_the_cli_writes_the_specified_json_and_a_png(tmp_path: Path, policy: str) -> None:
    trace = rates_csv(tmp_path, [(t, 5.0 if t < 20 else 40.0) for t in range(60)])
    calendar = Path(__file__).resolve().parents[2] / "autoscaling" / "traces_data" / "promo-day.calendar.yaml"
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    main(["--trace", str(trace), "--policy", policy, "--calendar", str(calendar), "--profile", "h100-llama3.1-8b",
          "--time-scale", "2", "--rate-scale", "1.5", "--json", str(out), "--png", str(png)])  # fmt: skip
    summary = json.loads(out.read_text())
    keys = {"policy", "ttft_p50_s", "ttft_p99_s", "ttft_p99_s_by_tier", "slo_attainment_by_tier",
            "shed_fraction_by_tier", "gpu_hours", "max_replicas"}  # fmt: skip
    assert keys <= set(summary) and summary["policy"] == policy
    assert png.stat().st_size > 10_000


def test_a_burst_shorter_than_the_default_tick_reaches_a_policy_ticking_at_serves_interval() -> None:
    from ray.serve.config import AutoscalingConfig

    from autoscaling.simulator import PolicySetup

    seen: list[float] = []

    def watch(ctx: Any) -> tuple[int, dict[str, Any]]:
        seen.append(float(ctx.total_num_requests))
        return 1, {}

    config = AutoscalingConfig(min_replicas=1, max_replicas=1, initial_replicas=1, look_back_period_s=0.1,
                               metrics_interval_s=0.05)  # fmt: skip
    burst = [Arrival(0.05, 10, 10, DEFAULT_TIERS[0]) for _ in range(6)]  # done ~0.15 s later
    for tick_s, sees in ((0.5, False), (0.1, True)):
        seen.clear()
        simulate(burst, PROFILE, PolicySetup("watch", watch, config, False, tick_s=tick_s), end_s=1.0)
        assert (max(seen) > 0) is sees


def test_an_oversubscribed_host_delays_each_requests_first_token_by_the_busy_host_delay() -> None:
    # one request beside three CPU hogs on 2 cores: demand 3 cores (the engine is idle when it is sent)
    hosted = dataclasses.replace(PROFILE, host_cores=2.0, engine_cores=1.0)
    one = [Arrival(0.0, 10, 2, DEFAULT_TIERS[0])]

    def ttft_s(profile: EngineProfile, hogs: int) -> float:
        request = simulate(one, profile, fixed(1), end_s=0.0, cpu_hogs=hogs).requests[0]
        return float(request.first_token_s or 0.0)

    delayed = dataclasses.replace(hosted, busy_host_delay_s=0.1)
    assert abs(ttft_s(delayed, 3) - ttft_s(hosted, 3) - 0.05) < 1e-9
    assert ttft_s(delayed, 0) == ttft_s(hosted, 0)  # a host with cores to spare adds nothing
    gpu = GPU_PROFILES["h100-llama3.1-8b"]
    assert ttft_s(dataclasses.replace(gpu, busy_host_delay_s=0.1), 3) == ttft_s(gpu, 3)
