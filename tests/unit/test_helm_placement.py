"""Where the chart puts a pool's replicas: pools kept to their worker groups by Ray node label (with the placement
group the app plans, restated for Serve), the autoscaler version that honours it, and the platform the app is
built for on a head without GPUs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cluster.config.mapping import config_from_mapping
from tests.helm_render import (
    VARIANTS,
    containers,
    find_kind,
    objects,
    rayservice,
    render,
    serve_config,
    variant_values,
)


def _variant_with(variant: str, **values: Any) -> list[dict[str, Any]]:
    return objects(render({**variant_values(variant), **values}))


def test_pools_kept_to_their_groups_are_placed_there_by_ray_node_label() -> None:
    from ray._private.label_utils import validate_label_selector, validate_node_label_syntax

    from deployments.app import pool_options

    service = rayservice("multi-pool-tp4")
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert group["labels"] == {"surge.dev/worker-group": group["groupName"]}
        validate_node_label_syntax(group["labels"])
    (application,) = serve_config("multi-pool-tp4")["applications"]
    entries = {d["name"]: d for d in application["deployments"]}
    config = config_from_mapping(application["args"]["config"])
    for pool, group in [("big", "gpu-tp4"), ("small", "gpu-small")]:
        entry = entries[f"pool-{pool}"]
        assert entry["placement_group_bundle_label_selector"] == [{"surge.dev/worker-group": group}]
        assert validate_label_selector(entry["placement_group_bundle_label_selector"][0]) is None
        # Serve wants the bundles beside the selector: the chart restates exactly what the app plans.
        (planned, _) = pool_options(next(p for p in config.pools if p.name == pool), "cuda")
        assert entry["placement_group_bundles"] == planned["placement_group_bundles"]
        assert entry["placement_group_strategy"] == planned["placement_group_strategy"]
    # One GPU group hosting every pool: Ray places them, nothing to restate.
    (default,) = serve_config("default")["applications"]
    assert all("placement_group_bundle_label_selector" not in d for d in default["deployments"])


def test_restated_bundles_follow_the_planner_for_pipeline_and_cpu_sizes() -> None:
    from deployments.app import pool_options

    pools = [
        {"name": "big", "model": "/m", "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "num_cpus": 0},
        {"name": "small", "model": "/m", "cpus_per_worker": 0.5, "num_cpus": 2},
    ]
    groups = {"gpu": {"enabled": False}, "a": {**_group(4), "pools": ["big"]}, "b": {**_group(1), "pools": ["small"]}}
    (service,) = find_kind(_variant_with("default", workerGroups=groups, surge={"pools": pools}), "RayService")
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    config = config_from_mapping(application["args"]["config"])
    for entry, pool in zip(application["deployments"][-2:], config.pools, strict=True):
        (planned, _) = pool_options(pool, "cuda")
        assert entry["placement_group_bundles"] == planned["placement_group_bundles"], pool.name
        assert entry["placement_group_strategy"] == planned["placement_group_strategy"], pool.name


def _group(gpus: int) -> dict[str, Any]:
    return {"enabled": True, "gpusPerNode": gpus, "replicas": 1, "minReplicas": 1, "maxReplicas": 2}


def test_autoscaler_v1_gets_no_label_placement_and_no_group_idle_timeouts() -> None:
    objs = _variant_with("multi-pool-tp4", autoscaling={"version": "v1"})
    (service,) = find_kind(objs, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["autoscalerOptions"]["version"] == "v1"
    assert all("idleTimeoutSeconds" not in g for g in cluster["workerGroupSpecs"])
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert all("placement_group_bundle_label_selector" not in d for d in application["deployments"])
    v2 = {g["groupName"]: g for g in rayservice("multi-pool-tp4")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert v2["gpu-small"]["idleTimeoutSeconds"] == 120



@pytest.mark.parametrize("variant", VARIANTS)
def test_the_app_build_on_the_gpu_less_head_plans_for_the_workers_platform(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments import app

    # Serve builds the app in a 0-CPU task on the head; vLLM's CUDA build detects no platform on a GPU-less node.
    service = rayservice(variant)
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
    for container in containers(service):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SURGE_PLATFORM"] == ("cuda" if gpus else "cpu")
    monkeypatch.setenv("SURGE_PLATFORM", env["SURGE_PLATFORM"])
    app._platform.cache_clear()
    try:
        assert app._platform() == env["SURGE_PLATFORM"]  # here vLLM itself would say cpu
        config_from_mapping(serve_config(variant)["applications"][0]["args"]["config"])  # not a config field
        monkeypatch.setenv("SURGE_PLATFORM", "tpu")
        app._platform.cache_clear()
        with pytest.raises(ValueError, match="SURGE_PLATFORM='tpu'"):
            app._platform()
    finally:
        app._platform.cache_clear()
