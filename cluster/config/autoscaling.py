"""Inert autoscaling configuration of a pool: replica bounds, targets, the SLO, the panic factor, the calendar.

autoscaling/policy.py decides from these; deployments/app.py hands them to Serve as the policy's kwargs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PoolAutoscalingConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolAutoscalingConfig(_Strict):
    """How surge's policy sizes one pool. Bounds left unset follow the pool's `num_replicas` (a fixed pool
    still runs the policy, so its decisions and reasons are logged and exported)."""

    enabled: bool = True
    min_replicas: int | None = Field(None, ge=1)
    max_replicas: int | None = Field(None, ge=1)
    # Requests one replica should hold (Serve's ongoing: running + queued in the engine); None: half of the
    # pool's max_ongoing_requests, so a replica has headroom while the next one starts.
    target_ongoing_requests: float | None = Field(None, gt=0)
    # Demand above panic_factor x the current fleet's target jumps straight to what the queue needs.
    panic_factor: float = Field(2.0, gt=1)
    # The top tier's time-to-first-token promise: a fleet missing it with a queue in the engine grows.
    ttft_slo_s: float = Field(1.0, gt=0)
    # KV cache use above this with requests waiting in the engine means the replica is full.
    kv_cache_high: float = Field(0.9, gt=0, le=1)
    # Scale in one replica at a time, only after demand has stayed below the smaller fleet's target
    # x scale_down_utilization for scale_down_delay_s (hysteresis against flapping).
    scale_down_delay_s: float = Field(120.0, ge=0)
    scale_down_utilization: float = Field(0.6, gt=0, le=1)
    # A replica's start-up time assumed until replicas report their measured one.
    cold_start_s: float = Field(60.0, ge=0)
    # Pre-warm schedule: a promo calendar YAML (autoscaling/calendar.py); relative paths from the project root.
    calendar: str | None = None
    # Serve's metric windows: short, because the policy does its own smoothing and hysteresis.
    look_back_period_s: float = Field(5.0, gt=0)
    metrics_interval_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> PoolAutoscalingConfig:
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self

    def bounds(self, num_replicas: int) -> tuple[int, int]:
        """(min, max) replicas; unset bounds follow `num_replicas`, and the range always holds it."""
        low = self.min_replicas or num_replicas
        high = self.max_replicas or max(num_replicas, low)
        return min(low, num_replicas), max(high, num_replicas)

    def target_per_replica(self, max_ongoing_requests: int) -> float:
        return self.target_ongoing_requests or max(1.0, max_ongoing_requests / 2)
