"""Specs for replica choice: prefix affinity bounded by load, and its Ray Serve adapter."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve._private.test_utils import FakeRunningReplica
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest

from deployments.request_router import (
    PrefixAffinityRouter,
    choose_replica,
    preferred_replica,
    routing_key_of,
)

REPLICAS = ["pool#a", "pool#b", "pool#c", "pool#d"]


def _idle(n: int = 4) -> dict[str, int]:
    return dict.fromkeys(REPLICAS[:n], 0)


# --- the pure decision --------------------------------------------------------------------------


def test_same_key_goes_to_same_replica_while_not_overloaded() -> None:
    rng = random.Random(0)
    picks = {choose_replica("prefix-1", _idle(), 8, rng).replica_id for _ in range(20)}
    assert len(picks) == 1


def test_keys_spread_over_replicas() -> None:
    owners = Counter(preferred_replica(f"key-{i}", REPLICAS) for i in range(400))
    assert set(owners) == set(REPLICAS)
    assert min(owners.values()) > 60


def test_preference_ignores_replica_order() -> None:
    assert preferred_replica("k", REPLICAS) == preferred_replica("k", list(reversed(REPLICAS)))


def test_removing_a_replica_moves_only_its_keys() -> None:
    keys = [f"key-{i}" for i in range(200)]
    before = {k: preferred_replica(k, REPLICAS) for k in keys}
    after = {k: preferred_replica(k, REPLICAS[:-1]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == REPLICAS[-1] for k in moved)


def test_affinity_holds_within_the_load_bound() -> None:
    preferred = preferred_replica("k", REPLICAS)
    loads = {**dict.fromkeys(REPLICAS, 2), preferred: 7}  # bound = 2 * 1.5 + 4 = 7
    decision = choose_replica("k", loads, 16, random.Random(0))
    assert decision.replica_id == preferred
    assert "affinity" in decision.reason


def test_overloaded_preferred_replica_falls_back_to_less_loaded() -> None:
    preferred = preferred_replica("k", REPLICAS)
    loads = {**dict.fromkeys(REPLICAS, 2), preferred: 8}
    loads[REPLICAS[0] if preferred != REPLICAS[0] else REPLICAS[1]] = 5
    decision = choose_replica("k", loads, 16, random.Random(0))
    assert decision.replica_id != preferred
    assert decision.preferred_id == preferred
    assert "overloaded" in decision.reason


def test_fallback_takes_the_less_loaded_of_two() -> None:
    loads = {"pool#a": 0, "pool#b": 9}
    assert choose_replica(None, loads, 16, random.Random(1)).replica_id == "pool#a"


def test_full_preferred_replica_is_skipped_even_alone_in_bound() -> None:
    preferred = preferred_replica("k", ["pool#a", "pool#b"])
    other = "pool#b" if preferred == "pool#a" else "pool#a"
    loads = {preferred: 4, other: 3}
    assert choose_replica("k", loads, 4, random.Random(0)).replica_id == other


def test_lone_replica_is_bounded_by_capacity_only() -> None:
    assert choose_replica("k", {"pool#a": 7}, 8, random.Random(0)).replica_id == "pool#a"


def test_without_key_load_is_balanced() -> None:
    rng = random.Random(0)
    picks = Counter(choose_replica(None, _idle(), 8, rng).replica_id for _ in range(400))
    assert set(picks) == set(REPLICAS)


def test_all_full_picks_least_loaded() -> None:
    decision = choose_replica("k", {"pool#a": 9, "pool#b": 8}, 8, random.Random(0))
    assert decision.replica_id == "pool#b"
    assert "capacity" in decision.reason


def test_no_replicas_no_choice() -> None:
    assert choose_replica("k", {}, 8, random.Random(0)).replica_id is None


def test_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError):
        choose_replica("k", _idle(), 0, random.Random(0))


# --- reading the routing key --------------------------------------------------------------------


# PendingRequest makes an asyncio future: build it inside a running loop (async tests).
def _pending(routing_key: object) -> PendingRequest:
    metadata = RequestMetadata(request_id="r", internal_request_id="r", call_method="generate")
    return PendingRequest(args=[SimpleNamespace(routing_key=routing_key)], kwargs={}, metadata=metadata)


async def test_routing_key_read_from_first_argument() -> None:
    assert routing_key_of(_pending("abc")) == "abc"


@pytest.mark.parametrize("key", [None, "", 42])
async def test_unusable_routing_key_is_none(key: object) -> None:
    assert routing_key_of(_pending(key)) is None


async def test_request_without_arguments_has_no_key() -> None:
    metadata = RequestMetadata(request_id="r", internal_request_id="r")
    assert routing_key_of(PendingRequest(args=[], kwargs={}, metadata=metadata)) is None


# --- the Ray Serve adapter ----------------------------------------------------------------------


def _fakes(*names: str) -> list[FakeRunningReplica]:
    return [FakeRunningReplica(name, max_ongoing_requests=8) for name in names]


def _full_ids(replicas: list[FakeRunningReplica]) -> list[str]:
    return [r.replica_id.to_full_id_str() for r in replicas]


def _router(replicas: list[FakeRunningReplica], loads: list[int]) -> PrefixAffinityRouter:
    router = PrefixAffinityRouter(
        deployment_id=DeploymentID(name="pool", app_name="surge"),
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    router.initialize_state(seed=0)
    for replica, load in zip(replicas, loads, strict=True):
        replica.set_queue_len_response(load)
    router.update_replicas(replicas)  # type: ignore[arg-type]
    return router


async def test_router_ranks_the_affinity_pick_first() -> None:
    replicas = _fakes("a", "b", "c")
    router = _router(replicas, [0, 0, 0])
    ranks = await router.choose_replicas(replicas, _pending("prefix"))  # type: ignore[arg-type]
    assert ranks[0][0].replica_id.to_full_id_str() == preferred_replica("prefix", _full_ids(replicas))
    assert len(ranks[1]) == 2


async def test_router_is_sticky_across_requests() -> None:
    replicas = _fakes("a", "b", "c")
    router = _router(replicas, [0, 0, 0])
    picks = set()
    for _ in range(10):
        ranks = await router.choose_replicas(replicas, _pending("prefix"))  # type: ignore[arg-type]
        picks.add(ranks[0][0].replica_id)
    assert len(picks) == 1


async def test_router_spills_from_a_busy_preferred_replica() -> None:
    replicas = _fakes("a", "b", "c")
    preferred = preferred_replica("prefix", _full_ids(replicas))
    router = _router(replicas, [7 if f == preferred else 0 for f in _full_ids(replicas)])
    ranks = await router.choose_replicas(replicas, _pending("prefix"))  # type: ignore[arg-type]
    assert ranks[0][0].replica_id.to_full_id_str() != preferred


async def test_router_skips_replicas_that_do_not_answer_probes() -> None:
    replicas = _fakes("a", "b")
    router = _router(replicas, [0, 0])
    router._replica_queue_len_cache.invalidate_key(replicas[0].replica_id)
    replicas[0].set_queue_len_response(0, exception=RuntimeError("unreachable"))
    for key in ("k1", "k2", "k3", "k4"):
        ranks = await router.choose_replicas(replicas, _pending(key))  # type: ignore[arg-type]
        assert ranks == [[replicas[1]]]


async def test_router_asks_for_backoff_between_rounds() -> None:
    replicas = _fakes("a")
    router = _router(replicas, [0])
    pending = _pending("prefix")
    await router.choose_replicas(replicas, pending)  # type: ignore[arg-type]
    assert pending.routing_context.should_backoff


async def test_router_with_no_candidates_returns_nothing() -> None:
    router = _router(_fakes("a"), [0])
    assert await router.choose_replicas([], _pending("prefix")) == []


def test_router_class_can_be_named_in_serve_config() -> None:
    # Ray annotates RequestRouterConfig.__init__'s kwargs as dicts; strings are what it documents.
    config = RequestRouterConfig(
        request_router_class="deployments.request_router:PrefixAffinityRouter",  # type: ignore[arg-type]
        request_router_kwargs={"load_factor": 2.0, "slack": 2},
    )
    assert config.get_request_router_class() is PrefixAffinityRouter


def test_router_rejects_misspelled_kwargs() -> None:
    router = PrefixAffinityRouter(
        deployment_id=DeploymentID(name="pool", app_name="surge"),
        handle_source=DeploymentHandleSource.UNKNOWN,
    )
    with pytest.raises(ValueError, match="load_facter"):
        router.initialize_state(load_facter=2.0)
