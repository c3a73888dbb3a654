"""Start Ray and the surge Serve app from a config, and stop both cleanly (make run, tests, benchmarks)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from cluster.config import SurgeConfig
from cluster.env import apply_process_env

__all__ = ["base_url", "serving"]

logger = logging.getLogger("surge.serving")


def base_url(config: SurgeConfig) -> str:
    return f"http://{config.server.host}:{config.server.port}"


def _start_ray(config: SurgeConfig) -> None:
    import ray

    apply_process_env(config.server)
    if config.ray.address:
        ray.init(address=config.ray.address, log_to_driver=False)
        return
    ray.init(
        # "local" always starts a fresh cluster; a bare ray.init() would join any cluster found on the machine.
        address="local",
        num_cpus=config.ray.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )


@contextmanager
def serving(config: SurgeConfig, **build_kwargs: object) -> Iterator[str]:
    """Run the app for the duration of the block and yield its base URL; always tears Ray down."""
    import ray
    from ray import serve

    from deployments.app import build_app

    _start_ray(config)
    try:
        serve.start(http_options={"host": config.server.host, "port": config.server.port})
        app = build_app(config, **build_kwargs)  # type: ignore[arg-type]
        serve.run(app, name=config.ray.app_name, route_prefix="/", blocking=False)
        yield base_url(config)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
