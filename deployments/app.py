"""Builds the Serve application from the typed config; `serve run`, `make run` and tests share it."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from cluster.config import PoolConfig, SurgeConfig, load_config
from cluster.env import engine_env
from deployments.ingress import Ingress
from deployments.model_replica import EngineFactory, ModelReplica, vllm_engine

__all__ = ["app_builder", "build_app", "pool_deployment_name"]


def pool_deployment_name(pool: PoolConfig) -> str:
    return f"pool-{pool.name}"


def _pool_app(pool: PoolConfig, engine_factory: EngineFactory) -> Application:
    deployment = serve.deployment(
        name=pool_deployment_name(pool),
        num_replicas=pool.num_replicas,
        max_ongoing_requests=pool.max_ongoing_requests,
        ray_actor_options={"num_cpus": pool.num_cpus, "runtime_env": {"env_vars": engine_env(pool)}},
        health_check_period_s=10,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=5,
        logging_config={"enable_access_log": False},
    )(ModelReplica)
    return deployment.bind(pool, engine_factory)


def build_app(config: SurgeConfig, engine_factory: EngineFactory = vllm_engine) -> Application:
    """The ingress bound to one replica pool per configured model."""
    handles = {pool.name: _pool_app(pool, engine_factory) for pool in config.pools}
    ingress = serve.deployment(
        name="ingress",
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        graceful_shutdown_timeout_s=5,
        logging_config={"enable_access_log": False},
    )(Ingress)
    return ingress.bind(config.server, list(config.pools), handles)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run deployments.app:app_builder config=configs/local.yaml` (and RayService serveConfigV2)."""
    return build_app(load_config(args.get("config")))
