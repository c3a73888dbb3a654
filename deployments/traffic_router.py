"""The traffic router deployment (owns breakers and the routing table) and the ingress's client of it.

Tokens never pass through the router: the ingress asks it (or a snapshot of it) which pool to call, then
calls that pool itself. Outcomes flow back in batches, so the router's breakers see every ingress replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, replace
from typing import Any

from ray.serve.handle import DeploymentHandle

from cluster.config import RouteConfig, RoutingConfig
from deployments.admission.capacity import PoolCapacity
from deployments.pool_capacity import CapacityWatch, PoolSize
from deployments.routing import (
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    RoutingDecision,
    allow_request,
    on_result,
    route_request,
)

__all__ = ["RouteClient", "TrafficRouter"]

logger = logging.getLogger("surge.router")
# Weight of the newest stream's TTFT in the ingress's running estimate (about the last ten streams).
_TTFT_WEIGHT = 0.1


class TrafficRouter:
    """Model → pool decisions with canary weights, per-pool circuit breakers and fallback pools."""

    def __init__(
        self,
        routing: RoutingConfig,
        routes: dict[str, RouteConfig],
        timeout_s: float,
        pool_sizes: dict[str, PoolSize] | None = None,
    ) -> None:
        self._routes = routes
        self._policy = BreakerPolicy(routing.breaker_failures, routing.breaker_open_s, timeout_s)
        self._breakers: dict[str, BreakerState] = {}
        self._capacity = CapacityWatch(pool_sizes or {})

    def _admits(self, pool: str) -> bool:
        decision, self._breakers[pool] = allow_request(self._breaker(pool), time.monotonic(), self._policy)
        if decision.is_probe:
            logger.info("pool %s: %s", pool, decision.reason)
        return decision.allowed

    def _breaker(self, pool: str) -> BreakerState:
        return self._breakers.get(pool, BreakerState())

    async def decide(self, model: str, rng_value: float, queue_depths: dict[str, int]) -> RoutingDecision:
        """The authoritative decision; half-open probes are granted here only."""
        return route_request(self._routes[model], rng_value, queue_depths, self._admits)

    async def report(self, outcomes: list[tuple[str, bool]]) -> dict[str, str]:
        """Fold request outcomes into the breakers; returns every pool's breaker status."""
        now = time.monotonic()
        for pool, ok in outcomes:
            before = self._breaker(pool).status
            self._breakers[pool] = on_result(self._breaker(pool), ok, now, self._policy)
            if self._breakers[pool].status != before:
                logger.warning("pool %s breaker %s -> %s", pool, before, self._breakers[pool].status)
        return self.statuses(now)

    async def capacity(self, shed_pools: list[str] | None = None) -> dict[str, PoolCapacity]:
        """Running and starting replicas per pool, as last polled (shedding follows them); `shed_pools` shed
        requests since the caller's last call (the autoscaler does not scale them in)."""
        if shed_pools:
            await self._capacity.note_shed(shed_pools)
        return self._capacity.snapshot()

    def statuses(self, now: float) -> dict[str, str]:
        """Breaker status per pool as a snapshot reader should act on it (an expired open is half-open)."""
        result = {}
        for pool, state in self._breakers.items():
            expired = state.status is BreakerStatus.OPEN and now - (state.opened_at or now) >= self._policy.open_s
            result[pool] = BreakerStatus.HALF_OPEN.value if expired else state.status.value
        return result


