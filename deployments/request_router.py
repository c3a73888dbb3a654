"""Replica choice inside a model pool: prefix-cache affinity, bounded by load.

Requests that share a prompt prefix carry the same `routing_key`; rendezvous (highest-random-weight)
hashing maps the key to one preferred replica, whose KV cache then already holds the prefix. The
preference holds while that replica is not much busier than the least-loaded one; otherwise the
request goes to the less loaded of two random replicas (power of two choices).

`choose_replica` is the pure decision. `PrefixAffinityRouter` adapts it to Ray Serve:
`RequestRouterConfig(request_router_class="deployments.request_router:PrefixAffinityRouter",
request_router_kwargs={"load_factor": 1.5, "slack": 4})`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "DEFAULT_SLACK",
    "PrefixAffinityRouter",
    "RouteDecision",
    "choose_replica",
    "preferred_replica",
    "routing_key_of",
]

# The preferred replica keeps its keys until it holds more than
# `least_loaded_other * DEFAULT_LOAD_FACTOR + DEFAULT_SLACK` requests. A cache hit saves a whole
# prefill, which is worth a few extra requests in a continuously batching engine.
DEFAULT_LOAD_FACTOR = 1.5
DEFAULT_SLACK = 4


@dataclass(frozen=True)
class RouteDecision:
    """The chosen replica (None when there is none to choose), the key's preferred one, and why."""

    replica_id: str | None
    reason: str
    preferred_id: str | None = None


def preferred_replica(routing_key: str, replica_ids: Iterable[str]) -> str:
    """The replica with the highest rendezvous weight for `routing_key`."""
    # Rendezvous hashing moves only the keys of a replica that left or joined, and needs no ring.
    # blake2b, not hash(): every caller process must agree, and hash() is salted per process.
    return max(replica_ids, key=lambda replica_id: (_weight(routing_key, replica_id), replica_id))


def choose_replica(
    routing_key: str | None,
    loads: dict[str, int],
    capacity: int,
    rng: random.Random,
    load_factor: float = DEFAULT_LOAD_FACTOR,
    slack: float = DEFAULT_SLACK,
) -> RouteDecision:
    """Pick a replica from `loads` (replica id → ongoing requests); `capacity` is max_ongoing_requests."""
    if capacity < 1 or load_factor < 0 or slack < 0:
        raise ValueError("capacity must be >= 1, load_factor and slack >= 0")
    if not loads:
        return RouteDecision(None, "no replica with a known load")
    open_ids = sorted(r for r, load in loads.items() if load < capacity)
    if not open_ids:
        least = min(sorted(loads), key=loads.__getitem__)
        # Serve's router re-probes full replicas and backs off, so a full pick is safe to return.
        return RouteDecision(least, f"every replica at capacity {capacity}; least loaded")
    if routing_key is None:
        return _two_choices(open_ids, loads, rng, "no routing key")
    preferred = preferred_replica(routing_key, loads)
    load, bound = loads[preferred], _load_bound(preferred, loads, load_factor, slack)
    if load < capacity and load <= bound:
        return RouteDecision(preferred, f"prefix affinity (load {load} <= bound {bound:g})", preferred)
    why = f"preferred replica overloaded (load {load}, bound {bound:g}, capacity {capacity})"
    spill = [r for r in open_ids if r != preferred] or open_ids
    return _two_choices(spill, loads, rng, why, preferred)


def routing_key_of(pending_request: PendingRequest | None) -> str | None:
    """The `routing_key` attribute of the request's first argument, if it has a usable one."""
    if pending_request is None or not pending_request.args:
        return None
    key = getattr(pending_request.args[0], "routing_key", None)
    return key if isinstance(key, str) and key else None


