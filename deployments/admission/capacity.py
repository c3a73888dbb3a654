"""Shedding that follows a pool's live capacity and the tiers' TTFT SLOs (pure: no I/O, no clock reads).

The ingress reads a `PoolCapacity` from the traffic router's snapshot (refreshed in the background), so the
decision costs no I/O on the request path. The SLOs come by priority (`AdmissionConfig.ttft_slos`: each tier's
at its default priority): while the predicted TTFT misses the SLO of a tier above a request's priority, that
priority's share shrinks by SLO / predicted, so the lower priorities make room for the tiers that promise more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from cluster.config import ShedConfig

__all__ = ["PoolCapacity", "capacity_shed_decision", "defended_slo_s", "predicted_ttft_s", "shed_limit"]

_LOWEST_PRIORITY = 5


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """What the ingress knows of one pool's serving capacity."""

    replicas: int  # running (serving) replicas
    max_ongoing_requests: int  # per replica
    starting_replicas: int = 0  # scheduled or loading: capacity on its way
    ready_in_s: float | None = None  # expected time until the starting replicas serve
    ttft_s: float | None = None  # recent time to first token measured at the ingress (EWMA)

    @property
    def requests(self) -> int:
        """Concurrent requests the running replicas accept."""
        return max(1, self.replicas) * self.max_ongoing_requests


def predicted_ttft_s(depth: int, capacity: PoolCapacity) -> float | None:
    """A new request's expected TTFT: the recent TTFT, stretched by how far demand exceeds capacity (requests
    beyond it wait for a slot, which frees at the pace the current ones finish)."""
    if capacity.ttft_s is None:
        return None
    return capacity.ttft_s * max(1.0, (depth + 1) / capacity.requests)


def defended_slo_s(priority: int, shed: ShedConfig, slos: Mapping[int, float] | None) -> float | None:
    """The tightest TTFT SLO among the priorities above `priority` (numerically lower), which it makes room
    for; None for the protected priorities and where no priority above states an SLO."""
    if priority <= shed.slo_protected_priority:
        return None
    above = [slo for level, slo in (shed.default_slos() if slos is None else slos).items() if level < priority]
    return min(above, default=None)


def _slo_miss(priority: int, depth: int, shed: ShedConfig, capacity: PoolCapacity | None,
              slos: Mapping[int, float] | None) -> tuple[float, float] | None:  # fmt: skip
    """(predicted TTFT, the SLO above `priority` it misses), or None while that SLO is kept."""
    predicted = predicted_ttft_s(depth, capacity) if capacity is not None else None
    slo = defended_slo_s(priority, shed, slos)
    return (predicted, slo) if predicted is not None and slo is not None and predicted > slo else None


def _limit(priority: int, shed: ShedConfig, capacity: PoolCapacity | None, pool: str | None,
           miss: tuple[float, float] | None) -> float:  # fmt: skip
    fixed = shed.queue_limit_for(pool)
    if fixed is None and capacity is None:
        return math.inf  # capacity not known yet: Serve's own backpressure still bounds the queue
    base = fixed if fixed is not None else capacity.requests  # type: ignore[union-attr]
    limit = base * shed.admit_fraction[priority]
    if miss is not None:
        # A tier above misses its SLO: this priority gets the share that would bring TTFT back to it.
        predicted, slo = miss
        limit *= slo / predicted
    return limit


def shed_limit(priority: int, depth: int, shed: ShedConfig, capacity: PoolCapacity | None, pool: str | None,
               slos: Mapping[int, float] | None = None) -> float:  # fmt: skip
    """The queue depth at which `priority` is shed, and nothing else: the caller compares."""
    return _limit(priority, shed, capacity, pool, _slo_miss(priority, depth, shed, capacity, slos))


def _retry_after_s(depth: int, shed: ShedConfig, capacity: PoolCapacity | None) -> int:
    """Until capacity arrives: the starting replicas' expected readiness, else the backlog's drain time."""
    if capacity is None:
        return shed.retry_after_s
    if capacity.starting_replicas > 0 and capacity.ready_in_s is not None:
        return max(shed.retry_after_s, math.ceil(capacity.ready_in_s))
    predicted = predicted_ttft_s(depth, capacity)
    return max(shed.retry_after_s, math.ceil(predicted or 0))


def capacity_shed_decision(
    priority: int, depth: int, shed: ShedConfig, capacity: PoolCapacity | None = None, pool: str | None = None,
    slos: Mapping[int, float] | None = None,
) -> tuple[bool, int, str]:
    """(admit, retry_after_s, reason) for one request of `priority` meeting `depth` admitted requests."""
    priority = min(max(priority, 1), _LOWEST_PRIORITY)
    miss = _slo_miss(priority, depth, shed, capacity, slos)
    limit = _limit(priority, shed, capacity, pool, miss)
    comparison = f"queue depth {depth} {{}} {limit:.4g} for priority {priority}"
    if capacity is not None:
        comparison += f" ({capacity.replicas} replicas x {capacity.max_ongoing_requests}"
        comparison += f", {capacity.starting_replicas} starting)"
    if miss is not None:
        comparison += f"; predicted TTFT {miss[0]:.3g} s > the {miss[1]:g} s SLO of a higher priority"
    if depth < limit:
        return True, 0, comparison.format("<")
    return False, _retry_after_s(depth, shed, capacity), "overloaded: " + comparison.format(">=")