class RouteClient:
    """The ingress side: decides locally on the router's latest breaker snapshot while every candidate
    pool is closed (no extra hop), asks the router when one is not, and reports outcomes in batches."""

    def __init__(self, router: DeploymentHandle, routes: dict[str, RouteConfig], routing: RoutingConfig) -> None:
        self._router = router
        self._routes = routes
        self._interval_s = routing.snapshot_interval_s
        self._per_request = routing.decide_per_request
        self._router_timeout_s = routing.router_timeout_s
        self._statuses: dict[str, str] = {}
        self._outcomes: list[tuple[str, bool]] = []
        self._in_flight: Counter[str] = Counter()
        self._held: Counter[str] = Counter()
        self._capacity: dict[str, PoolCapacity] = {}
        self._ttft_s: dict[str, float] = {}
        self._shed: set[str] = set()
        self._failed = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    def route(self, model: str) -> RouteConfig | None:
        return self._routes.get(model)

    async def decide(self, route: RouteConfig) -> RoutingDecision:
        self._ensure_syncing()
        rng_value = self._rng.random()
        candidates = [*route.pools, *([route.fallback] if route.fallback else [])]
        closed = all(self._statuses.get(pool, "closed") == "closed" for pool in candidates)
        if closed and not self._per_request:
            return route_request(route, rng_value, self._in_flight, lambda pool: True)
        try:
            return await asyncio.wait_for(self._ask_router(route, rng_value), timeout=self._router_timeout_s)
        except Exception as exc:  # the router is down or restarting (e.g. its node was lost)
            logger.warning("traffic router did not decide (%r); deciding on its last snapshot", exc)
            return route_request(route, rng_value, self._in_flight, lambda pool: self._statuses.get(pool) != "open")

    async def _ask_router(self, route: RouteConfig, rng_value: float) -> RoutingDecision:
        result: RoutingDecision = await self._router.decide.remote(route.model, rng_value, dict(self._in_flight))
        return result

    def queue_depth(self, pool: str) -> int:
        """Requests this ingress replica has admitted for `pool` and not finished: its cheap, local view of
        the pool's queue (shedding reads it)."""
        return self._held[pool]

    def capacity(self, pool: str) -> PoolCapacity | None:
        """The pool's live capacity from the router's last snapshot, with the TTFT this ingress measured."""
        known = self._capacity.get(pool)
        return None if known is None else replace(known, ttft_s=self._ttft_s.get(pool))

    def observe_ttft(self, pool: str, ttft_s: float) -> None:
        """A stream's first token arrived after `ttft_s` (queueing at the ingress and the engine included)."""
        last = self._ttft_s.get(pool)
        self._ttft_s[pool] = ttft_s if last is None else last + _TTFT_WEIGHT * (ttft_s - last)

    def note_shed(self, pool: str) -> None:
        """Admission shed a request for `pool`; the autoscaler hears of it with the next snapshot."""
        self._shed.add(pool)

    def hold(self, pool: str) -> None:
        self._held[pool] += 1

    def release(self, pool: str) -> None:
        self._held[pool] -= 1

    def started(self, pool: str) -> None:
        self._in_flight[pool] += 1

    def finished(self, pool: str, ok: bool | None) -> None:
        """A request left `pool`; `ok=None` says nothing about the pool's health (e.g. a client error)."""
        self._in_flight[pool] -= 1
        if ok is not None:
            self._outcomes.append((pool, ok))
        if ok is False:
            self._failed.set()  # report failures now: the breaker should not wait for the next tick

    def _ensure_syncing(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        while True:
            outcomes, self._outcomes = self._outcomes, []
            try:
                self._statuses = await self._router.report.remote(outcomes)
            except Exception as exc:
                logger.warning("traffic router unreachable: %r", exc)
                self._outcomes = outcomes + self._outcomes
            await self._sync_capacity()
            self._failed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._failed.wait(), timeout=self._interval_s)

    async def _sync_capacity(self) -> None:
        try:
            shed, self._shed = self._shed, set()
            self._capacity = await self._router.capacity.remote(sorted(shed))
        except Exception as exc:  # keep the last snapshot; admission then decides on it
            logger.debug("pool capacity not refreshed: %r", exc)

    def debug_state(self) -> dict[str, Any]:
        capacity = {pool: asdict(c) for pool, c in self._capacity.items()}
        return {
            "breakers": dict(self._statuses), "in_flight": dict(self._in_flight), "admitted": dict(self._held),
            "capacity": capacity,
        }
