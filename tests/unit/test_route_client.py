"""The ingress's client of the traffic router: it keeps routing when the router stops answering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.config import RouteConfig, RoutingConfig
from deployments.traffic_router import RouteClient

ROUTE = RouteConfig(model="m", pools={"main": 1.0}, fallback="fallback")


class Method:
    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.remote = call


class Router:
    """Stands in for the router's handle: reports breaker statuses; `decide` answers or hangs."""

    def __init__(self, statuses: dict[str, str], decide_hangs: bool) -> None:
        self.decide_calls = 0

        async def report(outcomes: list[tuple[str, bool]]) -> dict[str, str]:
            return statuses

        async def decide(model: str, rng_value: float, in_flight: dict[str, int]) -> Any:
            self.decide_calls += 1
            if decide_hangs:
                await asyncio.sleep(3600)
            raise AssertionError("the answering router is not used in these tests")

        self.report = Method(report)
        self.decide = Method(decide)


async def client_with_statuses(router: Router) -> RouteClient:
    client = RouteClient(router, {"m": ROUTE}, RoutingConfig(router_timeout_s=0.05))  # type: ignore[arg-type]
    await client.decide(ROUTE)  # starts the snapshot sync
    await asyncio.sleep(0.01)
    return client


async def test_all_closed_decides_locally_without_asking_the_router() -> None:
    router = Router({"main": "closed"}, decide_hangs=True)
    client = await client_with_statuses(router)
    decision = await client.decide(ROUTE)
    assert decision.pool == "main" and router.decide_calls == 0


async def test_a_router_that_does_not_answer_falls_back_to_its_last_snapshot() -> None:
    router = Router({"main": "open"}, decide_hangs=True)
    client = await client_with_statuses(router)
    decision = await asyncio.wait_for(client.decide(ROUTE), timeout=5)
    assert router.decide_calls == 1
    assert decision.pool == "fallback" and decision.is_fallback


async def test_a_half_open_pool_is_tried_when_the_router_does_not_answer() -> None:
    router = Router({"main": "half_open"}, decide_hangs=True)
    client = await client_with_statuses(router)
    decision = await asyncio.wait_for(client.decide(ROUTE), timeout=5)
    assert decision.pool == "main" and not decision.is_fallback
