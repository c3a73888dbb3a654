"""The side-by-side benchmarks' pure pieces: goodput at an SLO, best-of, spike windows, per-tier summaries,
timelines, refusals, their verdicts, and the Ray Serve LLM target's arguments and environment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks._ray_serve_llm import child_env, mode_env, serving_args
from benchmarks._versus import Slo, best_of, goodput, ratio, refusals, tier_window, timeline, window_of
from cluster.config import load_config

SLO = Slo(ttft_s=1.0, tpot_s=0.05)


def _record(ttft_s: float | None, latency_s: float, tokens: int, error: str | None = None) -> dict[str, Any]:
    return {"ttft_s": ttft_s, "latency_s": latency_s, "output_tokens": tokens, "error": error}


def _sent(sent_s: float, tier: str, status: int = 200, ttft_s: float | None = 0.1,
          error: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"sent_s": sent_s, "tier": tier, "status": status, "ttft_s": ttft_s, "error": error}


def test_a_request_meets_the_slo_only_when_both_its_ttft_and_its_time_per_token_do() -> None:
    assert SLO.met(_record(0.5, 0.5 + 9 * 0.04, 10))
    assert not SLO.met(_record(1.5, 1.6, 10))  # TTFT too long
    assert not SLO.met(_record(0.5, 0.5 + 9 * 0.06, 10))  # too slow per token
    assert not SLO.met(_record(0.1, 0.2, 10, error="HTTP 503"))
    assert not SLO.met(_record(None, 0.2, 0))


def test_goodput_counts_only_the_requests_that_met_the_slo() -> None:
    records = [_record(0.5, 0.8, 10), _record(2.0, 2.3, 10), _record(0.2, 0.4, 6)]
    result = goodput(records, wall_s=2.0, slo=SLO)
    assert result["goodput_rps"] == pytest.approx(1.0)
    assert result["goodput_tok_s"] == pytest.approx(8.0)
    assert result["slo_met_share"] == pytest.approx(2 / 3)


def test_ratio_is_nan_without_a_positive_denominator() -> None:
    assert ratio(3.0, 2.0) == pytest.approx(1.5)
    assert math.isnan(ratio(3.0, 0.0))
    assert math.isnan(ratio(None, 2.0))
    assert math.isnan(ratio(3.0, None))


def test_best_of_picks_the_best_finite_variant() -> None:
    assert best_of({"default": 600.0, "haproxy": 900.0, "broken": None}) == ("haproxy", 900.0)
    assert best_of({"a": 0.2, "b": 0.1}, higher_is_better=False) == ("b", 0.1)
    name, value = best_of({"a": None, "b": math.nan})
    assert name is None and math.isnan(value)


def test_the_spike_window_spans_the_rates_at_least_the_fraction_of_the_peak() -> None:
    rates = [(0.0, 1.0), (1.0, 2.0), (2.0, 10.0), (3.0, 8.0), (4.0, 4.0), (5.0, 1.0)]
    assert window_of(rates, 0.5) == (2.0, 3.0)
    with pytest.raises(ValueError):
        window_of([])


def test_tier_window_summarizes_each_tier_over_the_requests_sent_in_the_window() -> None:
    records = [_sent(1.0, "free"), _sent(2.0, "free", 429, None, "shed"), _sent(2.5, "enterprise", ttft_s=0.3),
               _sent(9.0, "enterprise", ttft_s=5.0)]  # fmt: skip
    window = tier_window(records, 1.5, 3.0)
    assert window["free"] == {"requests": 1, "ok": 0, "success_rate": 0.0, "ttft_p50_s": None,
                              "ttft_p99_s": None, "statuses": {"429": 1}}  # fmt: skip
    assert window["enterprise"]["ttft_p99_s"] == pytest.approx(0.3)
    assert tier_window(records)["enterprise"]["requests"] == 2


def test_timeline_bins_requests_by_send_time_and_counts_refusals() -> None:
    records = [_sent(0.2, "free"), _sent(0.7, "free", 503, None, "busy"), _sent(2.1, "pro", ttft_s=0.4)]
    rows = timeline(records, bin_s=1.0)
    assert [(r["t_s"], r["sent"], r["ok"], r["refused"]) for r in rows] == [(0.0, 2, 1, 1), (2.0, 1, 1, 0)]
    assert [r["t_s"] for r in timeline(records, 1.0, tier="pro")] == [2.0]
    with pytest.raises(ValueError):
        timeline(records, bin_s=0)


def test_refusals_group_what_refused_clients_were_told_by_status() -> None:
    records = [_sent(0, "free", 429, None, "over capacity"), _sent(0, "free", 429, None, "over capacity"),
               _sent(0, "pro", 0, None, "ConnectionError"), _sent(0, "pro")]  # fmt: skip
    assert refusals(records) == {
        "429": {"count": 2, "messages": {"over capacity": 2}},
        "no response": {"count": 1, "messages": {"ConnectionError": 1}},
    }


def test_head_to_head_compares_surge_with_ray_serve_llm_at_its_better_mode() -> None:
    from benchmarks.head_to_head import ratios

    def target(tok_s: float) -> dict[str, Any]:
        return {"levels": {"closed_c64": {"output_tok_s": tok_s}}}

    targets = {"surge": target(1800.0), "vllm_server": target(1500.0), "ray_serve_llm_default": target(600.0),
               "ray_serve_llm_haproxy": target(900.0)}  # fmt: skip
    result = ratios(targets)
    assert result["throughput_vs_ray_serve_llm"]["ratio"] == pytest.approx(2.0)
    assert result["throughput_vs_ray_serve_llm"]["ray_serve_llm_mode"] == "haproxy"
    assert result["throughput_vs_ray_serve_llm"]["met"]
    assert result["throughput_vs_vllm_server"]["ratio"] == pytest.approx(1.2)
    failed = ratios({"surge": target(1800.0), "ray_serve_llm_default": {"error": "boom"}})
    assert math.isnan(failed["throughput_vs_ray_serve_llm"]["ratio"])
    assert not failed["throughput_vs_ray_serve_llm"]["met"]


def test_promo_day_verdict_needs_the_ratio_and_the_top_tier_success_rate() -> None:
    from benchmarks.promo_day import verdict

    def run(p99_s: float, success: float) -> dict[str, Any]:
        return {"tiers_spike": {"enterprise": {"ttft_p99_s": p99_s, "success_rate": success}}}

    assert verdict({"surge": run(0.1, 1.0), "ray": run(1.0, 1.0)}, "ray")["met"]
    assert not verdict({"surge": run(0.1, 0.9), "ray": run(1.0, 1.0)}, "ray")["met"]
    missed = verdict({"surge": run(0.5, 1.0), "ray": run(1.0, 1.0)}, "ray")
    assert missed["ratio"] == pytest.approx(0.5) and not missed["met"]


def test_promo_day_asks_the_load_tests_for_their_promo_day_with_every_tier(tmp_path: Path) -> None:
    from benchmarks.promo_day import QUICK, TIERS, loadtest_command
    from loadtests.cli import build_parser, spec_from_args

    keys = tmp_path / "keys.json"
    keys.write_text('{"free": "k1", "pro": "k2", "enterprise": "k3"}')
    command = loadtest_command(QUICK, "http://127.0.0.1:9", tmp_path / "report", keys, "surge-tiny")
    spec = spec_from_args(build_parser().parse_args(command[3:]))
    assert spec.scenario == "promo-day" and spec.compress == QUICK.compress
    assert set(spec.tiers) == {t.split("=")[0] for t in TIERS.split(",")}
    assert spec.keys["enterprise"] == "k3"


def test_ray_serve_llm_runs_the_pools_engine_on_cpu() -> None:
    from ray.serve.llm import LLMServingArgs

    pool = load_config().pools[0]
    args = LLMServingArgs.model_validate(serving_args(pool))
    config = args.llm_configs[0]
    assert config.model_id == pool.model_id
    assert config.engine_kwargs == pool.engine_args
    assert config.accelerator_config is not None and config.accelerator_config.kind == "cpu"
    assert config.runtime_env is not None
    assert config.runtime_env["env_vars"]["OMP_NUM_THREADS"] == str(pool.engine_threads)
    assert config.deployment_config["max_ongoing_requests"] == pool.max_ongoing_requests


def test_the_haproxy_mode_sets_serves_throughput_mode_and_the_default_mode_does_not() -> None:
    server = load_config().server
    assert mode_env("haproxy", server)["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert mode_env("haproxy", server)["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in mode_env("default", server)


def test_the_child_does_not_inherit_a_serve_mode_exported_earlier_in_this_process() -> None:
    inherited = {"PATH": "/bin", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "SURGE_HAPROXY_PIDFILE": "/tmp/x"}
    env = child_env(inherited, {"RAY_USAGE_STATS_ENABLED": "0"})
    assert env == {"PATH": "/bin", "RAY_USAGE_STATS_ENABLED": "0"}
