"""Graceful drain: every pool and the ingress finish their in-flight requests when they stop (scale-in, redeploy),
for as long as a request may run; not Serve's 20 s default, nor a fixed 5 s that cuts long streams."""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application

from cluster.config import load_config
from deployments.app import build_app


def _deployments(app: Application) -> dict[str, Any]:
    found: dict[str, Any] = {}
    deployment = app._bound_deployment
    found[deployment.name] = deployment._deployment_config
    for arg in [*deployment.init_args, *deployment.init_kwargs.values()]:
        for value in arg.values() if isinstance(arg, dict) else [arg]:
            if isinstance(value, Application):
                found.update(_deployments(value))
    return found


def test_pools_and_ingress_drain_for_the_request_timeout() -> None:
    config = load_config()
    config = config.model_copy(update={"server": config.server.model_copy(update={"request_timeout_s": 42.0})})
    configs = _deployments(build_app(config, platform="cuda"))  # binding only: no Ray, no engine
    drained = ["ingress", *(f"pool-{pool.name}" for pool in config.pools)]
    for name in drained:
        assert configs[name].graceful_shutdown_timeout_s == 42.0, name
        assert configs[name].graceful_shutdown_wait_loop_s == 1.0, name
