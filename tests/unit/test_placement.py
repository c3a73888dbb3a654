"""Specs for the replica placement planner."""

from __future__ import annotations

import pytest

from cluster.placement import detect_platform, plan_placement


def test_cpu_plan_reserves_all_tp_worker_cpus_in_one_bundle() -> None:
    plan = plan_placement(2, cpus_per_worker=1, replica_cpus=1, platform="cpu")
    assert plan.bundles == ({"CPU": 3.0},)


def test_cpu_plan_uses_mp_backend_for_tensor_parallel() -> None:
    assert plan_placement(2, platform="cpu").distributed_executor_backend == "mp"


def test_cpu_plan_runs_single_worker_in_process() -> None:
    assert plan_placement(1, platform="cpu").distributed_executor_backend is None


def test_cpu_plan_never_uses_the_ray_backend() -> None:
    plans = [plan_placement(tp, pp, platform="cpu") for tp in (1, 2, 4) for pp in (1, 2)]
    assert all(p.distributed_executor_backend != "ray" for p in plans)


def test_cpu_plan_sets_engine_threads_per_worker() -> None:
    plan = plan_placement(2, cpus_per_worker=3, platform="cpu")
    assert plan.engine_env["OMP_NUM_THREADS"] == "3"


def test_cpu_plan_gives_fractional_workers_one_thread() -> None:
    plan = plan_placement(2, cpus_per_worker=0.5, platform="cpu")
    assert plan.engine_env["OMP_NUM_THREADS"] == "1"


def test_cpu_plan_can_reserve_fake_gpus_for_local_rehearsal() -> None:
    plan = plan_placement(2, platform="cpu", reserve_gpus=True)
    assert plan.bundles == ({"CPU": 3.0, "GPU": 2.0},)


def test_cpu_plan_with_pipeline_parallel_stays_on_one_node() -> None:
    plan = plan_placement(2, 2, platform="cpu")
    assert (plan.strategy, plan.bundles) == ("STRICT_PACK", ({"CPU": 5.0},))


def test_cuda_plan_has_one_gpu_bundle_per_worker() -> None:
    plan = plan_placement(4, platform="cuda")
    assert [b["GPU"] for b in plan.bundles] == [1.0, 1.0, 1.0, 1.0]


def test_cuda_plan_puts_replica_actor_with_first_gpu_worker() -> None:
    plan = plan_placement(2, cpus_per_worker=1, replica_cpus=1, platform="cuda")
    assert plan.bundles == ({"GPU": 1.0, "CPU": 2.0}, {"GPU": 1.0, "CPU": 1.0})


def test_cuda_plan_uses_ray_backend() -> None:
    assert plan_placement(2, platform="cuda").distributed_executor_backend == "ray"


def test_tensor_parallel_alone_is_strict_pack() -> None:
    assert plan_placement(4, 1, platform="cuda").strategy == "STRICT_PACK"


def test_pipeline_parallel_may_span_nodes() -> None:
    plan = plan_placement(2, 2, platform="cuda")
    assert (plan.strategy, len(plan.bundles)) == ("PACK", 4)


def test_plan_explains_itself() -> None:
    assert "mp" in plan_placement(2, platform="cpu").reason


@pytest.mark.parametrize("tp, pp", [(0, 1), (1, 0)])
def test_rejects_empty_parallelism(tp: int, pp: int) -> None:
    with pytest.raises(ValueError):
        plan_placement(tp, pp)


def test_rejects_unknown_platform() -> None:
    with pytest.raises(ValueError):
        plan_placement(1, platform="tpu")  # type: ignore[arg-type]


def test_rejects_a_plan_reserving_nothing() -> None:
    with pytest.raises(ValueError):
        plan_placement(1, cpus_per_worker=0, replica_cpus=0, platform="cpu")


def test_deployment_options_name_serve_placement_fields() -> None:
    options = plan_placement(2, platform="cuda").deployment_options()
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"][0] == {"GPU": 1.0, "CPU": 2.0}
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}


def test_deployment_options_pass_engine_env_through_runtime_env() -> None:
    options = plan_placement(2, platform="cpu").deployment_options()
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"


def test_single_bundle_plan_spreads_with_max_replicas_per_node() -> None:
    options = plan_placement(2, platform="cpu").deployment_options(max_replicas_per_node=1)
    assert "placement_group_bundles" not in options
    assert options["max_replicas_per_node"] == 1
    assert options["ray_actor_options"]["num_cpus"] == 3.0


def test_placement_group_plan_drops_max_replicas_per_node() -> None:
    # Serve refuses max_replicas_per_node together with placement_group_bundles.
    options = plan_placement(2, platform="cuda").deployment_options(max_replicas_per_node=1)
    assert "max_replicas_per_node" not in options
    assert "placement_group_bundles" in options


def test_deployment_options_do_not_share_the_plans_bundles() -> None:
    plan = plan_placement(2, platform="cuda")
    plan.deployment_options()["placement_group_bundles"][0]["GPU"] = 7
    assert plan.bundles[0]["GPU"] == 1.0


def test_engine_kwargs_carry_parallelism_and_backend() -> None:
    assert plan_placement(2, platform="cpu").engine_kwargs() == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "distributed_executor_backend": "mp",
    }


def test_engine_kwargs_leave_single_worker_backend_to_vllm() -> None:
    assert "distributed_executor_backend" not in plan_placement(1, platform="cpu").engine_kwargs()


def test_serve_accepts_the_options() -> None:
    from ray import serve

    class Replica:
        pass

    deployment = serve.deployment()(Replica)
    for plan in (plan_placement(2, platform="cpu"), plan_placement(2, 2, platform="cuda")):
        deployment.options(**plan.deployment_options())
    deployment.options(**plan_placement(1, platform="cpu").deployment_options(max_replicas_per_node=2))


def test_detect_platform_reports_cpu_here() -> None:
    assert detect_platform() == "cpu"
