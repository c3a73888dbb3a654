"""Running `python -m loadtests run` as the SREs do, in its own process, and reading what it wrote."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import PROJECT_ROOT
from loadtests.metrics import RequestRecord

__all__ = ["LoadRun", "run_loadtest"]


@dataclass
class LoadRun:
    code: int
    out: Path
    stdout: str  # the CLI's own lines (Locust logs to stderr)
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return data

    @property
    def records(self) -> list[RequestRecord]:
        lines = (self.out / "requests.jsonl").read_text().splitlines()
        return [RequestRecord.from_json(json.loads(line)) for line in lines if line]

    def locust_rows(self) -> list[dict[str, str]]:
        with open(self.out / "locust_stats.csv", newline="") as handle:
            return list(csv.DictReader(handle))


def run_loadtest(out: Path, *args: str, keys: dict[str, str] | None = None, timeout_s: float = 300) -> LoadRun:
    env = {**os.environ, **{f"SURGE_LOADTEST_KEY_{t.upper().replace('-', '_')}": k for t, k in (keys or {}).items()}}
    cmd = [sys.executable, "-m", "loadtests", "run", "--report", str(out), *args]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    return LoadRun(proc.returncode, out, proc.stdout, proc.stderr)
