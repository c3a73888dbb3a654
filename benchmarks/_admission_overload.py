"""Part 3 of benchmarks/admission.py: bursts far past the pool's capacity, and how fast they are refused."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp

from benchmarks._common import Answer, fire, p50_p99

if TYPE_CHECKING:
    from benchmarks.admission import Plan

__all__ = ["overload", "sequential"]


def _ms(answers: list[Answer]) -> dict[str, float | None]:
    return p50_p99([a.latency_s for a in answers], "ms")


def sequential(answers: list[Answer]) -> dict[str, Any]:
    return {"statuses": sorted({a.status for a in answers}), **_ms(answers)}


def _bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


async def _burst(plan: Plan, url: str, payloads: list[dict[str, Any]], api_key: str | None) -> dict[str, Any]:
    """`burst_requests` at once, then `probe_requests` one by one in the state the burst left (pool full, rpm
    spent): latency of the answered (200) and the refused (429/503) requests."""
    headers = _bearer(api_key) if api_key else None
    answers, wall_s = await fire(url, plan.burst_requests, concurrent=True, payloads=payloads, headers=headers)
    probes, _ = await fire(url, plan.probe_requests, concurrent=False, payloads=payloads, headers=headers)
    refused = [a for a in answers if a.status in (429, 503)]
    by_status: dict[str, int] = {}
    for answer in answers:
        by_status[str(answer.status)] = by_status.get(str(answer.status), 0) + 1
    return {
        "requests": len(answers), "wall_s": wall_s, "by_status": dict(sorted(by_status.items())),
        "answered": _ms([a for a in answers if a.status == 200]), "refused": _ms(refused),
        "refused_per_s": len(refused) / wall_s, "refused_with_retry_after": sum(a.retry_after for a in refused),
        "then_sequential": sequential(probes),
    }  # fmt: skip


async def _hold(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], in_flight: asyncio.Event) -> None:
    """A long stream; `in_flight` is set once its first event arrived (the pool then counts it) or it failed."""
    try:
        async with session.post(url, json=payload) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    in_flight.set()
    finally:
        in_flight.set()


async def _burst_on_full_pool(plan: Plan, url: str, payloads: list[dict[str, Any]], api_key: str) -> dict[str, Any]:
    """Fill the pool to its shed limit with long priority-1 streams, then burst at it."""
    hold = payloads[0] | {"max_tokens": 800, "stream": True, "priority": 1}  # outlasts the burst
    events = [asyncio.Event() for _ in range(plan.pool_capacity)]
    connector = aiohttp.TCPConnector(limit=plan.pool_capacity + 8)
    async with aiohttp.ClientSession(connector=connector, headers=_bearer(api_key)) as session:
        holders = [asyncio.create_task(_hold(session, url, hold, event)) for event in events]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=60)
            streaming = sum(not h.done() for h in holders)
            result = await _burst(plan, url, payloads, api_key)
            result["holders"] = {"streaming_at_burst": streaming, "streaming_after": sum(not h.done() for h in holders)}
        finally:
            for holder in holders:
                holder.cancel()  # a closed stream aborts its generation
            await asyncio.gather(*holders, return_exceptions=True)
    return result


async def overload(
    plan: Plan, base_url: str, keys: dict[str, str], payloads: list[dict[str, Any]], rpm_tier: str
) -> dict[str, Any]:
    """The bursts, each on its own: one that fails does not lose the others."""
    url = f"{base_url}/v1/chat/completions"
    bursts = {
        # The HTTP path alone under the same burst: no admission, no engine.
        "healthz": lambda: _burst(plan, f"{base_url}/healthz", [], None),
        # In-flight requests are counted when dispatched: does the shed decision see a burst still in admission?
        "shed_idle_pool": lambda: _burst(plan, url, payloads, keys["enterprise"]),
        "shed_full_pool": lambda: _burst_on_full_pool(plan, url, payloads, keys["enterprise"]),
        "rate_limit": lambda: _burst(plan, url, payloads, keys[rpm_tier]),
    }
    results: dict[str, Any] = {}
    for name, burst in bursts.items():
        try:
            results[name] = await burst()
        except Exception as exc:  # one failed burst must not lose the others or the latency run
            results[name] = {"error": repr(exc)}
    # Refusals against admitted requests of the same burst: the idle-pool burst, where all are admitted.
    admitted_ms = results["shed_idle_pool"].get("answered", {}).get("p50_ms")
    for result in results.values():
        refused_ms = result.get("refused", {}).get("p50_ms")
        result["refused_p50_over_admitted_p50"] = refused_ms / admitted_ms if refused_ms and admitted_ms else None
    return results
