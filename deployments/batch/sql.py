"""A minimal transaction runner over the key store's database (SQLite or PostgreSQL), for the Batch API's tables.

The admission store keeps its own schema and classes; the Batch API opens its own connection to the same
database (same DSN) and writes only its own tables, so neither restructures the other.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from cluster.config import PROJECT_ROOT
from deployments.admission.outage import key_store_outage
from deployments.admission.store import sqlite_path

__all__ = ["Database", "Tx", "open_database"]

T = TypeVar("T")
# Runs one statement (`?` placeholders) in the open transaction and returns its rows.
Tx = Callable[..., Awaitable[list[tuple[Any, ...]]]]
_BUSY_TIMEOUT_S = 30.0


class Database(ABC):
    """Runs `op(tx)` as one transaction; a database that cannot answer raises `ServiceUnavailable` (a 503
    with Retry-After on the Batch API's routes, admission/outage.py), as the key store does."""

    #: Text of a row-locking clause appended to SELECTs that precede an update ("" where the whole database
    #: is locked by the transaction, as SQLite's BEGIN IMMEDIATE does).
    for_update = ""

    @abstractmethod
    async def run(self, op: Callable[[Tx], Awaitable[T]], write: bool = True) -> T:
        """The result of `op`, run in one transaction (committed unless it raises)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection(s)."""


async def open_database(dsn: str, root: Path = PROJECT_ROOT) -> Database:
    if dsn.startswith("sqlite:///"):
        return await _Sqlite.connect(sqlite_path(dsn, root))
    if dsn.startswith(("postgresql://", "postgres://")):
        return _Postgres(await asyncpg.create_pool(dsn, min_size=1, max_size=4))
    raise ValueError("DSN must start with sqlite:///, postgresql:// or postgres://")


class _Sqlite(Database):
    """One connection used from worker threads under a lock: each transaction is a single thread hop, whole."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    async def connect(cls, path: str) -> _Sqlite:
        def connect() -> sqlite3.Connection:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            return conn

        return cls(await asyncio.to_thread(connect))

    async def run(self, op: Callable[[Tx], Awaitable[T]], write: bool = True) -> T:
        with key_store_outage():
            return await asyncio.to_thread(self._run_blocking, op, write)

    def _run_blocking(self, op: Callable[[Tx], Awaitable[T]], write: bool) -> T:
        async def tx(sql: str, *args: Any) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in self._conn.execute(sql, args).fetchall()]

        with self._lock:
            if write:
                self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = _run_unsuspended(op(tx))
            except BaseException:
                if write:
                    with suppress(sqlite3.OperationalError):
                        self._conn.execute("ROLLBACK")
                raise
            if write:
                self._conn.execute("COMMIT")
            return result

    async def close(self) -> None:
        await asyncio.to_thread(self._conn.close)


def _run_unsuspended(awaitable: Awaitable[T]) -> T:
    """Drive a coroutine whose awaits are all plain sqlite3 calls: it runs to its end in one step."""
    coro = awaitable.__await__()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite transaction awaited something other than its statements")


@functools.lru_cache(maxsize=128)
def _numbered(sql: str) -> str:
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], start=1)) + parts[-1]


class _Postgres(Database):
    for_update = " FOR UPDATE"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def run(self, op: Callable[[Tx], Awaitable[T]], write: bool = True) -> T:
        with key_store_outage():
            return await self._run(op)

    async def _run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._pool.acquire() as conn:

            async def tx(sql: str, *args: Any) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in await conn.fetch(_numbered(sql), *args)]

            async with conn.transaction():
                return await op(tx)

    async def close(self) -> None:
        await self._pool.close()
