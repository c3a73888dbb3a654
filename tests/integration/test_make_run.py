"""`make run`'s server process: serves, prints how to use it, and leaves nothing behind on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from cluster.config import PROJECT_ROOT
from cluster.processes import haproxy_pidfile, port_holder
from cluster.serving import free_port

pytestmark = pytest.mark.slow


def processes_in_session(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session `sid`: pid → command line."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
    return {int(r[0]): r[3] for r in rows if len(r) == 4 and int(r[1]) == sid and not r[2].startswith("Z")}


def session_left_after(sid: int, timeout_s: float) -> dict[int, str]:
    """The session's processes once it emptied or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while (left := processes_in_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session, in whichever process group (HAProxy, raylets) it runs."""
    for pid in processes_in_session(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_env(tmp_path: Path, port: int) -> dict[str, str]:
    """A `cluster.run` of its own: its port, key store, dev key file and Ray's side ports, apart from the session's."""
    return {
        **os.environ,
        "SURGE_SERVER__PORT": str(port),
        "SURGE_ADMISSION__KEY_STORE_DSN": f"sqlite:///{tmp_path / 'keys.db'}",
        "SURGE_DEV_KEY_FILE": str(tmp_path / "dev-api-key"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # Not the session app's: HAProxy sends requests to Serve's fallback proxy until the direct ingress is in
        # rotation, and a shared fallback port would hand them to the session's app (and its key store).
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "SURGE_OBSERVABILITY__METRICS__EXPORT_PORT": str(free_port()),
    }


def _banner_key(proc: subprocess.Popen[str], log: Path) -> str:
    """The key the banner prints; waits on the process itself (its output or its exit), not on a clock."""
    while (key := re.search(r"export SURGE_API_KEY=(\S+)", log.read_text())) is None:
        assert proc.poll() is None, f"make run exited with {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.2)
    return key.group(1)


def _live_pids(pids: set[int]) -> set[int]:
    return {pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}


def _server_pid(run_pid: int) -> int:
    """The server process (`cluster.run --serve`, the one that starts Ray) below make run's outer process."""
    (server,) = [c for c in psutil.Process(run_pid).children() if "--serve" in c.cmdline()]
    return server.pid


def _start_run(tmp_path: Path, port: int, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster.run"], cwd=PROJECT_ROOT, env=run_env(tmp_path, port),
            start_new_session=True, stdout=out, stderr=subprocess.STDOUT, text=True,
        )


def test_run_serves_streams_and_stops_cleanly_on_group_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    proc = _start_run(tmp_path, port, log)
    haproxy: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        key = _banner_key(proc, log)
        # The banner means the app serves: a script that waits for it may use the key at once.
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        stream = client.chat.completions.create(
            model="surge-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in stream)
        haproxy = {int(pid) for pid in haproxy_pidfile(_server_pid(proc.pid)).read_text().split()}
        assert haproxy, "HAProxy mode records the HAProxy it starts"
        # What Ctrl-C in a terminal does: the signal reaches the driver and Ray's processes in its group at once.
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=180)
        left = session_left_after(proc.pid, timeout_s=10)
    finally:
        kill_session(proc.pid)  # whatever failed above, nothing of this run keeps running
    output = log.read_text()
    assert proc.returncode == 0, output
    assert f"surge is serving on {url}/v1" in output and "curl " in output
    assert left == {}
    assert _live_pids(haproxy) == set(), "an HAProxy of this run outlived it"
    assert port_holder("127.0.0.1", port) is None


def test_a_killed_server_process_leaves_nothing_behind(tmp_path: Path) -> None:
    """What Ray itself may do to the process that started it (its core worker `_exit`s when the GCS goes away):
    the server process dies without any cleanup of its own, and make run's outer process still stops the rest."""
    port = free_port()
    log = tmp_path / "run.log"
    proc = _start_run(tmp_path, port, log)
    try:
        _banner_key(proc, log)
        os.kill(_server_pid(proc.pid), signal.SIGKILL)
        proc.wait(timeout=180)
        left = session_left_after(proc.pid, timeout_s=10)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 128 + signal.SIGKILL, log.read_text()
    assert left == {}, log.read_text()
    assert "surge: stopped processes that outlived Ray" in log.read_text()
    assert port_holder("127.0.0.1", port) is None


def test_run_names_the_process_that_holds_its_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "cluster.run"], cwd=PROJECT_ROOT, env=run_env(tmp_path, port),
            capture_output=True, text=True, timeout=300,
        )
    assert done.returncode == 2
    assert f"127.0.0.1:{port}" in done.stderr and f"pid {os.getpid()}" in done.stderr
