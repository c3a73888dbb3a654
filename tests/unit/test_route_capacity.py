"""The ingress's view of pool capacity: the router's snapshot, refreshed in the background, plus its own TTFT."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.config import RouteConfig, RoutingConfig
from deployments.admission.capacity import PoolCapacity
from deployments.traffic_router import RouteClient

ROUTE = RouteConfig(model="m", pools={"main": 1.0})


class Method:
    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.remote = call


class Router:
    """Stands in for the router's handle: all breakers closed, a fixed capacity snapshot."""

    def __init__(self) -> None:
        self.shed_reports: list[list[str]] = []

        async def report(outcomes: list[tuple[str, bool]]) -> dict[str, str]:
            return {"main": "closed"}

        async def capacity(shed_pools: list[str]) -> dict[str, PoolCapacity]:
            self.shed_reports.append(shed_pools)
            return {"main": PoolCapacity(replicas=2, max_ongoing_requests=128, starting_replicas=1, ready_in_s=30)}

        self.report, self.capacity = Method(report), Method(capacity)


async def synced_client(router: Router) -> RouteClient:
    client = RouteClient(router, {"m": ROUTE}, RoutingConfig(snapshot_interval_s=0.01))  # type: ignore[arg-type]
    await client.decide(ROUTE)  # starts the background sync
    for _ in range(200):
        if client.capacity("main") is not None:
            break
        await asyncio.sleep(0.01)
    return client


async def test_capacity_comes_from_the_routers_snapshot_with_the_ingress_ttft() -> None:
    client = await synced_client(Router())
    client.observe_ttft("main", 0.5)
    capacity = client.capacity("main")
    assert capacity is not None and capacity.replicas == 2 and capacity.starting_replicas == 1
    assert capacity.ttft_s == 0.5


async def test_an_unknown_pool_has_no_capacity_yet() -> None:
    client = await synced_client(Router())
    assert client.capacity("other") is None


async def test_sheds_reach_the_router_with_the_next_snapshot() -> None:
    router = Router()
    client = await synced_client(router)
    client.note_shed("main")
    for _ in range(200):
        if ["main"] in router.shed_reports:
            break
        await asyncio.sleep(0.01)
    assert ["main"] in router.shed_reports


async def test_the_ttft_estimate_moves_a_tenth_of_the_way_per_stream() -> None:
    client = await synced_client(Router())
    client.observe_ttft("main", 1.0)
    client.observe_ttft("main", 2.0)
    capacity = client.capacity("main")
    assert capacity is not None and capacity.ttft_s is not None and abs(capacity.ttft_s - 1.1) < 1e-9
