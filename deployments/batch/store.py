"""The Batch API's metadata in SQL (files, batches, every answered line), shared by ingresses and the runner.

A line's result is inserted and counted in one transaction, and the insert is ignored when the line already
has one: a result is written before it is counted, and no line is answered twice, across restarts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deployments.batch.lines import BatchCounts
from deployments.batch.sql import Database, Tx, open_database

__all__ = ["ACTIVE", "BatchRow", "BatchStore", "FileRow", "LineResult"]

# Statuses the runner still has work for.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS surge_files (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS surge_files_by_tenant ON surge_files (tenant, created_at)",
    """CREATE TABLE IF NOT EXISTS surge_batches (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
        completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL, times TEXT NOT NULL, output_file_id TEXT, error_file_id TEXT,
        errors TEXT, total BIGINT NOT NULL, completed BIGINT NOT NULL, failed BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS surge_batches_by_tenant ON surge_batches (tenant, created_at)",
    """CREATE TABLE IF NOT EXISTS surge_batch_lines (
        batch_id TEXT NOT NULL, line BIGINT NOT NULL, status_code BIGINT NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (batch_id, line))""",
)
_FILE_COLUMNS = "id, tenant, filename, purpose, bytes, created_at"
_BATCH_COLUMNS = (
    "id, tenant, input_file_id, endpoint, completion_window, metadata, status, created_at, expires_at, times,"
    " output_file_id, error_file_id, errors, total, completed, failed"
)


@dataclass(frozen=True)
class FileRow:
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: float


@dataclass(frozen=True)
class BatchRow:
    id: str
    tenant: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    status: str
    created_at: float
    expires_at: float
    # When each status was entered (in_progress_at, completed_at ...).
    times: dict[str, float] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: BatchCounts = field(default_factory=BatchCounts)


@dataclass(frozen=True)
class LineResult:
    line: int
    status_code: int  # 0: the line never got an answer (expired, cancelled)
    record: dict[str, Any]


def _batch(row: tuple[Any, ...]) -> BatchRow:
    (id_, tenant, input_file, endpoint, window, metadata, status, created, expires, times,
     output, error, errors, total, completed, failed) = row  # fmt: skip
    return BatchRow(
        id_, tenant, input_file, endpoint, window, json.loads(metadata) if metadata else None, status,
        float(created), float(expires), json.loads(times), output, error, json.loads(errors) if errors else None,
        BatchCounts(int(total), int(completed), int(failed)),
    )  # fmt: skip


