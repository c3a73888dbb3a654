"""surge's autoscaling policy: the pure decision, and the adapter Serve calls with its AutoscalingContext."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from autoscaling.decide import PolicyParams, Signals, decide
from autoscaling.policy import SurgePolicy
from cluster.config import PoolAutoscalingConfig, PoolConfig
from deployments.engines.base import EngineStats
from deployments.pool_scaling import POLICY_PATH, policy_kwargs, serve_autoscaling_config
from deployments.replica_load import ReplicaLoad

PARAMS = PolicyParams(min_replicas=1, max_replicas=8, target_per_replica=10, scale_down_delay_s=60)


def signals(**fields: Any) -> Signals:
    base = {"now_s": 1000.0, "running_replicas": 2, "target_replicas": 2, "demand": 15.0}
    return Signals(**{**base, **fields})



def _policy(config: dict[str, Any]) -> SurgePolicy:
    """A pool's policy that hears of no shed: these specs must not read the Ray KV of a test session's app."""
    policy = SurgePolicy(**config["policy"]["policy_kwargs"])
    policy.set_shed_source(lambda: None)
    return policy

def test_demand_beyond_panic_factor_jumps_straight_to_what_the_queue_needs() -> None:
    decision, _ = decide(signals(demand=75), PARAMS, None)  # 75 > 2 x (2 x 10)
    assert decision.replicas == 8 and decision.kind == "panic"
    assert "panic" in decision.reason


def test_demand_above_target_but_below_panic_grows_at_most_double() -> None:
    params = replace(PARAMS, panic_factor=10)
    decision, _ = decide(signals(running_replicas=1, target_replicas=1, demand=35), params, None)
    assert decision.replicas == 2 and decision.kind == "queue"


def test_missing_the_ttft_slo_with_a_queue_in_the_engine_adds_a_replica() -> None:
    decision, _ = decide(signals(ttft_s=3.0, engine_waiting=4), PARAMS, None)
    assert decision.replicas == 3 and decision.kind == "slo"


def test_a_slow_ttft_without_any_queue_does_not_scale() -> None:
    decision, _ = decide(signals(ttft_s=3.0), PARAMS, None)
    assert decision.replicas == 2 and decision.kind == "hold"


def test_scale_down_waits_the_whole_delay_then_removes_one_replica() -> None:
    quiet = signals(running_replicas=4, target_replicas=4, demand=1)
    pending, since = decide(quiet, PARAMS, None)
    assert pending.replicas == 4 and pending.kind == "scale_down_pending" and since == 1000.0
    still, since = decide(replace(quiet, now_s=1059.0), PARAMS, since)
    assert still.replicas == 4 and since == 1000.0
    down, since = decide(replace(quiet, now_s=1060.0), PARAMS, since)
    assert down.replicas == 3 and down.kind == "scale_down"
    again, _ = decide(replace(quiet, now_s=1061.0, target_replicas=3, running_replicas=3), PARAMS, since)
    assert again.replicas == 3  # the next step waits a new delay


def test_demand_back_above_the_line_resets_the_scale_down_timer() -> None:
    _, since = decide(signals(running_replicas=4, target_replicas=4, demand=1), PARAMS, None)
    decision, since = decide(signals(running_replicas=4, target_replicas=4, demand=30, now_s=1100), PARAMS, since)
    assert decision.kind == "hold" and since is None


def test_no_scale_in_while_the_pool_sheds() -> None:
    quiet = signals(running_replicas=4, target_replicas=4, demand=1, shedding=True)
    decision, since = decide(quiet, PARAMS, 0.0)
    assert decision.replicas == 4 and decision.kind == "shedding" and since is None


def test_no_scale_in_while_replicas_are_still_starting() -> None:
    decision, _ = decide(signals(running_replicas=2, target_replicas=4, demand=1), PARAMS, 0.0)
    assert decision.replicas == 4 and decision.kind == "hold"


def test_max_replicas_caps_the_panic_and_says_so() -> None:
    decision, _ = decide(signals(demand=500), replace(PARAMS, max_replicas=5), None)
    assert decision.replicas == 5 and decision.kind == "cap" and "max_replicas 5" in decision.reason


def test_the_calendar_floor_holds_replicas_with_its_reason() -> None:
    decision, _ = decide(signals(demand=0, floor_replicas=6, floor_reason="calendar: sale"), PARAMS, None)
    assert decision.replicas == 6 and decision.kind == "floor" and "calendar: sale" in decision.reason


def test_min_replicas_is_a_floor() -> None:
    idle = signals(running_replicas=1, target_replicas=1, demand=0)
    decision, _ = decide(idle, replace(PARAMS, min_replicas=2), None)
    assert decision.replicas == 2 and decision.kind == "floor"


# The adapter Serve calls


def pool(**scaling: Any) -> PoolConfig:
    return PoolConfig(
        name="main", model="m", max_ongoing_requests=20, autoscaling=PoolAutoscalingConfig(**scaling)
    )


def context(policy_config: dict[str, Any], *, current: int, target: int, total: float, metrics: dict[str, list[float]],
            state: dict[str, Any] | None = None, now: float = 1000.0) -> AutoscalingContext:  # fmt: skip
    deployment = DeploymentID(name="pool-main", app_name="surge")
    replicas = [ReplicaID(f"r{i}", deployment) for i in range(current)]
    aggregated = {name: dict(zip(replicas, values, strict=True)) for name, values in metrics.items()}
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="pool-main", app_name="surge", current_num_replicas=current,
        target_num_replicas=target, running_replicas=replicas, total_num_requests=total, total_queued_requests=0.0,
        aggregated_metrics=aggregated, raw_metrics=None, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4, policy_state=state or {}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=now, config=AutoscalingConfig(**policy_config),
    )  # fmt: skip


def test_the_pool_names_surge_policy_with_serve_delays_that_do_not_undo_it() -> None:
    config = serve_autoscaling_config(pool(min_replicas=1, max_replicas=4), "pool-main")
    serve_config = AutoscalingConfig(**config)
    assert serve_config.policy.policy_function == POLICY_PATH
    assert serve_config.upscale_delay_s == 0 and serve_config.downscale_delay_s == 0
    assert (serve_config.min_replicas, serve_config.max_replicas) == (1, 4)


def test_policy_kwargs_are_json_for_serve_and_default_target_is_half_the_replica_limit() -> None:
    kwargs = policy_kwargs(pool(max_replicas=4), "pool-main")
    AutoscalingConfig(min_replicas=1, max_replicas=4, policy={"policy_function": POLICY_PATH, "policy_kwargs": kwargs})
    assert kwargs["target_per_replica"] == 10


def test_serve_applies_the_policys_panic_decision_at_once() -> None:
    config = serve_autoscaling_config(pool(min_replicas=1, max_replicas=4), "pool-main")
    policy = _apply_autoscaling_config(_policy(config))
    ctx = context(config, current=1, target=1, total=60, metrics={"engine_waiting_requests": [40]})
    replicas, state = policy(ctx)
    assert replicas == 4  # demand 60 at 10 per replica, capped at max 4, with no Serve delay in between
    assert state["surge_kind"] == "cap" and "panic" in state["surge_reason"]


def test_the_policy_reads_engine_stats_from_aggregated_metrics() -> None:
    config = serve_autoscaling_config(pool(min_replicas=1, max_replicas=4, ttft_slo_s=1), "pool-main")
    policy = _policy(config)
    metrics = {"engine_waiting_requests": [3, 0], "ttft_recent_s": [0.2, 2.5], "kv_cache_usage": [0.5, 0.95]}
    replicas, state = policy(context(config, current=2, target=2, total=15, metrics=metrics))
    assert replicas == 3 and state["surge_kind"] == "slo"


def test_the_scale_down_timer_survives_between_ticks_in_policy_state() -> None:
    config = serve_autoscaling_config(pool(min_replicas=1, max_replicas=4, scale_down_delay_s=30), "pool-main")
    policy = _policy(config)
    _, state = policy(context(config, current=3, target=3, total=0, metrics={}, now=1000))
    replicas, state = policy(context(config, current=3, target=3, total=0, metrics={}, state=state, now=1031))
    assert replicas == 2 and state["surge_kind"] == "scale_down"


def test_a_calendar_event_prewarms_before_its_start_by_the_measured_cold_start(tmp_path: Path) -> None:
    start = datetime(2026, 11, 27, 8, tzinfo=UTC)
    calendar = tmp_path / "promo.yaml"
    event = {"name": "sale", "start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat(),
             "multiplier": 3, "pools": ["main"]}  # fmt: skip
    calendar.write_text(yaml.safe_dump({"margin_s": 60, "events": [event]}))
    config = serve_autoscaling_config(pool(min_replicas=1, max_replicas=4, calendar=str(calendar)), "pool-main")
    policy = _policy(config)
    measured = {"startup_s": [240.0]}
    early = start.timestamp() - 240 - 60 - 1
    replicas, _ = policy(context(config, current=1, target=1, total=0, metrics=measured, now=early))
    assert replicas == 1
    replicas, state = policy(context(config, current=1, target=1, total=0, metrics=measured, now=early + 2))
    assert replicas == 3 and state["surge_kind"] == "floor" and "sale" in state["surge_reason"]


# What the replica reports


def test_replica_stats_are_the_numbers_serve_accepts() -> None:
    load = ReplicaLoad()
    load.ready()
    load.first_token(0.4)
    report = load.report(EngineStats(running_requests=3, waiting_requests=2, kv_cache_usage=0.5))
    assert all(isinstance(v, float) for v in report.values())  # Serve disables stats that are not int/float
    assert report["engine_waiting_requests"] == 2 and report["ttft_recent_s"] == pytest.approx(0.4)
    assert report["startup_s"] > 0


def test_the_warm_up_request_is_not_reported_as_traffic() -> None:
    load = ReplicaLoad()
    load.first_token(5.0)
    load.ready()
    assert load.recent_ttft_s() == 0.0
