"""A batch survives the loss of the whole cluster: `make run`'s server, Ray, the engine and the runner are all
SIGKILLed mid-run; a new cluster on the same key store and files directory answers every line exactly once."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import PROJECT_ROOT, load_config
from cluster.serving import free_port
from tests.integration.test_batch_api import _client, _lines, _wait
from tests.integration.test_make_run import kill_session, run_env, session_left_after

pytestmark = pytest.mark.slow
_LINES = 120
_BOUND_S = 900  # an outer bound only: the test waits on the run's banner and the batch's own status


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    """One cluster's environment; the state that must survive (keys, batches, files) lives under tmp_path."""
    return run_env(tmp_path, port) | {"SURGE_BATCH__FILES_DIR": str(tmp_path / "files")}


def _start(tmp_path: Path, log: Path) -> tuple[subprocess.Popen[str], str, str]:
    """A fresh cluster (`python -m cluster.run`), its URL and API key once its banner says it serves."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.run"], cwd=PROJECT_ROOT, env=_env(tmp_path, port),
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + _BOUND_S
    while (key := re.search(r"export SURGE_API_KEY=(\S+)", log.read_text())) is None:
        assert proc.poll() is None and time.monotonic() < deadline, f"no banner:\n{log.read_text()}"
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}", key.group(1)


def _jsonl(model: str) -> bytes:
    lines = [{"custom_id": f"crash-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": f"record {i}"}]}}
             for i in range(_LINES)]  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_a_whole_cluster_killed_mid_batch_answers_every_line_exactly_once_after_restart(tmp_path: Path) -> None:
    first, url, key = _start(tmp_path, tmp_path / "first.log")
    try:
        client = _client(url, key)
        file = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(load_config().pools[0].model_id))),
                                   purpose="batch")  # fmt: skip
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        before = _wait(client, batch.id, lambda b: b.request_counts.completed >= 5, _BOUND_S).request_counts.completed
    finally:
        kill_session(first.pid)  # every process of the cluster at once: no shutdown of any kind
    assert session_left_after(first.pid, timeout_s=30) == {}
    second, url, key = _start(tmp_path, tmp_path / "second.log")
    try:
        client = _client(url, key)
        done = _wait(client, batch.id, lambda b: b.status in ("completed", "failed", "expired", "cancelled"), _BOUND_S)
        lines = _lines(client, done.output_file_id) + _lines(client, done.error_file_id)
    finally:
        kill_session(second.pid)
    assert before < _LINES, "the batch finished before the cluster was killed: not a mid-run restart"
    assert done.status == "completed"
    ids = [line["custom_id"] for line in lines]
    assert len(ids) == len(set(ids)) == _LINES
    assert done.request_counts.completed == _LINES and done.request_counts.failed == 0
