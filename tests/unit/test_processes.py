"""make run's last sweep: a process orphaned below a subreaper is found and stopped."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil


def test_an_orphaned_grandchild_is_adopted_and_stopped() -> None:
    # In a fresh process, so that this test's own process tree (and its children) is never swept.
    script = textwrap.dedent(
        """
        import subprocess, time, psutil
        from cluster.processes import adopt_orphans, stop_descendants
        assert adopt_orphans()
        # The shell exits at once, leaving its sleep orphaned: without a subreaper it would belong to init.
        subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], check=True)
        orphan = [p for p in psutil.Process().children() if p.name() == "sleep"]
        assert len(orphan) == 1, psutil.Process().children()
        print(orphan[0].pid)
        print(stop_descendants(grace_s=5))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    pid_line, stopped_line = done.stdout.split("\n")[:2]
    pid = int(pid_line)
    assert f"{pid} (sleep)" in stopped_line
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
