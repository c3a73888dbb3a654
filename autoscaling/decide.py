"""surge's scaling decision as a pure function: signals in, (replicas, reason) out. No Ray, no clock reads.

The Serve adapter (autoscaling/policy.py) and the simulator (autoscaling/simulator.py) call the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Decision", "DecisionKind", "PolicyParams", "Signals", "decide"]

DecisionKind = Literal["panic", "queue", "slo", "hold", "scale_down_pending", "scale_down", "shedding", "floor", "cap"]


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """The pool's bounds and targets (from PoolAutoscalingConfig)."""

    min_replicas: int
    max_replicas: int
    target_per_replica: float
    panic_factor: float = 2.0
    ttft_slo_s: float = 1.0
    kv_cache_high: float = 0.9
    scale_down_delay_s: float = 120.0
    scale_down_utilization: float = 0.6


@dataclass(frozen=True, slots=True)
class Signals:
    """One tick's view of a pool."""

    now_s: float
    running_replicas: int
    target_replicas: int  # Serve's current target: running plus those starting
    demand: float  # requests ongoing at replicas plus queued at handles
    queued: float = 0.0  # of which queued at handles (no replica slot)
    engine_waiting: float = 0.0  # requests waiting inside the engines (all replicas)
    kv_cache_usage: float = 0.0  # the fullest replica's KV cache use, 0..1
    ttft_s: float | None = None  # the slowest replica's recent time to first token
    shedding: bool = False  # the ingress shed requests for this pool recently
    floor_replicas: int = 0  # the promo calendar's minimum now
    floor_reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    kind: DecisionKind
    reason: str


def decide(signals: Signals, params: PolicyParams, below_since_s: float | None) -> tuple[Decision, float | None]:
    """The replica count for the pool and why, plus when demand first fell below the scale-down line (the
    hysteresis timer the caller keeps between ticks)."""
    fleet = max(signals.target_replicas, 1)
    needed = math.ceil(signals.demand / params.target_per_replica) if signals.demand > 0 else 0
    decision, below_since_s = _unbounded(signals, params, fleet, needed, below_since_s)
    return _bounded(decision, signals, params), below_since_s


def _unbounded(
    s: Signals, p: PolicyParams, fleet: int, needed: int, below_since_s: float | None
) -> tuple[Decision, float | None]:
    capacity = fleet * p.target_per_replica
    if s.demand > p.panic_factor * capacity:
        reason = f"panic: demand {s.demand:.4g} > {p.panic_factor:g} x capacity {capacity:.4g}; jump to {needed}"
        return Decision(needed, "panic", reason), None
    if needed > fleet:
        step = min(needed, 2 * fleet)  # below panic: at most double per decision (new replicas report first)
        reason = f"queue: demand {s.demand:.4g} needs {needed} replicas at {p.target_per_replica:g} each"
        return Decision(step, "queue", reason), None
    if _missing_slo(s, p):
        reason = (
            f"slo: ttft {s.ttft_s:.3g} s > {p.ttft_slo_s:g} s with {s.engine_waiting:.4g} waiting in engines,"
            f" kv {s.kv_cache_usage:.2f}"
        )
        return Decision(fleet + 1, "slo", reason), None
    return _maybe_scale_down(s, p, fleet, below_since_s)


def _missing_slo(s: Signals, p: PolicyParams) -> bool:
    saturated = s.engine_waiting > 0 or s.kv_cache_usage >= p.kv_cache_high or s.queued > 0
    return s.ttft_s is not None and s.ttft_s > p.ttft_slo_s and saturated


def _maybe_scale_down(
    s: Signals, p: PolicyParams, fleet: int, below_since_s: float | None
) -> tuple[Decision, float | None]:
    line = (fleet - 1) * p.target_per_replica * p.scale_down_utilization
    if fleet <= 1 or s.demand >= line or s.queued > 0 or s.running_replicas < fleet:
        return Decision(fleet, "hold", f"hold: demand {s.demand:.4g} fits {fleet} replicas"), None
    if s.shedding:
        return Decision(fleet, "shedding", "shedding: no scale-in while requests are shed"), None
    if below_since_s is None:
        below_since_s = s.now_s
    waited_s = s.now_s - below_since_s
    if waited_s + 1e-9 < p.scale_down_delay_s:
        reason = f"scale-down pending: demand {s.demand:.4g} < {line:.4g} for {waited_s:.0f}/{p.scale_down_delay_s:g} s"
        return Decision(fleet, "scale_down_pending", reason), below_since_s
    reason = f"scale down: demand {s.demand:.4g} < {line:.4g} for {waited_s:.0f} s; one replica at a time"
    # The timer restarts: the next step down waits a whole delay again.
    return Decision(fleet - 1, "scale_down", reason), s.now_s


def _bounded(decision: Decision, s: Signals, p: PolicyParams) -> Decision:
    floor = min(max(p.min_replicas, s.floor_replicas), p.max_replicas)
    if decision.replicas < floor:
        why = s.floor_reason if s.floor_replicas > p.min_replicas else f"min_replicas {p.min_replicas}"
        return Decision(floor, "floor", f"floor: {why} (policy said {decision.replicas}: {decision.reason})")
    if decision.replicas > p.max_replicas:
        return Decision(p.max_replicas, "cap", f"cap: max_replicas {p.max_replicas} ({decision.reason})")
    return decision
