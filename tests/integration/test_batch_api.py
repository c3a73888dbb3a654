"""OpenAI's Batch API through the official client against the running app (real engine, real runner)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import httpx
import openai
import pytest
import ray
from ray import serve
from ray._private import state as ray_state

from cluster.config import SurgeConfig
from tests.integration.conftest import Keys

pytestmark = pytest.mark.slow
_BOUND_S = 600  # an outer bound only: the tests wait on the batch's own status


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def _jsonl(model: str, n: int, max_tokens: int = 8, tag: str = "") -> bytes:
    lines = [{"custom_id": f"{tag}req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": f"{tag} batch line {i}"}]}}
             for i in range(n)]  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _submit(client: openai.OpenAI, data: bytes) -> Any:
    file = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")


def _wait(client: openai.OpenAI, batch_id: str, until: Any, bound_s: float = _BOUND_S) -> Any:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} never got there: {batch}")


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _runner_stats(config: SurgeConfig) -> dict[str, Any]:
    handle = serve.get_deployment_handle("batch-runner", app_name=config.ray.app_name)
    stats: dict[str, Any] = handle.stats.remote().result(timeout_s=30)
    return stats


def _model(config: SurgeConfig) -> str:
    return config.pools[0].model_id


def test_the_official_client_runs_a_batch_end_to_end(surge_url: str, api_key: str, surge_config: SurgeConfig) -> None:
    client = _client(surge_url, api_key)
    batch = _submit(client, _jsonl(_model(surge_config), 6, tag="e2e"))
    assert batch.status == "validating"
    done = _wait(client, batch.id, lambda b: b.status in ("completed", "failed", "expired", "cancelled"))
    assert done.status == "completed" and done.request_counts.completed == 6
    output = _lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"e2ereq-{i}" for i in range(6)]
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in output)
    assert client.batches.list(limit=100).data[0].id == batch.id


def test_a_malformed_input_file_is_rejected_naming_the_bad_line(surge_url: str, api_key: str) -> None:
    data = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}})
    with pytest.raises(openai.BadRequestError) as err:
        _client(surge_url, api_key).files.create(file=("bad.jsonl", io.BytesIO(f"{data}\n{{oops\n".encode())),
                                                 purpose="batch")  # fmt: skip
    assert "line 2" in err.value.message


def test_cancel_mid_run_answers_every_line_in_output_or_error(
    surge_url: str, api_key: str, surge_config: SurgeConfig
) -> None:
    client = _client(surge_url, api_key)
    batch = _submit(client, _jsonl(_model(surge_config), 80, max_tokens=64, tag="cancel"))
    _wait(client, batch.id, lambda b: b.request_counts.completed >= 2)
    client.batches.cancel(batch.id)
    done = _wait(client, batch.id, lambda b: b.status == "cancelled")
    lines = _lines(client, done.output_file_id) + _lines(client, done.error_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"cancelreq-{i}" for i in range(80))
    assert done.request_counts.completed < 80


def test_a_runner_restart_mid_run_answers_every_line_exactly_once(
    surge_url: str, api_key: str, surge_config: SurgeConfig
) -> None:
    client = _client(surge_url, api_key)
    batch = _submit(client, _jsonl(_model(surge_config), 60, max_tokens=32, tag="restart"))
    _wait(client, batch.id, lambda b: b.request_counts.completed >= 5)
    actors = ray_state.actors(actor_state_name="ALIVE").values()
    runner = next(a for a in actors if a["ActorClassName"] == f"ServeReplica:{surge_config.ray.app_name}:batch-runner")
    ray.kill(ray.get_actor(runner["Name"], namespace="serve"), no_restart=True)  # Serve starts a new replica
    done = _wait(client, batch.id, lambda b: b.status == "completed")
    ids = [line["custom_id"] for line in _lines(client, done.output_file_id) + _lines(client, done.error_file_id)]
    assert len(ids) == len(set(ids)) == 60
    assert done.request_counts.completed == 60


async def _burst(url: str, key: str, model: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
        body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "interactive"}]}
        replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(n)))
    return [r.status_code for r in replies]


def test_a_batch_yields_to_an_interactive_burst_which_is_not_shed(
    surge_url: str, api_keys: Keys, surge_config: SurgeConfig
) -> None:
    client = _client(surge_url, api_keys["enterprise"])
    batch = _submit(client, _jsonl(_model(surge_config), 80, max_tokens=64, tag="yield"))
    _wait(client, batch.id, lambda b: b.request_counts.completed >= 2)
    yields_before = _runner_stats(surge_config).get("yields", 0)
    # Fewer than the test shed limit (8): an idle pool admits them all, so any 503 would be the batch's doing.
    statuses = asyncio.run(_burst(surge_url, api_keys["pro"], _model(surge_config), 6))
    assert statuses == [200] * 6
    assert _runner_stats(surge_config).get("yields", 0) > yields_before
    client.batches.cancel(batch.id)
    _wait(client, batch.id, lambda b: b.status == "cancelled")


def test_tenants_see_only_their_own_files_and_batches(
    surge_url: str, api_keys: Keys, surge_config: SurgeConfig
) -> None:
    owner, other = _client(surge_url, api_keys["enterprise"]), _client(surge_url, api_keys["pro"])
    batch = _submit(owner, _jsonl(_model(surge_config), 1, tag="iso"))
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(batch.input_file_id)
    assert batch.input_file_id not in {f.id for f in other.files.list()}
    assert batch.id not in {b.id for b in other.batches.list(limit=100)}
    _wait(owner, batch.id, lambda b: b.status == "completed")
