"""The response cache in two levels: the in-process LRU (L1) and, when configured, Redis (L2) shared by every
ingress replica. Redis is reached through its asyncio client with a short timeout; a Redis that fails or is
slow gives misses (and is left alone for a while), never errors."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis

from cluster.config import CacheConfig
from deployments.admission.cache import ResponseCache
from deployments.engines.base import GenerationChunk

__all__ = ["CachedResponse", "RedisCache", "TieredCache", "decode_response", "encode_response"]

logger = logging.getLogger("surge.cache")
CachedResponse = tuple[GenerationChunk, dict[str, str]]

# Store the value and index it by time; drop the oldest beyond the bound and index entries past the TTL.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]))
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
end
return extra
"""


def encode_response(value: CachedResponse) -> bytes:
    chunk, headers = value
    return json.dumps({"chunk": asdict(chunk), "headers": headers}, separators=(",", ":")).encode()


def decode_response(data: bytes) -> CachedResponse:
    item = json.loads(data)
    return GenerationChunk(**item["chunk"]), {str(k): str(v) for k, v in item["headers"].items()}


class RedisCache:
    """Bytes in Redis under `redis_prefix`, with a TTL and at most `redis_max_entries` entries."""

    def __init__(self, config: CacheConfig, client: aioredis.Redis | None = None) -> None:
        assert config.redis_url is not None
        self._config = config
        timeout = config.redis_timeout_s
        self._client = client or aioredis.Redis.from_url(
            config.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._put = self._client.register_script(_PUT)
        self._index = f"{config.redis_prefix}index"
        self._down_until = 0.0
        self.errors = 0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            lookup = self._client.get(self._config.redis_prefix + key)
            value = await asyncio.wait_for(lookup, self._config.redis_timeout_s)
        except Exception as exc:  # any Redis failure is a miss
            self._failed(exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes) -> None:
        if not self.available or len(value) > self._config.redis_max_value_bytes:
            return
        ttl_ms, now_ms = int(self._config.ttl_s * 1000), int(time.time() * 1000)
        args: list[bytes | int] = [value, ttl_ms, now_ms, self._config.redis_max_entries]
        try:
            await asyncio.wait_for(
                self._put(keys=[self._config.redis_prefix + key, self._index], args=args), self._config.redis_timeout_s
            )
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self._config.redis_retry_after_s
        logger.warning("redis cache unavailable for %.1f s: %r", self._config.redis_retry_after_s, exc)

    async def close(self) -> None:
        await self._client.aclose()


class TieredCache:
    """L1 first; on an L1 miss, L2 (a hit there fills L1). Puts go to L1 at once and to L2 in the background."""

    def __init__(self, l1: ResponseCache[Any], l2: RedisCache | None) -> None:
        self.l1 = l1
        self.l2 = l2
        self.l2_hits = 0
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> CachedResponse | None:
        hit: CachedResponse | None = self.l1.get(key)
        if hit is not None or self.l2 is None:
            return hit
        data = await self.l2.get(key)
        if data is None:
            return None
        try:
            value = decode_response(data)
        except (ValueError, KeyError, TypeError):
            return None
        self.l2_hits += 1
        self.l1.put(key, value)
        return value

    def put(self, key: str, value: CachedResponse) -> None:
        self.l1.put(key, value)
        if self.l2 is not None and self.l2.available:
            task = asyncio.get_running_loop().create_task(self.l2.put(key, encode_response(value)))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def flush(self) -> None:
        """Wait for the background writes to Redis (tests, shutdown)."""
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        if self.l2 is not None:
            await self.l2.close()
