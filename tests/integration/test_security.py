"""Security through the session's app: revocation at the next request, nothing secret in Ray's logs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster.config import PROJECT_ROOT
from deployments.admission import open_store
from tests.integration.conftest import Keys

pytestmark = pytest.mark.slow

MODEL = "surge-tiny"


@pytest.fixture(scope="module")
def http(surge_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=surge_url, timeout=120) as client:
        yield client


def new_key(keys: Keys, name: str) -> str:
    async def create() -> str:
        async with await open_store(keys.dsn) as store:
            return (await store.create_key(name, "pro"))[1]

    return asyncio.run(create())


def chat(http: httpx.Client, key: str, content: str = "hi", **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers})


def test_a_key_revoked_with_the_cli_is_refused_on_its_very_next_request(http: httpx.Client, api_keys: Keys) -> None:
    name = f"revoke-{uuid.uuid4().hex[:8]}"
    key = new_key(api_keys, name)
    # Twice: the second is answered from the replica's key cache, which still holds the key as active.
    assert chat(http, key).status_code == 200
    assert chat(http, key).status_code == 200
    subprocess.run([sys.executable, "-m", "cluster.keys", "revoke", name, "--dsn", api_keys.dsn],
                   check=True, cwd=PROJECT_ROOT, capture_output=True, timeout=120)  # fmt: skip
    refused = chat(http, key)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["type"] == "authentication_error"
    # Streamed too, and every route: the replica dropped the key from its cache.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    streamed = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert streamed.status_code == 401
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def session_logs() -> Path:
    import ray

    node = ray._private.worker._global_node
    assert node is not None, "the session's app runs in this process's Ray"
    return Path(node.get_session_dir_path()) / "logs"


def logs_containing(logs: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {needle: [] for needle in needles}
    for path in logs.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    found[needle].append(path.name)
    return found


def test_no_key_prompt_or_completion_reaches_any_log_line(http: httpx.Client, api_keys: Keys) -> None:
    key = new_key(api_keys, f"logs-{uuid.uuid4().hex[:8]}")
    marker = f"zebra-marker-{uuid.uuid4().hex}"
    request_id = f"logcheck-{uuid.uuid4().hex}"
    response = chat(http, key, f"repeat after me: {marker}", **{"X-Request-Id": request_id})
    assert response.status_code == 200
    completion = response.json()["choices"][0]["message"]["content"]
    # A refused request too: its key and prompt must not be logged either.
    assert chat(http, "sk-surge-not-a-key-" + uuid.uuid4().hex, marker).status_code == 401
    logs = session_logs()
    # The request's own log line (the request id only) shows these are the live logs, written and flushed.
    deadline = time.monotonic() + 60
    while not logs_containing(logs, [request_id.encode()])[request_id.encode()]:
        assert time.monotonic() < deadline, f"the request log line never reached {logs}"
        time.sleep(0.5)
    needles = [key.encode(), marker.encode()]
    if len(completion) >= 24:  # long enough not to occur by chance
        needles.append(completion.encode())
    leaked = {needle.decode()[:40]: files for needle, files in logs_containing(logs, needles).items() if files}
    assert leaked == {}
