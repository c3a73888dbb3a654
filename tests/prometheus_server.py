"""Debian's Prometheus (server and promtool) for tests: installed when absent, a server on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["Prometheus", "ensure_prometheus", "prometheus_server"]


def ensure_prometheus() -> tuple[str, str]:
    """Paths of `prometheus` and `promtool`, apt-get installing Debian's `prometheus` package when absent."""
    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=True)
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus and promtool, "Debian's prometheus package did not provide prometheus and promtool"
    return prometheus, promtool


class Prometheus:
    """A running server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises on a PromQL error."""
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30).json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def metric_names(self) -> set[str]:
        body = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=30).json()
        return set(body["data"])

    def wait_for(self, expr: str, timeout_s: float = 180) -> list[dict[str, Any]]:
        """Poll until the query returns a non-empty vector (scrapes and Ray's export run on their own clocks)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr} stayed empty for {timeout_s:g} s")
            time.sleep(1)


@contextmanager
def prometheus_server(targets: list[str], port: int, rule_files: list[Path] | None = None) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1:`port` scraping `targets` (host:port) every second; stopped at the end."""
    binary, _ = ensure_prometheus()
    with tempfile.TemporaryDirectory(prefix="surge-prometheus-") as tmp:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}],
            "rule_files": [str(p) for p in rule_files or []],
        }
        config_path = Path(tmp) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process)
            yield Prometheus(url)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("prometheus did not become ready")
