"""Specs for the local multi-node cluster: real raylets, declared GPUs, placement, clean teardown."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from cluster.local import LocalCluster
from cluster.placement import plan_placement

pytestmark = [pytest.mark.multinode, pytest.mark.slow, pytest.mark.timeout(240)]


def _ray_daemon_pids() -> set[int]:
    # Other Ray sessions may run on this machine: compare sets, never expect zero.
    found = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}


def _process_table() -> list[tuple[int, int, str]]:
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,stat="], capture_output=True, text=True)
    return [(int(pid), int(ppid), stat) for pid, ppid, stat in (row.split() for row in table.stdout.splitlines())]


def _live(pids: set[int]) -> set[int]:
    return {pid for pid, _, stat in _process_table() if pid in pids and not stat.startswith("Z")}


def _with_descendants(roots: list[int]) -> set[int]:
    """The cluster's own processes plus everything they started (Ray workers, engines)."""
    table = _process_table()
    found, stack = set(roots), list(roots)
    while stack:
        parent = stack.pop()
        children = [pid for pid, ppid, _ in table if ppid == parent and pid not in found]
        found.update(children)
        stack.extend(children)
    return found


def _wait_until_gone(pids: set[int], timeout_s: float = 10.0) -> set[int]:
    # Worker processes exit on their own once their raylet is gone; give them a moment.
    deadline = time.monotonic() + timeout_s
    while (left := _live(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _stop_and_check(local: LocalCluster) -> None:
    tracked = _with_descendants(local.pids())
    local.stop()
    # Other sessions may start Ray daemons meanwhile: only ours must be gone.
    assert not _ray_daemon_pids() & tracked
    assert _wait_until_gone(tracked) == set()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(num_workers=2, head_cpus=1, worker_cpus=4, worker_gpus=2, fast_failure_detection=True).start()
    ray.init(address=local.address, log_to_driver=False)
    try:
        yield local
    finally:
        _stop_and_check(local)


def _alive_nodes() -> list[dict[str, object]]:
    return [node for node in ray.nodes() if node["Alive"]]


def test_head_and_two_workers_are_alive(cluster: LocalCluster) -> None:
    assert len(_alive_nodes()) == 3


def test_workers_declare_two_gpus_and_head_none(cluster: LocalCluster) -> None:
    gpus = {str(n["NodeID"]): n["Resources"].get("GPU", 0) for n in _alive_nodes()}  # type: ignore[attr-defined]
    assert [gpus[node_id] for node_id in cluster.worker_node_ids] == [2, 2]
    assert sorted(gpus.values()) == [0, 2, 2]


def test_nodes_listen_on_loopback(cluster: LocalCluster) -> None:
    assert {n["NodeManagerAddress"] for n in _alive_nodes()} == {"127.0.0.1"}
    assert cluster.address.startswith("127.0.0.1:")


def test_cpu_plan_placement_group_is_schedulable(cluster: LocalCluster) -> None:
    plan = plan_placement(2, cpus_per_worker=1, replica_cpus=1, platform="cpu", reserve_gpus=True)
    group = placement_group(list(plan.bundles), strategy=plan.strategy)
    try:
        ray.get(group.ready(), timeout=30)
        (node_id,) = set(placement_group_table(group)["bundles_to_node_id"].values())
        assert node_id in cluster.worker_node_ids
    finally:
        remove_placement_group(group)


def _wait_for_free_gpus(count: float, timeout_s: float = 10.0) -> None:
    # Removed placement groups release their resources asynchronously.
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("GPU", 0) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def test_replica_groups_of_a_pool_spread_over_workers(cluster: LocalCluster) -> None:
    # Ray's placement-group scheduler prefers the least-used node: best effort, from its resource
    # view, so only asserted on an idle cluster with groups requested together (as Serve does).
    _wait_for_free_gpus(4)
    plan = plan_placement(1, cpus_per_worker=1, replica_cpus=1, platform="cpu", reserve_gpus=True)
    groups = [placement_group(list(plan.bundles), strategy=plan.strategy) for _ in range(2)]
    try:
        ray.get([g.ready() for g in groups], timeout=30)
        nodes = {next(iter(placement_group_table(g)["bundles_to_node_id"].values())) for g in groups}
        assert nodes == set(cluster.worker_node_ids)
    finally:
        for group in groups:
            remove_placement_group(group)


def test_serve_pool_spreads_and_routes_by_prefix_affinity(cluster: LocalCluster) -> None:
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    _wait_for_free_gpus(4)
    plan = plan_placement(1, cpus_per_worker=1, replica_cpus=0.5, platform="cpu", reserve_gpus=True)
    router = RequestRouterConfig(
        request_router_class="deployments.request_router:PrefixAffinityRouter",  # type: ignore[arg-type]
    )

    # Defined here so Serve pickles it by value: the workers cannot import this test module.
    class Pool:
        async def generate(self, request: SimpleNamespace) -> tuple[str, str]:
            replica_id = serve.get_replica_context().replica_id.unique_id
            return replica_id, ray.get_runtime_context().get_node_id()

    deployment = serve.deployment(num_replicas=2, request_router_config=router, **plan.deployment_options())
    handle = serve.run(deployment(Pool).bind(), name="surge", route_prefix=None)
    try:
        owners: dict[str, set[str]] = {}
        nodes: set[str] = set()
        # 20 keys: all of them preferring one replica has odds of 2**-19.
        for i in range(60):
            replica_id, node_id = handle.generate.remote(SimpleNamespace(routing_key=f"k{i % 20}")).result()
            owners.setdefault(f"k{i % 20}", set()).add(replica_id)
            nodes.add(node_id)
    finally:
        serve.shutdown()
    assert all(len(replicas) == 1 for replicas in owners.values())
    assert len(set().union(*owners.values())) == 2
    assert nodes == set(cluster.worker_node_ids)


def test_killed_worker_is_declared_dead(cluster: LocalCluster) -> None:
    # Last in the module: it leaves one worker down, and a replacement joins the cluster.
    killed = cluster.kill_worker(1)
    cluster.wait_for_alive_nodes(2, timeout_s=30)
    assert killed not in {n["NodeID"] for n in _alive_nodes()}
    cluster.add_worker()
    cluster.wait_for_alive_nodes(3, timeout_s=30)


def test_stop_leaves_no_ray_process_behind() -> None:
    before = _ray_daemon_pids()
    local = LocalCluster(num_workers=1, head_cpus=1, worker_cpus=1, worker_gpus=1).start()
    assert set(local.pids()) - before, "the cluster started processes of its own"
    _stop_and_check(local)
    local.stop()  # idempotent
