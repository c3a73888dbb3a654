"""The policies surge is compared with, as Serve policies (same call signature as SurgePolicy).

* `ray-default`: Ray Serve's own `replica_queue_length_autoscaling_policy` with the installed Ray's default
  delays and look-back window (read from `ray.serve.config.AutoscalingConfig`, not copied), only
  `target_ongoing_requests` set to the pool's per-replica target (Ray's default of 2 would be meaningless for
  an LLM replica that batches dozens of sequences).
* `kpa`: Knative's Pod Autoscaler: a 60 s stable window, a panic window of 10 % of it (6 s), panic at 200 % of
  the target, at most 1000x up and 2x down per decision, no scale-down while panicking (Knative Serving docs,
  https://knative.dev/docs/serving/autoscaling/kpa-specific/, and the decider in knative/serving
  pkg/autoscaler/scaling/autoscaler.go).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig

__all__ = ["KpaPolicy", "ray_default_config", "ray_default_policy", "ray_serve_defaults"]

ray_default_policy = replica_queue_length_autoscaling_policy


def ray_serve_defaults() -> dict[str, float]:
    """The installed Ray's defaults for the delays and window (what a pool gets unless it sets them)."""
    fields = AutoscalingConfig.model_fields
    names = ("upscale_delay_s", "downscale_delay_s", "look_back_period_s", "metrics_interval_s")
    return {name: float(fields[name].default) for name in names}


def ray_default_config(min_replicas: int, max_replicas: int, target_per_replica: float) -> AutoscalingConfig:
    return AutoscalingConfig(
        min_replicas=min_replicas, max_replicas=max_replicas, target_ongoing_requests=target_per_replica,
        **ray_serve_defaults(),
    )  # fmt: skip


class KpaPolicy:
    """Knative's KPA decider on Serve's context: concurrency averaged over the stable and panic windows."""

    def __init__(self, target_per_replica: float, stable_window_s: float = 60.0, panic_window_pct: float = 10.0,
                 panic_threshold_pct: float = 200.0, max_scale_up_rate: float = 1000.0,
                 max_scale_down_rate: float = 2.0) -> None:  # fmt: skip
        self._target = target_per_replica
        self._stable_s = stable_window_s
        self._panic_s = stable_window_s * panic_window_pct / 100
        self._panic_threshold = panic_threshold_pct / 100
        self._up_rate, self._down_rate = max_scale_up_rate, max_scale_down_rate
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_since: float | None = None
        self._panic_peak = 0

    def _average(self, now: float, window_s: float) -> float:
        values = [v for t, v in self._samples if t > now - window_s]
        return sum(values) / len(values) if values else 0.0

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now = float(ctx.current_time)
        self._samples.append((now, float(ctx.total_num_requests)))
        while self._samples and self._samples[0][0] <= now - self._stable_s:
            self._samples.popleft()
        ready = max(1, ctx.current_num_replicas)
        stable = math.ceil(self._average(now, self._stable_s) / self._target)
        panic = math.ceil(self._average(now, self._panic_s) / self._target)
        low, high = math.floor(ready / self._down_rate), math.ceil(ready * self._up_rate)
        stable, panic = min(max(stable, low), high), min(max(panic, low), high)
        over = panic / ready >= self._panic_threshold
        if over:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since > self._stable_s:
            self._panic_since, self._panic_peak = None, 0
        if self._panic_since is not None:
            # Panic mode: follow the short window, and never scale down until it ends.
            self._panic_peak = max(self._panic_peak, panic, ctx.target_num_replicas)
            return self._panic_peak, {"kpa_mode": "panic"}
        return stable, {"kpa_mode": "stable"}
