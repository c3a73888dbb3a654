"""Response cache for deterministic requests: a per-tenant key and an in-process TTL + LRU store."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["ResponseCache", "cache_key", "is_deterministic"]

V = TypeVar("V")


def is_deterministic(params: Mapping[str, Any]) -> bool:
    """Whether sampling with `params` repeats itself: temperature 0, or a fixed seed."""
    if params.get("seed") is not None:
        return True
    # OpenAI's default temperature is 1, so a request that leaves it out samples.
    temperature = params.get("temperature")
    return temperature is not None and float(temperature) == 0.0


def cache_key(tenant: str, model_version: str, prompt: str | list[Any], params: Mapping[str, Any]) -> str | None:
    """sha256 of tenant, model version, prompt hash and canonical params hash; None when not deterministic."""
    if not is_deterministic(params):
        return None
    prompt_hash = _sha256(_canonical(prompt))
    params_hash = _sha256(_canonical(_normalize_numbers(params)))
    return _sha256("\x00".join((tenant, model_version, prompt_hash, params_hash)))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    # Sorted keys and fixed separators: equal requests serialise to equal text.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _normalize_numbers(value: Any) -> Any:
    """Make 0 and 0.0 (or 1 and 1.0) the same parameter value."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize_numbers(v) for v in value]
    return value


class ResponseCache(Generic[V]):
    """An in-process, size-bounded LRU whose entries expire `ttl_s` after they were put."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float | None = None) -> V | None:
        """The cached value, or None when absent or expired; a hit becomes the most recently used."""
        now = self._clock() if now is None else now
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: str, value: V, now: float | None = None) -> None:
        """Store `value` until now + ttl_s, evicting the least recently used entry when full."""
        now = self._clock() if now is None else now
        self._entries[key] = (now + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
