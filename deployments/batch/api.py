"""What the ingress does for `/v1/files` and `/v1/batches`: validate, store, and shape OpenAI's objects.

The work itself (running the lines) is the batch runner's; the ingress only writes the batch down.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cluster.config import BatchApiConfig
from deployments.admission.outage import key_store_outage
from deployments.batch.files import FileContents
from deployments.batch.lines import ENDPOINTS, FileTooLarge, NotFound, parse_input
from deployments.batch.store import BatchRow, BatchStore, FileRow
from deployments.errors import BadRequest

__all__ = ["BatchApi", "CreateBatch", "batch_object", "file_object"]

_PURPOSES = ("batch",)
_MAX_LIST = 100
_STAMPED = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


class CreateBatch(BaseModel):
    """`POST /v1/batches`."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def file_object(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id, "object": "file", "bytes": row.bytes, "created_at": int(row.created_at),
        "filename": row.filename, "purpose": row.purpose, "status": "processed", "status_details": None,
        "expires_at": None,
    }  # fmt: skip


def batch_object(row: BatchRow) -> dict[str, Any]:
    times = {f"{s}_at": _int(row.times.get(f"{s}_at")) for s in _STAMPED}
    errors = {"object": "list", "data": row.errors} if row.errors else None
    return {
        "id": row.id, "object": "batch", "endpoint": row.endpoint, "errors": errors,
        "input_file_id": row.input_file_id, "completion_window": row.completion_window, "status": row.status,
        "output_file_id": row.output_file_id, "error_file_id": row.error_file_id, "created_at": int(row.created_at),
        "expires_at": int(row.expires_at), **times, "request_counts": row.counts.as_json(), "metadata": row.metadata,
    }  # fmt: skip


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _page(objects: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    first, last = (objects[0]["id"], objects[-1]["id"]) if objects else (None, None)
    return {"object": "list", "data": objects, "first_id": first, "last_id": last, "has_more": has_more}


class BatchApi:
    """Files and batches of the calling tenant; every lookup is scoped to it (others' ids are 404s)."""

    def __init__(self, config: BatchApiConfig, dsn: str) -> None:
        self._config = config
        self._dsn = dsn
        self._store: BatchStore | None = None
        self._lock = asyncio.Lock()
        self.contents = FileContents(config.files_dir)

    async def store(self) -> BatchStore:
        async with self._lock:
            if self._store is None:
                with key_store_outage():
                    self._store = await BatchStore.open(self._dsn)
            return self._store

    async def upload(self, tenant: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        if purpose not in _PURPOSES:
            raise BadRequest(f"purpose must be one of {', '.join(_PURPOSES)}", param="purpose")
        if len(data) > self._config.max_file_bytes:
            raise FileTooLarge(f"files may be at most {self._config.max_file_bytes} bytes", param="file")
        await asyncio.to_thread(parse_input, data, self._config.max_lines)
        row = FileRow(f"file-{secrets.token_hex(12)}", tenant, filename or "upload.jsonl", purpose, len(data),
                      time.time())  # fmt: skip
        await self.contents.write(tenant, row.id, data)
        await (await self.store()).add_file(row)
        return file_object(row)

    async def file(self, tenant: str, file_id: str) -> FileRow:
        row = await (await self.store()).file(tenant, file_id)
        if row is None:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        return row

    async def files(self, tenant: str, purpose: str | None, limit: int) -> dict[str, Any]:
        rows = await (await self.store()).files(tenant, purpose, min(max(limit, 1), 10_000) + 1)
        return _page([file_object(r) for r in rows[:limit]], len(rows) > limit)

    async def content(self, tenant: str, file_id: str) -> bytes:
        row = await self.file(tenant, file_id)
        return await self.contents.read(tenant, row.id)

    async def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        row = await self.file(tenant, file_id)
        await (await self.store()).delete_file(tenant, row.id)
        await self.contents.delete(tenant, row.id)
        return {"id": row.id, "object": "file", "deleted": True}

    async def create_batch(self, tenant: str, body: CreateBatch) -> dict[str, Any]:
        if body.endpoint not in ENDPOINTS:
            raise BadRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        window_s = self._config.completion_windows_s.get(body.completion_window)
        if window_s is None:
            windows = ", ".join(self._config.completion_windows_s)
            raise BadRequest(f"completion_window must be one of {windows}", param="completion_window")
        source = await (await self.store()).file(tenant, body.input_file_id)
        if source is None or source.purpose != "batch":
            raise NotFound(f"No batch input file: {body.input_file_id}", param="input_file_id")
        now = time.time()
        row = BatchRow(f"batch_{secrets.token_hex(12)}", tenant, source.id, body.endpoint, body.completion_window,
                       body.metadata, "validating", now, now + window_s)  # fmt: skip
        await (await self.store()).add_batch(row)
        return batch_object(row)

    async def batch(self, tenant: str, batch_id: str) -> dict[str, Any]:
        row = await (await self.store()).batch(tenant, batch_id)
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return batch_object(row)

    async def batches(self, tenant: str, after: str | None, limit: int) -> dict[str, Any]:
        limit = min(max(limit, 1), _MAX_LIST)
        rows = await (await self.store()).batches(tenant, after, limit + 1)
        return _page([batch_object(r) for r in rows[:limit]], len(rows) > limit)

    async def cancel(self, tenant: str, batch_id: str) -> dict[str, Any]:
        """Ask the runner to stop: the batch is `cancelling` until its finished lines are written out."""
        store = await self.store()
        row = await store.batch(tenant, batch_id)
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        if not await store.transition(row.id, ("validating", "in_progress"), "cancelling", time.time()):
            current = await store.batch(tenant, batch_id)
            if current is not None and current.status not in ("cancelling", "cancelled"):
                raise BadRequest(f"Cannot cancel a batch that is {current.status}", code="batch_not_cancellable")
        return await self.batch(tenant, batch_id)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
