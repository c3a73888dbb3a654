"""Start Ray and the surge Serve app from a config, and stop both cleanly (make run, tests, benchmarks)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cluster.config import SurgeConfig
from cluster.env import apply_process_env, ray_env
from cluster.processes import export_haproxy_pidfile, stop_recorded_haproxy

__all__ = [
    "base_url", "free_port", "isolate_serve_ports", "metrics_url", "serving", "serving_cluster", "wait_ready"
]

logger = logging.getLogger("surge.serving")


def base_url(config: SurgeConfig) -> str:
    return f"http://{config.server.host}:{config.server.port}"


def free_port() -> int:
    """A port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolate_serve_ports() -> None:
    """Free ports for HAProxy's stats/metrics listeners and Serve's fallback proxy, whose fixed defaults
    would collide with another surge on this machine (make run, tests, benchmarks); call before Ray starts."""
    for key in (
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    ):
        os.environ.setdefault(key, str(free_port()))


def wait_ready(
    url: str, timeout_s: float = 240, path: str = "/readyz", check_alive: Callable[[], None] | None = None
) -> None:
    """Block until `GET {url}{path}` answers 200 (for surge's /readyz: every pool's engine loaded and answering).
    `check_alive` may raise to give up early, e.g. when the server's process has exited."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check_alive is not None:
            check_alive()
        try:
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} did not answer 200 within {timeout_s:g} s")


def metrics_url(config: SurgeConfig) -> str | None:
    """Where a local surge's Prometheus metrics are scraped (Ray's metrics export port), if fixed."""
    port = config.observability.metrics.export_port
    if config.ray.address or config.ray.local_nodes is not None or port is None:
        return None  # the cluster's own ports (KubeRay: 8080 on every node; local nodes: Ray's choice)
    return f"http://127.0.0.1:{port}/metrics"


def _metrics_port(config: SurgeConfig) -> dict[str, Any]:
    port = config.observability.metrics.export_port
    return {} if port is None else {"_metrics_export_port": port}


def _start_ray(config: SurgeConfig, stack: ExitStack) -> Any:
    """Join `ray.address`, start a local multi-node cluster, or start a plain local Ray; returns the cluster."""
    import ray

    apply_process_env(config.server)
    if config.ray.address:
        ray.init(address=config.ray.address, log_to_driver=False)
        return None
    nodes = config.ray.local_nodes
    if nodes is not None:
        from cluster.local import LocalCluster

        cluster = LocalCluster(
            num_workers=nodes.workers, head_cpus=nodes.head_cpus, worker_cpus=nodes.worker_cpus,
            worker_gpus=nodes.worker_gpus, env_vars=ray_env(config.server), fast_failure_detection=True,
        )
        stack.enter_context(cluster)
        ray.init(address=cluster.address, log_to_driver=False)
        return cluster
    stack.callback(ray.shutdown)
    ray.init(
        # "local" always starts a fresh cluster; a bare ray.init() would join any cluster found on the machine.
        address="local",
        num_cpus=config.ray.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        # Ray's metrics agent serves every Ray metric (surge's, vLLM's, Serve's) here, on the node's address.
        **_metrics_port(config),
    )
    return None


@contextmanager
def serving(config: SurgeConfig, **build_kwargs: Any) -> Iterator[str]:
    """Run the app for the duration of the block and yield its base URL; always tears Ray down."""
    with serving_cluster(config, **build_kwargs) as (url, _):
        yield url


@contextmanager
def serving_cluster(
    config: SurgeConfig, startup_timeout_s: float = 1800, **build_kwargs: Any
) -> Iterator[tuple[str, Any]]:
    """Like `serving`, also yielding the LocalCluster (None unless `ray.local_nodes` is set). Yields once the
    app answers /readyz (every pool loaded), not when Serve's own status catches up; a failed deployment raises
    at once, and `startup_timeout_s` only bounds a start that neither serves nor fails."""
    # Before `ray.serve` is imported: Serve reads its mode once, at import (see deployments/handles.py).
    apply_process_env(config.server)
    from ray import serve

    from deployments.app import build_app

    with ExitStack() as stack:
        if not config.ray.address:  # a Ray we start: its HAProxy is ours to stop, after Serve and Ray
            stack.callback(_stop_leftover_haproxy, export_haproxy_pidfile())
        cluster = _start_ray(config, stack)
        stack.callback(_shutdown_serve, serve)
        serve.start(
            proxy_location=config.server.proxy_location,
            http_options={"host": config.server.host, "port": config.server.port},
        )
        target = serve.RunTarget(build_app(config, **build_kwargs), name=config.ray.app_name, route_prefix="/")
        serve.run_many([target], wait_for_applications_running=False)
        url = base_url(config)
        wait_ready(url, startup_timeout_s, check_alive=_deployment_not_failed(config.ray.app_name))
        yield url, cluster


def _deployment_not_failed(app_name: str) -> Callable[[], None]:
    from ray import serve

    def check() -> None:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"the surge app failed to deploy: {app.message}")

    return check


def _ray_daemons_alive() -> bool:
    """Whether the GCS and raylets this process started still run. A group SIGTERM (a terminal's Ctrl-C) reaches
    them with the driver; asking their Serve controller to shut down would then only wait out its 30 s timeout."""
    import psutil

    try:
        daemons = [c for c in psutil.Process().children(recursive=True) if c.name() in {"gcs_server", "raylet"}]
        return all(c.status() != psutil.STATUS_ZOMBIE for c in daemons)
    except psutil.Error:  # one exited while we looked
        return False


def _shutdown_serve(serve: Any) -> None:
    if _ray_daemons_alive():
        serve.shutdown()
    else:
        logger.warning("Ray's own processes are already gone; skipping Serve's graceful shutdown")


def _stop_leftover_haproxy(pidfile: Path) -> None:
    stopped = stop_recorded_haproxy(pidfile)
    if stopped:
        logger.warning("stopped HAProxy process(es) %s that outlived Ray's shutdown", stopped)