def _weight(routing_key: str, replica_id: str) -> int:
    digest = hashlib.blake2b(f"{routing_key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _load_bound(preferred: str, loads: dict[str, int], load_factor: float, slack: float) -> float:
    others = [load for replica_id, load in loads.items() if replica_id != preferred]
    if not others:
        # A lone replica is bounded by its capacity alone.
        return math.inf
    return min(others) * load_factor + slack


def _two_choices(
    replica_ids: list[str],
    loads: dict[str, int],
    rng: random.Random,
    why: str,
    preferred: str | None = None,
) -> RouteDecision:
    if len(replica_ids) == 1:
        return RouteDecision(replica_ids[0], f"{why}; only candidate", preferred)
    first, second = rng.sample(replica_ids, 2)
    pick = first if loads[first] <= loads[second] else second
    return RouteDecision(pick, f"{why}; less loaded of two random replicas", preferred)


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve request router applying `choose_replica` to the replicas' queue lengths."""

    # Class defaults keep the router usable even if Serve skips initialize_state.
    _load_factor: float = DEFAULT_LOAD_FACTOR
    _slack: float = DEFAULT_SLACK
    _rng: random.Random = random.Random()

    def initialize_state(self, **kwargs: Any) -> None:
        """Receive `request_router_kwargs`: `load_factor`, `slack`, and `seed` for reproducible picks."""
        unknown = set(kwargs) - {"load_factor", "slack", "seed"}
        if unknown:
            # Serve passes request_router_kwargs through unchecked; a typo would silently do nothing.
            raise ValueError(f"unknown PrefixAffinityRouter kwargs: {sorted(unknown)}")
        load_factor = float(kwargs.get("load_factor", DEFAULT_LOAD_FACTOR))
        slack = float(kwargs.get("slack", DEFAULT_SLACK))
        if load_factor < 0 or slack < 0:
            raise ValueError("load_factor and slack must be >= 0")
        self._load_factor = load_factor
        self._slack = slack
        self._rng = random.Random(kwargs.get("seed"))

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Rank the affinity (or two-choices) pick first, then every other replica with a known load."""
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # The base retry loop sleeps between rounds only when this is set
            # (LocalityMixin sets it for the built-in router; we do not use that mixin).
            pending_request.routing_context.should_backoff = True
        loads = await self._replica_loads(candidate_replicas)
        if not loads:
            # No replica answered a probe: hand all of them to the base class, which probes again.
            return [candidate_replicas]
        capacity = min(r.max_ongoing_requests for r in candidate_replicas)
        decision = choose_replica(
            routing_key_of(pending_request), loads, capacity, self._rng, self._load_factor, self._slack
        )
        by_id = {r.replica_id.to_full_id_str(): r for r in candidate_replicas}
        chosen = by_id[decision.replica_id] if decision.replica_id else candidate_replicas[0]
        # If the pick turns the request away (its queue filled meanwhile), the base class falls
        # through to the next rank and takes the least loaded of the rest.
        rest = [r for r_id, r in by_id.items() if r is not chosen and r_id in loads]
        return [[chosen], rest] if rest else [[chosen]]

    async def _replica_loads(self, replicas: list[RunningReplica]) -> dict[str, int]:
        """Ongoing requests per replica: the router's cache, probing replicas it has no fresh entry for."""
        loads: dict[str, int] = {}
        to_probe: list[RunningReplica] = []
        for replica in replicas:
            cached = (
                self._replica_queue_len_cache.get(replica.replica_id) if self._use_replica_queue_len_cache else None
            )
            # Like the built-in router, re-probe replicas cached as full so they are not
            # shunned until the cache entry expires.
            if cached is None or cached >= replica.max_ongoing_requests:
                to_probe.append(replica)
            else:
                loads[replica.replica_id.to_full_id_str()] = cached
        if to_probe:
            # Probing also refreshes the cache, so the next request usually needs no probe.
            for replica, queue_len in await self._probe_queue_lens(to_probe, 0):
                if queue_len is not None:
                    loads[replica.replica_id.to_full_id_str()] = queue_len
        return loads
