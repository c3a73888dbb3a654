"""The response cache's Redis L2 against a real redis-server: shared by ingress replicas, bounded, and a
Redis that is down gives misses, never errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from cluster.config import AdmissionConfig, CacheConfig, RouteConfig, load_config
from deployments.admission.gate import ANONYMOUS, AdmissionGate
from deployments.admission.shared_cache import RedisCache
from deployments.dispatch import Dispatched
from deployments.engines.base import GenerationChunk, GenerationRequest
from deployments.pipeline import RequestPipeline, Work
from deployments.protocol import ChatCompletionRequest
from deployments.routing.table import RoutingDecision
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


class _Routes:
    """The traffic router's client as the pipeline uses it: one route, an idle pool."""

    def __init__(self, route: RouteConfig) -> None:
        self._route = route

    def route(self, model: str) -> RouteConfig | None:
        return self._route if model == self._route.model else None

    def queue_depth(self, pool: str) -> int:
        return 0

    def capacity(self, pool: str) -> None:
        return None

    def hold(self, pool: str) -> None: ...

    def release(self, pool: str) -> None: ...

    def note_shed(self, pool: str) -> None: ...


class _Engine:
    """A dispatcher whose pool answers every request with its own replica name; counts what reaches it."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.calls = 0

    async def complete(self, route: RouteConfig, request: GenerationRequest) -> Dispatched:
        self.calls += 1
        chunk = GenerationChunk(f"answered by {self.replica}", prompt_tokens=3, completion_tokens=4,
                                finish_reason="stop", replica_id=self.replica)  # fmt: skip
        return Dispatched(RoutingDecision(route.primary, False, "test"), chunk)


def _ingress(redis_url: str, replica: str) -> tuple[RequestPipeline, _Engine, AdmissionGate]:
    """One ingress replica's request path: its own gate (L1) over the shared Redis, its own engine."""
    config = load_config()
    cache = config.admission.cache.model_copy(update={"redis_url": redis_url, "redis_prefix": "t7:"})
    gate = AdmissionGate(config.admission.model_copy(update={"enabled": False, "cache": cache}))
    engine = _Engine(replica)
    route = config.route_table()[config.pools[0].model_id]
    return RequestPipeline(gate, _Routes(route), engine), engine, gate  # type: ignore[arg-type]


async def test_an_ingress_replica_answers_from_redis_what_another_replica_answered(redis_url: str) -> None:
    (a, engine_a, gate_a), (b, engine_b, gate_b) = _ingress(redis_url, "A"), _ingress(redis_url, "B")
    messages = [{"role": "user", "content": "shared question"}]
    chat = ChatCompletionRequest.model_validate({"model": load_config().pools[0].model_id, "temperature": 0,
                                                 "messages": messages})  # fmt: skip
    first, first_headers = await a.complete_json(ANONYMOUS, Work(chat, chat.prompt(), "chat"))
    await gate_a.responses.flush()
    second, second_headers = await b.complete_json(ANONYMOUS, Work(chat, chat.prompt(), "chat"))
    assert (engine_a.calls, engine_b.calls) == (1, 0)
    assert (first_headers["X-Cache"], second_headers["X-Cache"]) == ("miss", "hit")
    assert second["choices"][0]["message"]["content"] == "answered by A" == first["choices"][0]["message"]["content"]
    assert gate_b.responses.l2_hits == 1
    await gate_a.close()
    await gate_b.close()
