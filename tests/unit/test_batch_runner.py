"""The batch runner against a fake pool (real SQLite store, real files, no Ray): exactly-once answers across a
restart, cancel and expiry with every line accounted for, yielding to interactive load, tenant isolation."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cluster.config import SurgeConfig, TierConfig, load_config
from deployments.admission import open_store
from deployments.batch.api import BatchApi, CreateBatch
from deployments.batch.runner import BatchRunner
from deployments.engines.base import GenerationChunk, GenerationRequest
from deployments.errors import SurgeError

MODEL = load_config().pools[0].model_id


class _Response:
    """What `handle.method.remote()` returns: awaitable and cancellable."""

    def __init__(self, coro: Awaitable[Any]) -> None:
        self._task = asyncio.ensure_future(coro)

    def __await__(self) -> Any:
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class _Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> _Response:
        return _Response(self._fn(*args))


class FakePool:
    """A pool whose engine takes `delay_s` per request and can be told it has interactive work."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.running = 0
        self.interactive = 0
        self.interactive_started = 0  # the replica's counter of tier-priority requests ever started
        self.started: Counter[str] = Counter()  # prompt text -> times it reached the engine
        self.max_running_with_interactive = 0
        self.complete = _Method(self._complete)
        self.stats = _Method(self._stats)

    async def _complete(self, request: GenerationRequest) -> GenerationChunk:
        self.started[json.dumps(getattr(request.prompt, "messages", None))] += 1
        self.running += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        return GenerationChunk("ok", prompt_tokens=5, completion_tokens=1, finish_reason="stop")

    async def _stats(self) -> dict[str, Any]:
        if self.interactive:
            self.max_running_with_interactive = max(self.max_running_with_interactive, self.running)
        return {"pool": "main", "running_requests": self.running + self.interactive, "waiting_requests": 0,
                "unfinished_requests": self.running + self.interactive,
                "interactive_started": self.interactive_started}  # fmt: skip


TINY = TierConfig(rpm=10_000, tpm=10_000_000, daily_token_quota=300, max_tokens_cap=64, default_priority=3,
                  max_priority=1)  # fmt: skip


def _config(tmp_path: Path, **runner: Any) -> SurgeConfig:
    config = load_config()
    tiers = {**config.admission.tiers, "tiny": TINY}
    admission = config.admission.model_copy(
        update={"key_store_dsn": f"sqlite:///{tmp_path / 'surge.db'}", "tiers": tiers}
    )
    runner_cfg = config.batch.runner.model_copy(update={"poll_interval_s": 0.02, "resume_after_s": 0.1, **runner})
    batch = config.batch.model_copy(update={
        "files_dir": str(tmp_path / "files"), "runner": runner_cfg,
        "completion_windows_s": {"24h": 86_400.0, "short": 0.6},
    })  # fmt: skip
    return config.model_copy(update={"admission": admission, "batch": batch})


def _jsonl(n: int, model: str = MODEL) -> bytes:
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 4}}
             for i in range(n)]  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def _tenant(config: SurgeConfig, name: str, tier: str = "enterprise") -> str:
    async with await open_store(config.admission.key_store_dsn) as store:
        key, _ = await store.create_key(name, tier)
        return key.id


async def _runner(config: SurgeConfig, pool: FakePool) -> BatchRunner:
    runner = BatchRunner.__new__(BatchRunner)
    await runner.__init__(config, {config.pools[0].name: pool})  # type: ignore[misc]
    return runner


