"""The response cache's Redis L2 against a real redis-server: shared by ingress replicas, bounded, and a
Redis that is down gives misses, never errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from cluster.config import AdmissionConfig, CacheConfig
from deployments.admission.gate import AdmissionGate
from deployments.admission.shared_cache import RedisCache
from deployments.engines.base import GenerationChunk
from tests.redis_server import redis_server

CHUNK = GenerationChunk("hello", prompt_tokens=3, completion_tokens=1, finish_reason="stop")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _gate(redis_url: str | None, **cache: object) -> AdmissionGate:
    return AdmissionGate(AdmissionConfig(cache=CacheConfig(redis_url=redis_url, **cache)))  # type: ignore[arg-type]


async def test_replica_b_hits_what_replica_a_answered(redis_url: str) -> None:
    a, b = _gate(redis_url, redis_prefix="t1:"), _gate(redis_url, redis_prefix="t1:")
    a.responses.put("k", (CHUNK, {"X-Surge-Pool": "main"}))
    await a.responses.flush()
    assert await b.responses.get("k") == (CHUNK, {"X-Surge-Pool": "main"})
    assert b.responses.l2_hits == 1
    await a.close()
    await b.close()


async def test_l2_hit_fills_l1(redis_url: str) -> None:
    a, b = _gate(redis_url, redis_prefix="t2:"), _gate(redis_url, redis_prefix="t2:")
    a.responses.put("k", (CHUNK, {}))
    await a.responses.flush()
    await b.responses.get("k")
    assert b.cache.get("k") == (CHUNK, {})
    await a.close()
    await b.close()


async def test_entries_expire_after_the_ttl(redis_url: str) -> None:
    gate = _gate(redis_url, redis_prefix="t3:", ttl_s=0.2)
    gate.responses.put("k", (CHUNK, {}))
    await gate.responses.flush()
    client = aioredis.Redis.from_url(redis_url)
    ttl_ms = await client.pttl("t3:k")
    assert 0 < ttl_ms <= 200
    await client.aclose()
    await gate.close()


async def test_l2_keeps_at_most_its_bound_dropping_the_oldest(redis_url: str) -> None:
    config = CacheConfig(redis_url=redis_url, redis_prefix="t4:", redis_max_entries=3)
    l2 = RedisCache(config)
    for i in range(5):
        await l2.put(f"k{i}", b"v")
    assert [await l2.get(f"k{i}") for i in range(5)] == [None, None, b"v", b"v", b"v"]
    client = aioredis.Redis.from_url(redis_url)
    assert await client.zcard("t4:index") == 3
    await client.aclose()
    await l2.close()


async def test_values_over_the_size_limit_are_not_stored(redis_url: str) -> None:
    l2 = RedisCache(CacheConfig(redis_url=redis_url, redis_prefix="t5:", redis_max_value_bytes=10))
    await l2.put("big", b"x" * 11)
    assert await l2.get("big") is None
    await l2.close()


async def test_redis_down_means_misses_not_errors() -> None:
    with redis_server() as url:
        pass  # the server is stopped: its port refuses connections
    gate = _gate(url, redis_prefix="t6:")
    gate.responses.put("k", (CHUNK, {}))
    await gate.responses.flush()
    gate.cache.clear()
    assert await gate.responses.get("k") is None
    assert gate.responses.l2 is not None and gate.responses.l2.errors >= 1
    await gate.close()
