"""A multi-node Ray cluster on one machine: a head plus worker nodes that declare (fake) GPUs.

Each node is a separate raylet, so placement groups, `max_replicas_per_node` and node loss behave
as on a real cluster. Everything binds to 127.0.0.1.

Built on `ray.cluster_utils.Cluster` rather than `ray start` subprocesses: the nodes are owned by
this process and tracked per node, so `stop()` kills exactly their processes (and Ray's reaper kills
them if this process dies), whereas `ray start` clusters are torn down with `ray stop`, which kills
every Ray process on the machine, including other sessions' clusters.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

__all__ = ["LocalCluster"]

# Without this Ray resolves 127.0.0.1 to the machine's public address when a driver connects
# (services.resolve_ip_for_localhost), and finds no GCS there because ours listens on loopback.
# On Linux it changes nothing else: it only gates `ray start` joining a multi-node cluster.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
_LOOPBACK = "127.0.0.1"
# Ray's default health checking declares a killed node dead after ~15 s; chaos tests want ~3 s.
# Off by default: on two busy cores a tight check could declare a live but starved node dead.
_FAST_FAILURE_DETECTION = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 4,
}


class LocalCluster:
    """Head (no GPUs) plus `num_workers` worker nodes with `worker_gpus` declared GPUs each."""

    def __init__(
        self,
        num_workers: int = 2,
        head_cpus: int = 2,
        worker_cpus: int = 2,
        worker_gpus: int = 2,
        object_store_bytes: int = 150 << 20,
        env_vars: dict[str, str] | None = None,
        fast_failure_detection: bool = False,
    ) -> None:
        if num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        self._num_workers = num_workers
        self._head_cpus = head_cpus
        self._worker_cpus = worker_cpus
        self._worker_gpus = worker_gpus
        self._object_store_bytes = object_store_bytes
        # Also exported into this process before start: the head's processes inherit it, and
        # settings such as RAY_SERVE_THROUGHPUT_OPTIMIZED must reach the Serve controller.
        self._env_vars = {**_LOOPBACK_ENV, **(env_vars or {})}
        self._system_config = dict(_FAST_FAILURE_DETECTION) if fast_failure_detection else {}
        self._cluster: Any = None
        self._workers: list[Any] = []

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The GCS address for `ray.init(address=...)` or `RAY_ADDRESS`."""
        if self._cluster is None:
            raise RuntimeError("the local cluster is not running")
        return str(self._cluster.address)

    @property
    def worker_node_ids(self) -> list[str]:
        """Ray node ids of the worker nodes, in start order (killed ones included)."""
        return [str(node.node_id) for node in self._workers]

    def pids(self) -> list[int]:
        """Process ids of every process this cluster's nodes started (raylets, GCS, agents)."""
        if self._cluster is None:
            return []
        return [
            info.process.pid
            for node in self._cluster.list_all_nodes()
            for infos in node.all_processes.values()
            for info in infos
        ]

    def start(self) -> LocalCluster:
        """Start the head and the worker nodes; returns self."""
        if self._cluster is not None:
            raise RuntimeError("the local cluster is already running")
        os.environ.update(self._env_vars)
        _force_loopback_in_this_process()
        from ray.cluster_utils import Cluster

        head_args: dict[str, Any] = {
            **self._node_args(self._head_cpus, 0),
            "include_dashboard": False,
            "_system_config": self._system_config,
        }
        self._cluster = Cluster(initialize_head=True, head_node_args=head_args)
        try:
            for _ in range(self._num_workers):
                self.add_worker()
            self._cluster.wait_for_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self) -> str:
        """Start one more worker node (e.g. to replace a killed one); returns its node id."""
        if self._cluster is None:
            raise RuntimeError("the local cluster is not running")
        node = self._cluster.add_node(**self._node_args(self._worker_cpus, self._worker_gpus))
        self._workers.append(node)
        return str(node.node_id)

    def kill_worker(self, index: int) -> str:
        """SIGKILL worker `index`'s raylet, as a node loss would; returns its node id."""
        node = self._workers[index]
        # check_alive=False: killing an already-dead node again is a no-op, not an error.
        node.kill_raylet(check_alive=False)
        return str(node.node_id)

    def wait_for_alive_nodes(self, count: int, timeout_s: float = 30.0) -> None:
        """Block until exactly `count` nodes are alive in the GCS (needs a connected driver)."""
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
            if len([node for node in nodes if node["Alive"]]) == count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"expected {count} alive nodes within {timeout_s}s")

    def stop(self) -> None:
        """Disconnect this process's driver and kill every node's processes; idempotent."""
        if self._cluster is None:
            return
        import ray

        # The driver holds connections to the GCS; drop them before the GCS goes away.
        if ray.is_initialized():
            ray.shutdown()
        cluster, self._cluster, self._workers = self._cluster, None, []
        cluster.shutdown()

    def _node_args(self, num_cpus: int, num_gpus: int) -> dict[str, Any]:
        return {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "node_ip_address": _LOOPBACK,
            "object_store_memory": self._object_store_bytes,
            # Raylets pass these to every worker process they start (replicas, engines).
            "env_vars": dict(self._env_vars),
        }


def _force_loopback_in_this_process() -> None:
    # The flag above is read once, when ray is imported; this process may have imported ray first.
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
