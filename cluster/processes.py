"""What surge must clean up or report about processes outside its own tree: Ray's HAProxy, a taken port.

Ray starts HAProxy from its HAProxy-manager actor, in that actor's process group. When a terminal's Ctrl-C (or
a group SIGTERM) reaches the driver and Ray's processes at once, that actor can die before it stops HAProxy,
which then outlives the run, reparented to init and still bound to the public port. The HAProxy wrapper
(cluster/bin/haproxy-loopback) records each HAProxy it starts in a file named by SURGE_HAPROXY_PIDFILE, so the
run that started them can end exactly those, whatever happened to Ray.

vLLM's engine processes are the same story one level down: the replica actor that spawned them can die on the
same signal before it shuts its engine down. `make run` therefore makes itself a child subreaper: every process
orphaned below it is reparented to it rather than to init, and it stops whatever of its tree is left once Serve
and Ray are down (`stop_descendants`). Only `make run` does this; a test or benchmark process has children of
its own (database servers) that are not Ray's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import tempfile
from pathlib import Path

import psutil

__all__ = [
    "PIDFILE_ENV", "adopt_orphans", "export_haproxy_pidfile", "haproxy_pidfile", "port_holder", "stop_descendants",
    "stop_recorded_haproxy",
]

PIDFILE_ENV = "SURGE_HAPROXY_PIDFILE"


def haproxy_pidfile(pid: int | None = None) -> Path:
    """Where the HAProxy processes of the Ray started by process `pid` (default: this one) are recorded."""
    return Path(tempfile.gettempdir()) / f"surge-haproxy-{pid or os.getpid()}.pids"


def export_haproxy_pidfile() -> Path:
    """Export this process's pid file for the Ray it is about to start (its processes inherit the variable);
    always this process's own, never one inherited from a parent surge, whose HAProxy is not ours to stop."""
    path = haproxy_pidfile()
    os.environ[PIDFILE_ENV] = str(path)
    return path


def _recorded(path: Path) -> list[psutil.Process]:
    try:
        pids = {int(line) for line in path.read_text().split() if line.isdigit()}
    except OSError:
        return []
    live = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            # The pid may have been reused by now: only a process still running HAProxy is ours.
            if "haproxy" in " ".join(process.cmdline()):
                live.append(process)
    return live


def _terminate(processes: list[psutil.Process], grace_s: float) -> list[int]:
    """SIGTERM `processes`, SIGKILL what outlives `grace_s` (reaping our own children); returns their pids."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in processes]


def stop_recorded_haproxy(path: Path, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every HAProxy recorded in `path` that still runs, SIGKILL what outlives `grace_s`;
    returns the pids that had to be stopped."""
    stopped = _terminate(_recorded(path), grace_s)
    with contextlib.suppress(OSError):
        path.unlink()
    return stopped


_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def adopt_orphans() -> bool:
    """Make this process the child subreaper of its tree (Linux): orphaned descendants become its children, so
    `stop_descendants` finds them. False where the kernel refuses or the platform has no prctl."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def stop_descendants(grace_s: float = 10.0) -> list[str]:
    """Stop every process still running below this one (SIGTERM, then SIGKILL after `grace_s`);
    returns them as "pid (name)" for the log."""
    left, names = [], []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                names.append(f"{process.pid} ({process.name()})")
                left.append(process)
    _terminate(left, grace_s)
    return names


def port_holder(host: str, port: int) -> str | None:
    """None when `host:port` can be bound; else who holds it, as a sentence for the operator."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())[:200]
                return f"pid {conn.pid} ({cmdline})"
            return f"pid {conn.pid}"
    return "another process (not visible to this user)"
