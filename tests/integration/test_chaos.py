"""Chaos on the local multi-node cluster under a bounded load through the real HTTP API (HAProxy, two ingress
replicas, a TP=2 pool of two replicas on two worker nodes, a PostgreSQL key store): the traffic router stopped, an
ingress replica sent SIGTERM, the key store stopped and started, a replica killed, a worker node lost. Each test
prints its counts; none asserts a wall-clock figure (time to the first success after the fault is reported)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray._private import state as ray_state

from cluster.config import PROJECT_ROOT, load_config
from cluster.local import LocalCluster
from cluster.serving import free_port, isolate_serve_ports, serving_cluster
from deployments.admission import open_store
from tests.chaos_load import BoundedLoad, Outcome, Tally, recovery_s, retried_requests, wait_until_ok
from tests.integration.conftest import TEST_TIERS
from tests.integration.test_key_store_outage import _pg_ctl, _server_settings
from tests.integration.test_multinode import (
    TP2,
    chat,
    pool_replicas,
    preferred_replica,
    wait_for_two_serving_replicas,
    worker_index,
)
from tests.pg_server import fresh_database, postgres_server

# Skipped in `make test` until it is reliable; run it by hand with SURGE_CHAOS=1 (issue 16). In the clean-clone CI
# run of 2026-12-02 the replica-kill and node-loss tests got 503 model_unavailable for 68-138 of 200 requests: the
# requests in flight on the lost replica opened the pool's breaker (the TP=2 route has no fallback). A lost replica
# is now 503 replica_lost, retried and not held against its pool; two by-hand runs then passed those two tests
# (196-199 ok, the rest streams cut after their first token with an SSE error event). One run failed the Postgres
# test instead: the SIGTERM test's worker exited late, during it; the SIGTERM test now waits for that exit.
pytestmark = [
    pytest.mark.multinode, pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(1500),
    pytest.mark.skipif(os.environ.get("SURGE_CHAOS") != "1", reason="unreliable in CI (issue 16): SURGE_CHAOS=1"),
]  # fmt: skip

TOTAL, CONCURRENCY = 200, 8


@dataclass(frozen=True)
class Chaos:
    url: str
    cluster: LocalCluster
    keys: dict[str, str]
    postgres_admin_dsn: str
    client: httpx.Client

    def load(self, name: str, total: int = TOTAL, key: str = "enterprise") -> BoundedLoad:
        return BoundedLoad(self.url, self.keys[key], total, CONCURRENCY, _body, id_prefix=f"chaos-{name}").start()


def _body(i: int, stream: bool) -> dict[str, Any]:
    # Distinct prefixes spread the load over both replicas; streams long enough to be cut between tokens.
    messages = [{"role": "system", "content": f"Desk {i % 16}."}, {"role": "user", "content": f"chaos {i}"}]
    return {"model": TP2, "messages": messages, "max_tokens": 32 if stream else 4, "stream": stream}


def _keys(dsn: str) -> dict[str, str]:
    async def create() -> dict[str, str]:
        async with await open_store(dsn) as store:
            return {tier: (await store.create_key(f"chaos-{tier}", tier))[1] for tier in ("enterprise", "tiny-quota")}

    return asyncio.run(create())


@pytest.fixture(scope="module")
def chaos() -> Iterator[Chaos]:
    isolate_serve_ports()
    with postgres_server() as admin_dsn:
        dsn = fresh_database(admin_dsn, "surge_chaos")
        keys = _keys(dsn)
        config = load_config(PROJECT_ROOT / "configs" / "multinode.yaml")
        nodes = config.ray.local_nodes
        assert nodes is not None
        config = config.model_copy(update={
            "server": config.server.model_copy(update={"port": free_port()}),
            "admission": config.admission.model_copy(
                update={"key_store_dsn": dsn, "tiers": {**config.admission.tiers, **TEST_TIERS}}),
            "ingress": config.ingress.model_copy(update={"num_replicas": 2}),
            "ray": config.ray.model_copy(update={"local_nodes": nodes.model_copy(update={"head_cpus": 4})}),
        })  # fmt: skip
        with serving_cluster(config) as (url, cluster):
            headers = {"Authorization": f"Bearer {keys['enterprise']}"}
            with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
                wait_for_two_serving_replicas(client)
                yield Chaos(url, cluster, keys, admin_dsn, client)


def _session_logs() -> Path:
    node = ray._private.worker._global_node
    assert node is not None
    return Path(node.get_session_dir_path()) / "logs"


def _report(name: str, load: BoundedLoad, outcomes: list[Outcome], fault_s: float, **extra: Any) -> Tally:
    answered = sum(o.status not in (0, 500, 502) for o in outcomes)
    retried, logged = retried_requests(_session_logs(), load.id_prefix, answered)
    tally = Tally(name, outcomes, retried, {"logged": logged, **extra})
    first = recovery_s(outcomes, fault_s)
    tally.extra["first_success_after_fault_s"] = "none" if first is None else f"{first:.2f}"
    print(tally.line())
    return tally


def _assert_nothing_lost(outcomes: list[Outcome]) -> None:
    """Non-streamed requests all answered 200 (retried where needed); a stream is whole or ends with an SSE error
    event and [DONE] (cut after its first token, when it can no longer be retried), never silently truncated."""
    plain = [o for o in outcomes if not o.streamed]
    assert all(o.ok for o in plain), Counter((o.status, o.error_code, o.broken) for o in plain if not o.ok)
    streams = [o for o in outcomes if o.streamed]
    assert not [o for o in streams if o.silently_truncated]
    bad = [o for o in streams if not (o.ok or o.cut_with_error_event)]
    assert not bad, Counter((o.status, o.error_code, o.broken) for o in bad)


def _actor(class_name: str) -> list[dict[str, Any]]:
    return [a for a in ray_state.actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == class_name]


def _answers_again(chaos: Chaos) -> None:
    """The service answers a new request (after the load: an outer bound, not a figure)."""
    wait_until_ok(lambda: chat(chaos.client, f"back? {time.monotonic()}"), time.monotonic())


def test_stopping_the_traffic_router_loses_no_request(chaos: Chaos) -> None:
    """The ingress routes on its last snapshot of the router's table while Serve replaces the router."""
    router = _actor("ServeReplica:surge:traffic-router")
    assert len(router) == 1
    load = chaos.load("router")
    load.wait_for(TOTAL // 4)
    fault_s = time.monotonic()
    ray.kill(ray.get_actor(router[0]["Name"], namespace="serve"), no_restart=True)
    outcomes = load.join()
    _report("traffic router stopped", load, outcomes, fault_s)
    _assert_nothing_lost(outcomes)
    _answers_again(chaos)


def test_sigterm_to_an_ingress_replica_cuts_only_its_own_requests_and_never_silently(chaos: Chaos) -> None:
    """Ray's worker exits on SIGTERM at once (no drain: that is Serve's own stop, test_drain.py), so the requests
    in flight on that replica are cut: HAProxy answers them 500 (its 502, normalised by Serve), or the stream's
    connection breaks mid-body, which the client sees as a protocol error; never a clean-looking truncated stream.
    New requests go to the other replica (HAProxy retries failed connects) and Serve replaces the stopped one."""
    ingress = _actor("ServeReplica:surge:ingress")
    assert len(ingress) == 2
    load = chaos.load("ingress")
    load.wait_for(TOTAL // 4)
    fault_s = time.monotonic()
    os.kill(ingress[0]["Pid"], signal.SIGTERM)
    outcomes = load.join()
    _report("ingress replica SIGTERM", load, outcomes, fault_s)
    lost = [o for o in outcomes if not o.ok]
    assert not [o for o in outcomes if o.silently_truncated]
    assert len(lost) <= CONCURRENCY, Counter((o.status, o.broken) for o in lost)  # at most those in flight
    assert all(o.status in (0, 500) or o.broken for o in lost), Counter((o.status, o.error_code) for o in lost)
    _answers_again(chaos)
    # Until the signalled worker has exited and been replaced: its exit can come after the load, and then it cut
    # the next test's requests (a run of 2026-12-02: 4 broken connections in the Postgres test, none in this one).
    deadline = time.monotonic() + 300  # Serve's replacement: an outer bound only
    while not _replaced(ingress[0]["ActorID"]):
        assert time.monotonic() < deadline, "the stopped ingress replica did not exit and get replaced"
        time.sleep(0.5)


def _replaced(ingress_actor_id: str) -> bool:
    alive = {a["ActorID"] for a in _actor("ServeReplica:surge:ingress")}
    return ingress_actor_id not in alive and len(alive) >= 2


def _quota_answer(chaos: Chaos) -> httpx.Response:
    # ignore_eos: each answer uses all it reserved, so no refund at settlement reopens the quota later.
    body = {"model": TP2, "messages": [{"role": "user", "content": "more"}], "max_tokens": 64, "ignore_eos": True}
    return chaos.client.post("/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {chaos.keys['tiny-quota']}"})  # fmt: skip


def _exhaust_quota(chaos: Chaos) -> None:
    """Until the key is refused twice in a row: the second after every earlier reservation has settled."""
    refused = 0
    for _ in range(200):
        refused = refused + 1 if _quota_answer(chaos).status_code == 429 else 0
        if refused == 2:
            return
    raise AssertionError("the tiny-quota key was never refused")


def test_postgres_key_store_restart_answers_503_with_retry_after_and_recovers(chaos: Chaos) -> None:
    """While the store is down every request is refused 503 + Retry-After (never a 500, never let through
    unchecked); once it is up again requests succeed by themselves, and a key past its quota is still refused."""
    _exhaust_quota(chaos)
    settings = asyncio.run(_server_settings(chaos.postgres_admin_dsn))
    load = chaos.load("postgres")
    load.wait_for(TOTAL // 4)
    fault_s = time.monotonic()
    _pg_ctl(settings, "stop")
    try:
        load.wait_for(TOTAL // 2)
        quota_down = _quota_answer(chaos)
    finally:
        _pg_ctl(settings, "start")
    started_s = time.monotonic()
    outcomes = load.join()
    back_s = wait_until_ok(lambda: chat(chaos.client, f"back? {time.monotonic()}"), started_s)
    quota_up = _quota_answer(chaos)
    refused = [o for o in outcomes if o.status == 503]
    _report("postgres stopped and started", load, outcomes, fault_s, answers_again_after_start_s=f"{back_s:.2f}",
            quota_key_while_down=quota_down.status_code, quota_key_after=quota_up.status_code)  # fmt: skip
    assert {o.status for o in outcomes} <= {200, 503}, Counter(o.status for o in outcomes)
    assert refused and all(o.retry_after and o.error_code == "key_store_unavailable" for o in refused)
    assert not [o for o in outcomes if o.silently_truncated or o.broken]
    assert quota_down.status_code == 503 and quota_down.headers.get("Retry-After")
    assert quota_up.status_code == 429  # the outage let nothing past the quota


def test_killing_a_replica_under_load_loses_no_request(chaos: Chaos) -> None:
    wait_for_two_serving_replicas(chaos.client)
    victim = preferred_replica(chaos.client)
    load = chaos.load("replica")
    load.wait_for(TOTAL // 4)
    fault_s = time.monotonic()
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    outcomes = load.join()
    _report("replica killed", load, outcomes, fault_s)
    _assert_nothing_lost(outcomes)
    _answers_again(chaos)


def test_losing_a_worker_node_under_load_loses_no_request(chaos: Chaos) -> None:
    wait_for_two_serving_replicas(chaos.client)  # the replica killed above is replaced first
    victim = preferred_replica(chaos.client)
    assert victim.node_id in {r.node_id for r in pool_replicas("main")}
    load = chaos.load("node")
    load.wait_for(TOTAL // 4)
    fault_s = time.monotonic()
    chaos.cluster.kill_worker(worker_index(chaos.cluster, victim.node_id))
    outcomes = load.join()
    _report("worker node lost", load, outcomes, fault_s)
    _assert_nothing_lost(outcomes)
    _answers_again(chaos)