async def _wait(predicate: Callable[[], Awaitable[bool]], bound_s: float = 60.0) -> None:
    """Poll the system's own state; the bound only stops a broken run."""
    for _ in range(int(bound_s / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[BatchApi]:
    config = _config(tmp_path)
    api = BatchApi(config.batch, config.admission.key_store_dsn)
    yield api
    await api.close()


async def _submit(api: BatchApi, tenant: str, n: int, window: str = "24h") -> str:
    file = await api.upload(tenant, "in.jsonl", "batch", _jsonl(n))
    batch = await api.create_batch(tenant, CreateBatch(input_file_id=file["id"], endpoint="/v1/chat/completions",
                                                       completion_window=window))  # fmt: skip
    return str(batch["id"])


async def _status(api: BatchApi, tenant: str, batch_id: str) -> dict[str, Any]:
    return await api.batch(tenant, batch_id)


async def _lines(api: BatchApi, tenant: str, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await api.content(tenant, file_id)).splitlines()]


async def _all_lines(api: BatchApi, tenant: str, batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [*await _lines(api, tenant, batch["output_file_id"]), *await _lines(api, tenant, batch["error_file_id"])]


async def _reaches(api: BatchApi, tenant: str, batch_id: str, status: str) -> dict[str, Any]:
    async def done() -> bool:
        return (await _status(api, tenant, batch_id))["status"] == status

    await _wait(done)
    return await _status(api, tenant, batch_id)


async def test_every_line_is_answered_once_in_input_order(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path)
    tenant = await _tenant(config, "a")
    batch_id = await _submit(api, tenant, 12)
    runner = await _runner(config, FakePool(0.01))
    batch = await _reaches(api, tenant, batch_id, "completed")
    await runner.shutdown()
    output = await _lines(api, tenant, batch["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(12)]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert batch["error_file_id"] is None


async def test_a_restarted_runner_answers_every_line_exactly_once(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path)
    tenant = await _tenant(config, "a")
    batch_id = await _submit(api, tenant, 30)
    pool = FakePool(0.05)
    first = await _runner(config, pool)

    async def some_done() -> bool:
        return (await _status(api, tenant, batch_id))["request_counts"]["completed"] >= 8

    await _wait(some_done)
    await first.shutdown()  # lines in flight at this moment are lost with it
    second = await _runner(config, pool)
    batch = await _reaches(api, tenant, batch_id, "completed")
    await second.shutdown()
    ids = [line["custom_id"] for line in await _all_lines(api, tenant, batch)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(30))
    assert len(ids) == len(set(ids)) == 30
    assert batch["request_counts"] == {"total": 30, "completed": 30, "failed": 0}


async def test_cancel_mid_run_answers_the_rest_in_the_error_file(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path, max_lines_per_replica=2)
    tenant = await _tenant(config, "a")
    batch_id = await _submit(api, tenant, 40)
    runner = await _runner(config, FakePool(0.05))

    async def some_done() -> bool:
        return (await _status(api, tenant, batch_id))["request_counts"]["completed"] >= 4

    await _wait(some_done)
    assert (await api.cancel(tenant, batch_id))["status"] in ("cancelling", "cancelled")
    batch = await _reaches(api, tenant, batch_id, "cancelled")
    await runner.shutdown()
    lines = await _all_lines(api, tenant, batch)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(40))
    errors = await _lines(api, tenant, batch["error_file_id"])
    assert errors and all(line["error"]["code"] == "batch_cancelled" for line in errors)
    counts = batch["request_counts"]
    assert counts["completed"] + counts["failed"] == counts["total"] == 40 and counts["completed"] < 40


async def test_a_batch_past_its_window_expires_with_unfinished_lines_as_errors(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path, max_lines_per_replica=1)
    tenant = await _tenant(config, "a")
    batch_id = await _submit(api, tenant, 50, window="short")
    runner = await _runner(config, FakePool(0.05))
    batch = await _reaches(api, tenant, batch_id, "expired")
    await runner.shutdown()
    output = await _lines(api, tenant, batch["output_file_id"])
    errors = await _lines(api, tenant, batch["error_file_id"])
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"req-{i}" for i in range(50))
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert errors and all(line["error"]["code"] == "batch_expired" and line["response"] is None for line in errors)
    assert batch["request_counts"] == {"total": 50, "completed": len(output), "failed": len(errors)}


async def test_the_batch_yields_to_interactive_work_and_resumes_after(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path, max_lines_per_replica=4)
    tenant = await _tenant(config, "a")
    batch_id = await _submit(api, tenant, 60)
    pool = FakePool(0.05)
    runner = await _runner(config, pool)
    await _wait(lambda: _true(pool.running > 0))
    pool.interactive = 2  # an interactive burst reaches the engine
    await _wait(lambda: _true(pool.running == 0))
    answered = (await _status(api, tenant, batch_id))["request_counts"]["completed"]
    await asyncio.sleep(0.3)  # a quiet stretch in which the runner must not start lines
    assert pool.running == 0
    assert (await _status(api, tenant, batch_id))["request_counts"]["completed"] == answered
    pool.interactive = 0
    batch = await _reaches(api, tenant, batch_id, "completed")
    stats = await runner.stats()
    await runner.shutdown()
    assert stats["yields"] >= 1
    assert batch["request_counts"]["completed"] == 60


async def test_requests_too_short_to_be_seen_in_the_queue_still_make_the_batch_yield(
    tmp_path: Path, api: BatchApi
) -> None:
    config = _config(tmp_path, max_lines_per_replica=4, resume_after_s=0.5)
    tenant = await _tenant(config, "a")
    await _submit(api, tenant, 200)
    pool = FakePool(0.05)
    runner = await _runner(config, pool)
    await _wait(lambda: _true(pool.running > 0))
    pool.interactive_started += 1  # started and finished between two readings: never in the engine's count
    await _wait(lambda: _true(pool.running == 0))
    stats = await runner.stats()
    await runner.shutdown()
    assert stats["yields"] >= 1


async def test_lines_are_charged_to_the_tenants_quota(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path)
    tenant = await _tenant(config, "small", tier="tiny")
    batch_id = await _submit(api, tenant, 20)
    runner = await _runner(config, FakePool(0.01))
    batch = await _reaches(api, tenant, batch_id, "completed")
    await runner.shutdown()
    async with await open_store(config.admission.key_store_dsn) as store:
        usage = await store.usage(tenant, datetime.now(UTC).date())
    errors = await _lines(api, tenant, batch["error_file_id"])
    assert 0 < batch["request_counts"]["completed"] < 20
    assert errors and all(line["response"]["status_code"] == 429 for line in errors)
    assert usage.requests == batch["request_counts"]["completed"] and 0 < usage.tokens <= TINY.daily_token_quota


async def _true(value: bool) -> bool:
    return value


async def test_tenants_see_only_their_own_files_and_batches(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path)
    a, b = await _tenant(config, "a"), await _tenant(config, "b")
    batch_id = await _submit(api, a, 2)
    file_id = (await _status(api, a, batch_id))["input_file_id"]
    for call in (api.file(b, file_id), api.content(b, file_id), api.batch(b, batch_id), api.cancel(b, batch_id)):
        with pytest.raises(SurgeError) as err:
            await call
        assert err.value.status == 404
    assert (await api.files(b, None, 100))["data"] == []
    assert (await api.batches(b, None, 20))["data"] == []
    assert [f["id"] for f in (await api.files(a, None, 100))["data"]] == [file_id]


async def test_batches_list_newest_first_with_an_after_cursor(tmp_path: Path, api: BatchApi) -> None:
    config = _config(tmp_path)
    tenant = await _tenant(config, "a")
    ids = [await _submit(api, tenant, 1) for _ in range(3)]
    first = await api.batches(tenant, None, 2)
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = await api.batches(tenant, first["last_id"], 2)
    assert [b["id"] for b in rest["data"]] == [ids[0]] and not rest["has_more"]
