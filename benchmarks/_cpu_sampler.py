"""The host's CPU by process role, sampled in a thread: what the simulator's host model is calibrated from
(autoscaling/fidelity.py), on a host whose 2 cores run every engine, every serving process and Ray.

Roles: `engine` (a vLLM engine core and its workers), `replica:<deployment>` (a Serve replica actor),
`serving` (the rest of the cluster: HAProxy, Ray's daemons, the Serve controller and proxies), `client` (this
process and the trace players) and `background` (anything else on the host, another session's cluster
included). A sample is the cumulative CPU seconds of each process; differences between samples are what each
used meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

__all__ = ["CpuSampler", "role_of"]


def role_of(title: str, mine: bool) -> str:
    """A process's role from its title (Ray and vLLM set process titles) and whether it descends from this
    process (the cluster that `serving()` starts does; another session's does not)."""
    if not mine:
        return "background"
    if "benchmarks._trace_player" in title or "autoscaling.profile" in title:
        return "client"
    if "VLLM::" in title or "EngineCore" in title:
        return "engine"
    if "ServeReplica:" in title:
        return "replica:" + title.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
    return "serving"


class CpuSampler:
    """`samples`: [t_unix, host busy CPU s, {pid or "client"/"background": CPU s}] (the client's and the
    background's processes summed, which drops the CPU of those that exited: compare only the cluster's
    processes one by one); `roles`: {pid: [role, since t_unix, parent pid]} (a Ray worker that becomes a replica changes
    role: `since` is when the latest role was first seen)."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.samples: list[list[Any]] = []
        self.roles: dict[int, list[Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _mine(self) -> set[int]:
        me = psutil.Process(os.getpid())
        return {p.pid for p in me.children(recursive=True)}

    def sample(self) -> None:
        now = time.time()
        mine = self._mine()
        cpu: dict[int | str, float] = {}
        for proc in psutil.process_iter(["pid", "ppid", "cmdline", "name", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            pid = int(proc.info["pid"])
            title = " ".join(proc.info["cmdline"] or []) or str(proc.info["name"] or "")
            role = "client" if pid == os.getpid() else role_of(title, pid in mine)
            if role != "background" and self.roles.get(pid, [None])[0] != role:
                self.roles[pid] = [role, now, proc.info["ppid"]]
            used = float(times.user + times.system)
            if role in ("client", "background"):  # summed: only the cluster's processes one by one
                cpu[role] = cpu.get(role, 0.0) + used
            else:
                cpu[pid] = used
        host = psutil.cpu_times()
        busy = host.user + host.nice + host.system + getattr(host, "irq", 0.0) + getattr(host, "softirq", 0.0)
        self.samples.append([now, float(busy), cpu])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def to_json(self) -> dict[str, Any]:
        samples = [[t, busy, {str(p): round(c, 3) for p, c in cpu.items()}] for t, busy, cpu in self.samples]
        return {"period_s": self.period_s, "cores": psutil.cpu_count(), "roles": self.roles, "samples": samples}
