"""The SQLite key store: one connection on a thread of its own, each operation one hop from the event loop.

aiosqlite hands every statement to its thread and back, so a reservation (BEGIN, lock, two reads, two
writes, COMMIT) cost seven round trips through the caller's busy event loop. Here the whole operation, the
shared async code of `_SqlKeyStore` included, runs on the store's own loop in its own thread: its statements
are plain sqlite3 calls, so an operation runs there start to finish without suspending, which also makes it
atomic against cancellation.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from deployments.admission.store import _Sql, _SqlKeyStore

__all__ = ["SqliteKeyStore"]

# A request waits this long for a locked database, then gets a 503 (admission/outage.py).
_BUSY_TIMEOUT_S = 5.0
_RETRY_S = 0.05

P = ParamSpec("P")
T = TypeVar("T")


class _StoreThread:
    """A daemon thread running an event loop of its own; coroutines sent here run one after another."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return not self._loop.is_closed()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def stop(self) -> None:
        if self.running:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


def _on_store_thread(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]], *, fail_fast: bool = True
) -> Callable[Concatenate[SqliteKeyStore, P], Coroutine[Any, Any, T]]:
    """`method` run on the store's thread. A writing one (`fail_fast`) that waited there while an operation
    before it found the database locked fails at once (`SqliteKeyStore._guarded`)."""

    @functools.wraps(method)
    async def run(self: SqliteKeyStore, *args: P.args, **kwargs: P.kwargs) -> T:
        coro = method(self, *args, **kwargs)
        return await self._thread.run(self._guarded(coro, time.monotonic()) if fail_fast else coro)

    return run


class SqliteKeyStore(_SqlKeyStore):
    """SQLite in WAL mode; a BEGIN IMMEDIATE transaction serialises writers across processes."""

    def __init__(self, conn: sqlite3.Connection, thread: _StoreThread) -> None:
        self._conn = conn
        self._thread = thread
        self._locked_at: float | None = None  # when an operation last found the database locked (store thread)

    async def _guarded(self, coro: Coroutine[Any, Any, T], queued_at: float) -> T:
        """Operations run one after another, each waiting up to the busy timeout for another process's write
        lock: behind a queue of them, a request would wait that timeout once per operation ahead (60 s and
        more under load). One queued while the lock made another fail fails at once instead, as an outage
        (503 + Retry-After); one queued after that tries the lock again, so the store recovers by itself."""
        if self._locked_at is not None and self._locked_at >= queued_at:
            coro.close()
            raise sqlite3.OperationalError("database is locked (found locked while this operation waited)")
        try:
            result = await coro
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                self._locked_at = time.monotonic()
            raise
        self._locked_at = None
        return result

    @classmethod
    async def connect(cls, path: str) -> SqliteKeyStore:
        if path != ":memory:":
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
        thread = _StoreThread(f"surge-sqlite-{Path(path).name}")

        async def connect() -> sqlite3.Connection:
            return sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)

        try:
            return cls(await thread.run(connect()), thread)
        except BaseException:
            thread.stop()
            raise

    @_on_store_thread
    async def _prepare(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        # Switching a new database to WAL takes a lock SQLite does not wait for, so retry.
        for attempt in itertools.count():
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt * _RETRY_S > _BUSY_TIMEOUT_S:
                    raise
                time.sleep(_RETRY_S)  # on the store's thread, where nothing else waits to run
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        await _SqlKeyStore._prepare(self)

    create_key = _on_store_thread(_SqlKeyStore.create_key)
    lookup = _on_store_thread(_SqlKeyStore.lookup, fail_fast=False)  # a read: WAL never locks it
    list_keys = _on_store_thread(_SqlKeyStore.list_keys, fail_fast=False)  # a read: WAL never locks it
    revoke = _on_store_thread(_SqlKeyStore.revoke)
    reserve = _on_store_thread(_SqlKeyStore.reserve)
    atomically = _on_store_thread(_SqlKeyStore.atomically)
    settle = _on_store_thread(_SqlKeyStore.settle)
    usage = _on_store_thread(_SqlKeyStore.usage, fail_fast=False)  # a read: WAL never locks it

    async def _sql(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._conn.execute(sql, args).fetchall()]

    @asynccontextmanager
    async def _transaction(self, write: bool = True) -> AsyncIterator[_Sql]:
        if not write:  # WAL readers neither wait for nor block the writer
            yield self._sql
            return
        # IMMEDIATE takes the write lock up front, so concurrent processes queue instead of deadlocking.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._sql
        except BaseException:
            with suppress(sqlite3.OperationalError):  # "no transaction is active" is harmless
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    async def close(self) -> None:
        if not self._thread.running:
            return
        try:
            await self._thread.run(self._close())
        finally:
            self._thread.stop()

    async def _close(self) -> None:
        self._conn.close()
