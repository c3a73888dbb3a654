"""surge's Ray Serve autoscaling policy: every pool's `AutoscalingConfig(policy=...)`.

Serve instantiates `SurgePolicy(**policy_kwargs)` once per deployment and calls it with an
`AutoscalingContext` about every 0.1 s (ray/serve/_private/autoscaling_state.py). The replicas' custom stats
(`ModelReplica.record_autoscaling_stats`: engine waiting/running, KV use, recent TTFT, start-up time) arrive as
`ctx.aggregated_metrics[name][replica_id]`. The decision itself is `autoscaling.decide.decide`, pure; this
adapter turns the context into signals, applies the promo calendar's floor, logs and exports each reason.
Serve still applies its delays around the policy, so the pool's Serve config sets them to 0 (the policy has its
own hysteresis) — see `serve_autoscaling_config`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from autoscaling.calendar import CalendarFile, ScheduleEntry, floor_at, schedule
from autoscaling.decide import Decision, PolicyParams, Signals, decide
from deployments.pool_capacity import read_shed_signal, record_decision
from deployments.pool_scaling import POLICY_PATH, policy_kwargs, serve_autoscaling_config
from deployments.replica_load import STAT_KV, STAT_STARTUP, STAT_TTFT, STAT_WAITING

__all__ = ["POLICY_PATH", "SurgePolicy", "policy_kwargs", "serve_autoscaling_config", "signals_from_context"]

logger = logging.getLogger("surge.autoscaling")
# A shed within this window counts as "shedding" (no scale-in).
_SHED_WINDOW_S = 30.0
_SHED_READ_S = 1.0


def _per_replica(metrics: Mapping[str, Mapping[Any, float]] | None, name: str) -> list[float]:
    return list((metrics or {}).get(name, {}).values())


def signals_from_context(ctx: Any, now_s: float, floor: tuple[int, str], shedding: bool) -> Signals:
    """Serve's context (duck-typed: AutoscalingContext) as the pure policy's signals."""
    metrics = ctx.aggregated_metrics
    ttfts = [t for t in _per_replica(metrics, STAT_TTFT) if t > 0]
    return Signals(
        now_s=now_s,
        running_replicas=ctx.current_num_replicas,
        target_replicas=ctx.target_num_replicas,
        demand=float(ctx.total_num_requests),
        queued=float(ctx.total_queued_requests or 0.0),
        engine_waiting=sum(_per_replica(metrics, STAT_WAITING)),
        kv_cache_usage=max(_per_replica(metrics, STAT_KV), default=0.0),
        ttft_s=max(ttfts) if ttfts else None,
        shedding=shedding,
        floor_replicas=floor[0],
        floor_reason=floor[1],
    )


class SurgePolicy:
    """Serve's callable for one pool; holds the calendar and the last decision between ticks."""

    def __init__(self, **kwargs: Any) -> None:
        self._pool = str(kwargs["pool"])
        self._deployment = str(kwargs.get("deployment", f"pool-{self._pool}"))
        fields = {k: kwargs[k] for k in PolicyParams.__dataclass_fields__ if k in kwargs}
        self._params = PolicyParams(**fields)
        self._cold_start_s = float(kwargs.get("cold_start_s", 60.0))
        calendar_path = kwargs.get("calendar")
        self._calendar = CalendarFile(calendar_path) if calendar_path else None
        self._schedule: list[ScheduleEntry] = []
        self._schedule_key: tuple[float, int] | None = None
        self._shed_at_s = 0.0
        self._shed_read_at_s = -1e18
        self._read_shed: Callable[[], float | None] = lambda: read_shed_signal(self._deployment)
        self._last: tuple[int, str] | None = None
        self._metrics = _DecisionMetrics(self._pool)

    def floor(self, now_s: float, measured_startup_s: float | None) -> tuple[int, str]:
        """The calendar's floor now; the lead time follows the replicas' measured start-up when known."""
        if self._calendar is None:
            return 0, ""
        cold_start_s = self._cold_start_s if measured_startup_s is None else measured_startup_s
        calendar = self._calendar.current(now_s)
        if (cold_start_s, self._calendar.version) != self._schedule_key:
            baselines, highs = {self._pool: self._params.min_replicas}, {self._pool: self._params.max_replicas}
            self._schedule = schedule(calendar, baselines, highs, cold_start_s)
            self._schedule_key = (cold_start_s, self._calendar.version)
        return floor_at(self._schedule, self._pool, now_s)

    def set_shed_source(self, read: Callable[[], float | None]) -> None:
        """Where the wall time of the pool's last shed comes from (the simulator's admission, not Ray's KV)."""
        self._read_shed = read

    def _shedding(self, now_s: float) -> bool:
        if now_s - self._shed_read_at_s >= _SHED_READ_S:
            self._shed_read_at_s = now_s
            self._shed_at_s = self._read_shed() or self._shed_at_s
        return now_s - self._shed_at_s < _SHED_WINDOW_S

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now_s = float(ctx.current_time or time.time())
        startups = _per_replica(ctx.aggregated_metrics, STAT_STARTUP)
        floor = self.floor(now_s, max(startups) if startups else None)
        signals = signals_from_context(ctx, now_s, floor, self._shedding(now_s))
        state = dict(ctx.policy_state or {})
        decision, below_since = decide(signals, self._params, state.get("surge_below_since_s"))
        self._report(decision, signals)
        state.update(surge_below_since_s=below_since, surge_kind=decision.kind, surge_reason=decision.reason)
        return decision.replicas, state

    def _report(self, decision: Decision, signals: Signals) -> None:
        self._metrics.record(decision)
        key = (decision.replicas, decision.kind)
        if key != self._last:
            logger.info(
                "pool %s: %d -> %d replicas (%s) %s",
                self._pool, signals.target_replicas, decision.replicas, decision.kind, decision.reason,
            )  # fmt: skip
            self._last = key
            self._publish(decision, signals)

    def _publish(self, decision: Decision, signals: Signals) -> None:
        if self._metrics.disabled:
            return  # not in Ray (the simulator, unit tests)
        entry: dict[str, object] = {"t": signals.now_s, "from": signals.target_replicas, "replicas": decision.replicas,
            "kind": decision.kind, "reason": decision.reason}  # fmt: skip
        try:
            record_decision(self._deployment, entry)
        except Exception as exc:
            logger.warning("could not record the decision of pool %s: %r", self._pool, exc)


class _DecisionMetrics:
    """surge_autoscaling_* metrics through ray.util.metrics (reach Prometheus via Ray's metrics agent)."""

    def __init__(self, pool: str) -> None:
        self._pool = pool
        self._gauge: Any = None
        self._counter: Any = None
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return  # the simulator, unit tests: no metrics agent to report to
            self._gauge = metrics.Gauge(
                "surge_autoscaling_desired_replicas", "Replicas surge's policy asks for", tag_keys=("pool",)
            )
            self._counter = metrics.Counter(
                "surge_autoscaling_decisions", "Policy decisions by kind (the reason's class)",
                tag_keys=("pool", "kind"),
            )  # fmt: skip
        except Exception:  # outside a Ray worker (unit tests, the simulator): metrics are off
            self._gauge = self._counter = None

    @property
    def disabled(self) -> bool:
        return self._gauge is None

    def record(self, decision: Decision) -> None:
        if self._gauge is None or self._counter is None:
            return
        self._gauge.set(decision.replicas, tags={"pool": self._pool})
        self._counter.inc(1, tags={"pool": self._pool, "kind": decision.kind})
