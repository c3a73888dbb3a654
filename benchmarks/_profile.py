"""Flame graphs of surge's processes under load, with py-spy (installed with Ray): the ingress replica, the
pool replica and its vLLM engine core, each sampled while a load level runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

__all__ = ["PROCESSES", "flame_graphs"]

# Process titles Ray and vLLM give the processes of a request's path, by the name of their profile.
PROCESSES = {
    "ingress": "ServeReplica:surge:ingress",
    "replica": "ServeReplica:surge:pool-main",
    "engine": "VLLM::EngineCore",
}


def _pid_of(title: str) -> int | None:
    for process in psutil.process_iter(["pid", "cmdline"]):
        if title in " ".join(process.info["cmdline"] or []):
            return int(process.info["pid"])
    return None


@contextmanager
def flame_graphs(directory: Path, duration_s: float, rate_hz: int = 50) -> Iterator[dict[str, str]]:
    """Sample each process for `duration_s` while the block runs; yields {name: svg path} of those found."""
    directory.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(sys.executable).parent / "py-spy")
    started: list[subprocess.Popen[bytes]] = []
    written: dict[str, str] = {}
    for name, title in PROCESSES.items():
        pid = _pid_of(title)
        if pid is None:
            continue
        svg = directory / f"overhead-{name}.svg"
        command = [py_spy, "record", "-p", str(pid), "-d", str(int(duration_s)), "-r", str(rate_hz),
                   "--nonblocking", "-o", str(svg)]  # fmt: skip
        started.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        written[name] = str(svg)
    try:
        yield written
    finally:
        for process in started:
            process.wait(timeout=duration_s + 60)
