"""The Batch API's files and batch creation as the ingress serves them (real SQLite store, real files, no Ray):
OpenAI's object shapes, the configured size limit, durable contents, and the 4xx answers for bad requests."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster.config import load_config
from deployments.batch.api import BatchApi, CreateBatch
from deployments.errors import ServiceUnavailable, SurgeError

LINE = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "surge-tiny", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
DATA = (json.dumps(LINE) + "\n").encode()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[BatchApi]:
    config = load_config()
    batch = config.batch.model_copy(update={"files_dir": str(tmp_path / "files"), "max_file_bytes": 1000})
    opened = BatchApi(batch, f"sqlite:///{tmp_path / 'surge.db'}")
    yield opened
    await opened.close()


async def _status(call: object) -> tuple[int, str]:
    with pytest.raises(SurgeError) as err:
        await call  # type: ignore[misc]
    return err.value.status, err.value.message


async def test_an_uploaded_file_is_an_openai_file_object_and_its_content_comes_back(api: BatchApi) -> None:
    file = await api.upload("t1", "in.jsonl", "batch", DATA)
    assert {k: file[k] for k in ("object", "bytes", "filename", "purpose")} == {
        "object": "file", "bytes": len(DATA), "filename": "in.jsonl", "purpose": "batch"}  # fmt: skip
    assert file["id"].startswith("file-") and isinstance(file["created_at"], int)
    assert await api.content("t1", file["id"]) == DATA
    assert [f["id"] for f in (await api.files("t1", "batch", 10))["data"]] == [file["id"]]


async def test_a_deleted_file_is_gone_from_the_list_and_its_content_with_it(api: BatchApi) -> None:
    file = await api.upload("t1", "in.jsonl", "batch", DATA)
    assert await api.delete("t1", file["id"]) == {"id": file["id"], "object": "file", "deleted": True}
    assert (await api.files("t1", None, 10))["data"] == []
    assert (await _status(api.content("t1", file["id"])))[0] == 404


async def test_a_file_over_the_configured_size_is_refused_with_413(api: BatchApi) -> None:
    padded = json.dumps({**LINE, "body": {**LINE["body"], "user": "x" * 1000}}).encode()  # type: ignore[dict-item]
    assert (await _status(api.upload("t1", "big.jsonl", "batch", padded)))[0] == 413


async def test_a_purpose_other_than_batch_is_refused(api: BatchApi) -> None:
    status, message = await _status(api.upload("t1", "in.jsonl", "fine-tune", DATA))
    assert status == 400 and "purpose" in message


async def test_a_bad_line_is_refused_at_upload_naming_it_and_nothing_is_stored(api: BatchApi) -> None:
    status, message = await _status(api.upload("t1", "in.jsonl", "batch", DATA + b'{"custom_id": "b"}\n'))
    assert status == 400 and message.startswith("line 2:")
    assert (await api.files("t1", None, 10))["data"] == []


async def test_a_new_batch_is_validating_with_openais_fields(api: BatchApi) -> None:
    file = await api.upload("t1", "in.jsonl", "batch", DATA)
    batch = await api.create_batch("t1", CreateBatch(input_file_id=file["id"], endpoint="/v1/chat/completions",
                                                     completion_window="24h", metadata={"job": "x"}))  # fmt: skip
    assert batch["object"] == "batch" and batch["status"] == "validating" and batch["metadata"] == {"job": "x"}
    assert batch["expires_at"] - batch["created_at"] == 86_400
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert (await api.batch("t1", batch["id"]))["id"] == batch["id"]


@pytest.mark.parametrize(
    ("field", "value"), [("endpoint", "/v1/embeddings"), ("completion_window", "1h"), ("input_file_id", "file-nope")]
)
async def test_a_batch_with_a_bad_field_is_refused_naming_it(api: BatchApi, field: str, value: str) -> None:
    file = await api.upload("t1", "in.jsonl", "batch", DATA)
    body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h", field: value}
    status, message = await _status(api.create_batch("t1", CreateBatch.model_validate(body)))
    assert status in (400, 404) and (field in message or value in message)


async def test_a_finished_batch_cannot_be_cancelled(api: BatchApi) -> None:
    file = await api.upload("t1", "in.jsonl", "batch", DATA)
    batch = await api.create_batch("t1", CreateBatch(input_file_id=file["id"], endpoint="/v1/chat/completions",
                                                     completion_window="24h"))  # fmt: skip
    store = await api.store()
    assert await store.transition(batch["id"], ("validating",), "completed", 1.0)
    assert (await _status(api.cancel("t1", batch["id"])))[0] == 400


def test_the_synchronous_batch_route_is_documented_as_surges_extension() -> None:
    from deployments.ingress import app

    paths = app.openapi()["paths"]
    assert "surge's own synchronous extension" in paths["/v1/batch/chat/completions"]["post"]["description"]
    assert {"/v1/files", "/v1/files/{file_id}/content", "/v1/batches", "/v1/batches/{batch_id}/cancel"} <= set(paths)


async def test_a_database_that_does_not_answer_is_a_503_with_retry_after(api: BatchApi, tmp_path: Path) -> None:
    store = await api.store()

    async def locked(tx: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(ServiceUnavailable) as locked_out:
        await store._db.run(locked)
    unreachable = BatchApi(api._config, "postgresql://surge@127.0.0.1:1/surge")  # nothing listens on port 1
    with pytest.raises(ServiceUnavailable) as refused:
        await unreachable.files("t1", None, 10)
    for caught in (locked_out, refused):
        assert (caught.value.status, caught.value.code, caught.value.headers["Retry-After"]) == (
            503, "key_store_unavailable", "1")  # fmt: skip
