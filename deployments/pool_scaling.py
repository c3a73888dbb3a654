"""How a pool deployment is autoscaled: Serve's `autoscaling_config` naming surge's policy by import path.

The policy lives in autoscaling/policy.py (a higher layer); Serve's controller imports it from the path, so this
layer never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.config import PROJECT_ROOT, PoolConfig

__all__ = ["POLICY_PATH", "policy_kwargs", "serve_autoscaling_config"]

POLICY_PATH = "autoscaling.policy:SurgePolicy"


def policy_kwargs(pool: PoolConfig, deployment: str) -> dict[str, Any]:
    """JSON-serializable kwargs for SurgePolicy (Serve requires JSON for policy_kwargs)."""
    scaling = pool.autoscaling
    low, high = scaling.bounds(pool.num_replicas)
    return {
        "pool": pool.name,
        "deployment": deployment,
        "min_replicas": low,
        "max_replicas": high,
        "target_per_replica": scaling.target_per_replica(pool.max_ongoing_requests),
        "panic_factor": scaling.panic_factor,
        "ttft_slo_s": scaling.ttft_slo_s,
        "kv_cache_high": scaling.kv_cache_high,
        "scale_down_delay_s": scaling.scale_down_delay_s,
        "scale_down_utilization": scaling.scale_down_utilization,
        "cold_start_s": scaling.cold_start_s,
        "calendar": _resolve(scaling.calendar),
    }


def _resolve(path: str | None) -> str | None:
    if path is None:
        return None
    return str(Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path)


def serve_autoscaling_config(pool: PoolConfig, deployment: str) -> dict[str, Any]:
    """The pool deployment's Serve `autoscaling_config`: the policy, bounds, and delays that do not undo it."""
    kwargs = policy_kwargs(pool, deployment)
    return {
        "min_replicas": kwargs["min_replicas"],
        "max_replicas": kwargs["max_replicas"],
        "initial_replicas": pool.num_replicas,
        # Serve's delays run after the policy; the policy holds its own hysteresis, so they are 0.
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "look_back_period_s": pool.autoscaling.look_back_period_s,
        "metrics_interval_s": pool.autoscaling.metrics_interval_s,
        "policy": {"policy_function": POLICY_PATH, "policy_kwargs": kwargs},
    }


