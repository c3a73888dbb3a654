"""Builds the Serve application from the typed config; `serve run`, `make run` and tests share it."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from ray import serve
from ray._common.constants import HEAD_NODE_RESOURCE_NAME
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from cluster.config import PoolConfig, SurgeConfig, load_config
from cluster.config.mapping import config_from_mapping
from cluster.env import engine_env
from cluster.placement import Platform, detect_platform, plan_placement
from deployments.batch.runner import BatchRunner
from deployments.ingress import Ingress
from deployments.model_replica import EngineFactory, ModelReplica, vllm_engine
from deployments.observability import observability_env
from deployments.pool_capacity import PoolSize
from deployments.pool_scaling import serve_autoscaling_config
from deployments.traffic_router import TrafficRouter

__all__ = ["app_builder", "build_app", "pool_deployment_name", "pool_options"]

_QUIET: dict[str, Any] = {"logging_config": {"enable_access_log": False}}
_PREFIX_ROUTER = "deployments.request_router:PrefixAffinityRouter"
# The traffic router is control plane: it lives on the head node with Serve's controller (as Serve pins its
# controller), not on a GPU node whose loss would take the breakers' state with it.
_ON_HEAD_NODE: dict[str, Any] = {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE_NAME: 0.001}}


def _drain(config: SurgeConfig) -> dict[str, Any]:
    """A stopping replica (scale-in, redeploy) takes no new work and finishes what it has: Serve waits while it
    has requests, checking every second, for as long as a request may run (the server's request timeout)."""
    return {"graceful_shutdown_wait_loop_s": 1.0, "graceful_shutdown_timeout_s": config.server.request_timeout_s}


def pool_deployment_name(pool: PoolConfig) -> str:
    return f"pool-{pool.name}"


@cache
def _platform() -> Platform:
    # Serve builds the app in a task on the head node, which on Kubernetes has no GPU (vLLM's CUDA build finds no
    # platform there): the Helm chart names the workers' platform in SURGE_PLATFORM. Unset: this process's own.
    named = os.environ.get("SURGE_PLATFORM")
    if named is None:
        return detect_platform()
    platforms: dict[str, Platform] = {"cpu": "cpu", "cuda": "cuda"}
    if named not in platforms:
        raise ValueError(f"SURGE_PLATFORM={named!r}: expected one of {sorted(platforms)}")
    return platforms[named]


def pool_options(pool: PoolConfig, platform: Platform) -> tuple[dict[str, Any], PoolConfig]:
    """Serve options for the pool's deployment and the pool with its placement's engine arguments merged in."""
    plan = plan_placement(
        pool.tensor_parallel_size, pool.pipeline_parallel_size, pool.cpus_per_worker, pool.num_cpus, platform,
        reserve_gpus=pool.reserve_gpus,
    )
    options = plan.deployment_options(pool.max_replicas_per_node)
    env = {**plan.engine_env, **engine_env(pool)}
    options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
    if pool.request_router == "prefix":
        options["request_router_config"] = RequestRouterConfig(request_router_class=_PREFIX_ROUTER)  # type: ignore[arg-type]
    engine_args = {**plan.engine_kwargs(), **pool.engine_args}
    return options, pool.model_copy(update={"engine_args": engine_args})


def _replica_count(pool: PoolConfig) -> dict[str, Any]:
    """Serve's replica options: surge's autoscaling policy between the pool's bounds, or a fixed count."""
    if not pool.autoscaling.enabled:
        return {"num_replicas": pool.num_replicas}
    return {"autoscaling_config": serve_autoscaling_config(pool, pool_deployment_name(pool))}


def _pool_sizes(config: SurgeConfig) -> dict[str, PoolSize]:
    return {
        p.name: PoolSize(pool_deployment_name(p), p.max_ongoing_requests, p.num_replicas, p.autoscaling.cold_start_s)
        for p in config.pools
    }


def _pool_app(
    pool: PoolConfig, engine_factory: EngineFactory, platform: Platform, env: dict[str, str], drain: dict[str, Any]
) -> Application:
    options, placed = pool_options(pool, platform)
    options["ray_actor_options"]["runtime_env"]["env_vars"].update(env)  # observability settings for replicas
    deployment = serve.deployment(
        name=pool_deployment_name(pool),
        **_replica_count(pool),
        max_ongoing_requests=pool.max_ongoing_requests,
        health_check_period_s=10,
        health_check_timeout_s=30,
        **drain,
        **options,
        **_QUIET,
    )(ModelReplica)
    return deployment.bind(placed, engine_factory)


def build_app(
    config: SurgeConfig, engine_factory: EngineFactory = vllm_engine, platform: Platform | None = None
) -> Application:
    """The ingress, the traffic router, and one replica pool per configured model."""
    platform = platform or _platform()
    obs_env = observability_env(config.observability)
    drain = _drain(config)
    handles = {pool.name: _pool_app(pool, engine_factory, platform, obs_env, drain) for pool in config.pools}
    router = serve.deployment(name="traffic-router", num_replicas=1, ray_actor_options=_ON_HEAD_NODE, **_QUIET)(
        TrafficRouter
    ).bind(config.routing, config.route_table(), config.server.request_timeout_s, _pool_sizes(config))
    ingress = serve.deployment(
        name="ingress",
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        **drain,
        **_QUIET,
    )(Ingress)
    return ingress.bind(config, handles, router, _batch_runner(config, handles))


def _batch_runner(config: SurgeConfig, handles: dict[str, Application]) -> Application | None:
    """The Batch API's runner: one replica feeding batch lines to the pools on their idle capacity."""
    if not config.batch.enabled:
        return None
    options = {"num_cpus": config.batch.runner.num_cpus}
    deployment = serve.deployment(name="batch-runner", num_replicas=1, ray_actor_options=options, **_QUIET)
    return deployment(BatchRunner).bind(config, handles)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run deployments.app:app_builder config=configs/local.yaml`: `config` is a file; RayService
    `serveConfigV2` (the Helm chart) passes the config itself as a mapping."""
    config = args.get("config")
    if isinstance(config, dict):
        return build_app(config_from_mapping(config, "serveConfigV2 applications[].args.config"))
    return build_app(load_config(config))
