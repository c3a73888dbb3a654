"""Ray Serve LLM as a benchmark target: `ray.serve.llm.build_openai_app` on surge's pool (same model, same engine
arguments and engine threads), in Serve's default setup or in its HAProxy throughput mode.

Each run is a process of its own (`python -m benchmarks._ray_serve_llm '<request as JSON>'`): Ray starts clean,
and Serve reads its mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, RAY_SERVE_ENABLE_HA_PROXY) once, when it is imported
(../shared/notes/ray-serve.md), so the variables must be set before the import, in a process that never saw it.
The HAProxy mode uses surge's own settings for it (`cluster.env.ray_env`), so both run the same front door.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from cluster.config import PoolConfig, ServerConfig
from cluster.env import engine_env, ray_env
from cluster.serving import free_port, wait_ready

__all__ = ["APP_NAME", "Mode", "RayServeLLM", "child_env", "mode_env", "ray_serve_llm", "serving_args"]

Mode = Literal["default", "haproxy"]
APP_NAME = "ray-serve-llm"
_RUNNING = b"ray-serve-llm: running"  # the child's line once serve.run returned: every deployment RUNNING
_STOP_GRACE_S = 60.0  # Serve's graceful shutdown takes ~35 s in the HAProxy mode (a 30 s drain)


def serving_args(pool: PoolConfig) -> dict[str, Any]:
    """`LLMServingArgs` (as a dict) for `pool`: one LLMConfig with the pool's model, engine arguments, engine
    environment, replica count and per-replica concurrency, on CPU; everything else left at Ray Serve LLM's
    defaults. Access logs off on both deployments, as surge runs."""
    quiet = {"logging_config": {"enable_access_log": False}}
    llm_config = {
        "model_loading_config": {"model_id": pool.model_id, "model_source": pool.model_path()},
        "engine_kwargs": dict(pool.engine_args),
        # Without this Ray Serve LLM assumes a GPU (LLMConfig._resolve_accelerator_config).
        "accelerator_config": {"kind": "cpu"},
        "runtime_env": {"env_vars": engine_env(pool)},
        "deployment_config": {
            "num_replicas": pool.num_replicas, "max_ongoing_requests": pool.max_ongoing_requests, **quiet,
        },
    }  # fmt: skip
    return {"llm_configs": [llm_config], "ingress_deployment_config": quiet}


def mode_env(mode: Mode, server: ServerConfig) -> dict[str, str]:
    """The variables Ray's processes inherit in `mode`: no usage stats, and for "haproxy" surge's HAProxy mode."""
    proxy: Literal["haproxy", "standard"] = "haproxy" if mode == "haproxy" else "standard"
    return ray_env(server.model_copy(update={"proxy": proxy}))


class RayServeLLM:
    """What the child process needs: where to listen, the app's arguments and the environment for Ray."""

    def __init__(self, pool: PoolConfig, mode: Mode, server: ServerConfig, num_cpus: int | None) -> None:
        env = {**engine_env(pool), **mode_env(mode, server), **_isolated_ports()}
        # The engine's own thread count is the replica's business (runtime_env); the driver keeps its default.
        env.pop("OMP_NUM_THREADS", None)
        self.env = env
        self.request: dict[str, Any] = {
            "port": free_port(), "num_cpus": num_cpus, "serving_args": serving_args(pool),
            "env": env,
        }  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.request['port']}"


def child_env(inherited: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: `inherited` without any Serve setting (a surge started earlier in this process
    exported its HAProxy mode), then `env`, so the mode asked for is the mode that runs."""
    kept = {k: v for k, v in inherited.items() if not k.startswith(("RAY_SERVE_", "SURGE_HAPROXY_"))}
    return kept | dict(env)


def _isolated_ports() -> dict[str, str]:
    """Free ports for HAProxy's admin listeners and the fallback proxy (cluster.serving.isolate_serve_ports)."""
    keys = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")  # fmt: skip
    return {key: str(free_port()) for key in keys}


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child (it shuts Serve and Ray down), then SIGKILL its process group if it lingers."""
    process.send_signal(signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_STOP_GRACE_S)
    with suppress(ProcessLookupError):  # Ray's own daemons, should any outlive the child
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _wait_running(log_path: Path, timeout_s: float, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while _RUNNING not in log_path.read_bytes():
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app did not reach RUNNING within {timeout_s:g} s")
        time.sleep(0.5)


@contextmanager
def ray_serve_llm(
    pool: PoolConfig, mode: Mode, server: ServerConfig, num_cpus: int | None, startup_timeout_s: float
) -> Iterator[tuple[str, None]]:
    """Ray Serve LLM serving `pool` for the block; yields (base URL, no key). Its log is kept if it fails."""
    target = RayServeLLM(pool, mode, server, num_cpus)
    log_path = Path(tempfile.gettempdir()) / f"surge-bench-ray-serve-llm-{target.request['port']}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._ray_serve_llm", json.dumps(target.request)],
            env=child_env(os.environ, target.env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

        def alive() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"exited with status {process.returncode} before it served")

        try:
            # /v1/models answers from the ingress's static model cards while the engine still loads.
            wait_ready(target.url, startup_timeout_s, path="/v1/models", check_alive=alive)
            _wait_running(log_path, startup_timeout_s, alive)
            yield target.url, None
        except Exception as exc:
            raise RuntimeError(f"Ray Serve LLM ({mode}) failed: {exc}; its output is in {log_path}") from exc
        finally:
            _stop(process)
    log_path.unlink(missing_ok=True)


def _serve(request: dict[str, Any]) -> None:
    """The child: Ray, Serve and the app until SIGTERM, then a clean shutdown."""
    os.environ.update(request["env"])  # before ray.serve is imported: Serve reads its mode at import
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    from cluster.processes import export_haproxy_pidfile, stop_recorded_haproxy

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    pidfile = export_haproxy_pidfile()
    ray.init(address="local", num_cpus=request["num_cpus"], include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": request["port"]})
        serve.run(build_openai_app(request["serving_args"]), name=APP_NAME, route_prefix="/")
        print(_RUNNING.decode(), flush=True)
        stopping.wait()
        serve.shutdown()
    finally:
        ray.shutdown()
        stop_recorded_haproxy(pidfile)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)  # vLLM's objects fail noisily in interpreter teardown (see benchmarks/_targets.py)