class BatchStore:
    """Files, batches and line results of every tenant; every read names the tenant it is for."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, dsn: str) -> BatchStore:
        db = await open_database(dsn)

        async def create(tx: Tx) -> None:
            for statement in _SCHEMA:
                await tx(statement)

        try:
            await db.run(create)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def add_file(self, row: FileRow) -> None:
        async def op(tx: Tx) -> None:
            await tx(
                f"INSERT INTO surge_files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET bytes = excluded.bytes",
                row.id, row.tenant, row.filename, row.purpose, row.bytes, row.created_at,
            )  # fmt: skip

        await self._db.run(op)

    async def file(self, tenant: str, file_id: str) -> FileRow | None:
        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            return await tx(f"SELECT {_FILE_COLUMNS} FROM surge_files WHERE id = ? AND tenant = ?", file_id, tenant)

        rows = await self._db.run(op, write=False)
        return FileRow(*rows[0]) if rows else None

    async def files(self, tenant: str, purpose: str | None, limit: int) -> list[FileRow]:
        """The tenant's files, newest first."""

        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            where, args = "tenant = ?", [tenant]
            if purpose:
                where, args = where + " AND purpose = ?", [*args, purpose]
            sql = f"SELECT {_FILE_COLUMNS} FROM surge_files WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?"
            return await tx(sql, *args, limit)

        return [FileRow(*r) for r in await self._db.run(op, write=False)]

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            return await tx("DELETE FROM surge_files WHERE id = ? AND tenant = ? RETURNING id", file_id, tenant)

        return bool(await self._db.run(op))

    async def add_batch(self, row: BatchRow) -> None:
        async def op(tx: Tx) -> None:
            await tx(
                f"INSERT INTO surge_batches ({_BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row.id, row.tenant, row.input_file_id, row.endpoint, row.completion_window,
                json.dumps(row.metadata) if row.metadata is not None else None, row.status, row.created_at,
                row.expires_at, json.dumps(row.times), None, None, None, 0, 0, 0,
            )  # fmt: skip

        await self._db.run(op)

    async def batch(self, tenant: str | None, batch_id: str) -> BatchRow | None:
        """The batch, if it is the tenant's (None: any tenant's; the runner's view)."""

        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            sql = f"SELECT {_BATCH_COLUMNS} FROM surge_batches WHERE id = ?"
            return await (tx(sql, batch_id) if tenant is None else tx(f"{sql} AND tenant = ?", batch_id, tenant))

        rows = await self._db.run(op, write=False)
        return _batch(rows[0]) if rows else None

    async def batches(self, tenant: str, after: str | None, limit: int) -> list[BatchRow]:
        """The tenant's batches, newest first, starting after the batch `after` (OpenAI's cursor)."""

        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            base = f"SELECT {_BATCH_COLUMNS} FROM surge_batches WHERE tenant = ?"
            order = " ORDER BY created_at DESC, id DESC LIMIT ?"
            if after is None:
                return await tx(base + order, tenant, limit)
            cursor = "(SELECT created_at FROM surge_batches WHERE id = ? AND tenant = ?)"
            page = f" AND (created_at < {cursor} OR (created_at = {cursor} AND id < ?))"
            return await tx(base + page + order, tenant, after, tenant, after, tenant, after, limit)

        return [_batch(r) for r in await self._db.run(op, write=False)]

    async def active_batches(self) -> list[BatchRow]:
        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            marks = ", ".join("?" for _ in ACTIVE)
            sql = f"SELECT {_BATCH_COLUMNS} FROM surge_batches WHERE status IN ({marks}) ORDER BY created_at, id"
            return await tx(sql, *ACTIVE)

        return [_batch(r) for r in await self._db.run(op, write=False)]

    async def transition(self, batch_id: str, from_: tuple[str, ...], to: str, now: float, **fields: Any) -> bool:
        """Move the batch to `to` if it is in one of `from_` (compare-and-set); `fields` are columns to set."""

        async def op(tx: Tx) -> bool:
            rows = await tx(f"SELECT status, times FROM surge_batches WHERE id = ?{self._db.for_update}", batch_id)
            if not rows or rows[0][0] not in from_:
                return False
            times = {**json.loads(rows[0][1]), f"{to}_at": now}
            sets = ", ".join(f"{column} = ?" for column in fields)
            extra = f", {sets}" if sets else ""
            values = [json.dumps(v) if column == "errors" else v for column, v in fields.items()]
            await tx(f"UPDATE surge_batches SET status = ?, times = ?{extra} WHERE id = ?",
                     to, json.dumps(times), *values, batch_id)  # fmt: skip
            return True

        return await self._db.run(op)

    async def record_line(self, batch_id: str, result: LineResult) -> bool:
        """Store a line's result and count it, unless the line already has one; True when stored now."""

        async def op(tx: Tx) -> bool:
            inserted = await tx(
                "INSERT INTO surge_batch_lines (batch_id, line, status_code, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (batch_id, line) DO NOTHING RETURNING line",
                batch_id, result.line, result.status_code, json.dumps(result.record),
            )  # fmt: skip
            if not inserted:
                return False
            column = "completed" if result.status_code == 200 else "failed"
            await tx(f"UPDATE surge_batches SET {column} = {column} + 1 WHERE id = ?", batch_id)
            return True

        return await self._db.run(op)

    async def answered_lines(self, batch_id: str) -> set[int]:
        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            return await tx("SELECT line FROM surge_batch_lines WHERE batch_id = ?", batch_id)

        return {int(r[0]) for r in await self._db.run(op, write=False)}

    async def line_results(self, batch_id: str) -> list[LineResult]:
        """Every answered line, in input order."""

        async def op(tx: Tx) -> list[tuple[Any, ...]]:
            sql = "SELECT line, status_code, record FROM surge_batch_lines WHERE batch_id = ? ORDER BY line"
            return await tx(sql, batch_id)

        return [LineResult(int(r[0]), int(r[1]), json.loads(r[2])) for r in await self._db.run(op, write=False)]
