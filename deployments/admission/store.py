"""Async SQL store of API keys and usage: SQLite (sqlite_store.py) or PostgreSQL (asyncpg) behind `KeyStore`.

Limits hold across every process on the same database: a reservation checks and charges rpm, tpm and the
daily quota in one transaction holding the key's lock (SQLite BEGIN IMMEDIATE; Postgres SELECT FOR UPDATE).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from cluster.config import PROJECT_ROOT, TierConfig
from deployments.admission.decisions import (
    MINUTE_S,
    Rejection,
    Reservation,
    WindowUsage,
    day_of,
    rate_limit_decision,
    window_start,
)
from deployments.admission.quota_store import Sql as _Sql
from deployments.admission.quota_store import claim_warnings, read_usage

__all__ = [
    "KEY_PREFIX",
    "PRINCIPAL_HASH_PREFIX",
    "ApiKey",
    "KeyNameTakenError",
    "KeyStore",
    "RevokedKeyError",
    "UnknownKeyError",
    "Usage",
    "hash_key",
    "open_store",
    "sqlite_path",
]

T = TypeVar("T")
KEY_PREFIX = "sk-surge-"
# Random characters of the key kept for display: identify a key without weakening it.
_DISPLAY_CHARS = 4
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS surge_api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION)""",
    # A revoked key's name may be given to a new key.
    """CREATE UNIQUE INDEX IF NOT EXISTS surge_api_keys_active_name
        ON surge_api_keys (name) WHERE revoked_at IS NULL""",
    # One row per key, reused as the minute window rolls over.
    """CREATE TABLE IF NOT EXISTS surge_rate_windows (
        key_id TEXT PRIMARY KEY REFERENCES surge_api_keys (id), window_start BIGINT NOT NULL,
        requests BIGINT NOT NULL, tokens BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS surge_daily_usage (
        key_id TEXT NOT NULL REFERENCES surge_api_keys (id), day TEXT NOT NULL,
        requests BIGINT NOT NULL, tokens BIGINT NOT NULL, PRIMARY KEY (key_id, day))""",
    # OAuth clients (clients.py). Each client, like each external tenant, also has a row in surge_api_keys
    # whose key_hash starts with PRINCIPAL_HASH_PREFIX (it matches no key), so limits and quotas charge it
    # through the same windows and locks as an API key.
    """CREATE TABLE IF NOT EXISTS surge_clients (
        id TEXT PRIMARY KEY REFERENCES surge_api_keys (id), name TEXT NOT NULL, tier TEXT NOT NULL,
        secret_hash TEXT NOT NULL, webhook_url TEXT, email TEXT, created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS surge_clients_active_name ON surge_clients (name) WHERE revoked_at IS NULL""",
    # One row per quota warning sent: the claim that makes each warning go out once per tenant and period.
    """CREATE TABLE IF NOT EXISTS surge_quota_warnings (
        key_id TEXT NOT NULL, quota TEXT NOT NULL, period TEXT NOT NULL, sent_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, quota, period))""",
)
PRINCIPAL_HASH_PREFIX = "principal:"
_KEY_COLUMNS = "id, name, tier, prefix, created_at, revoked_at"


class KeyNameTakenError(ValueError):
    """An active key already has this name."""


class UnknownKeyError(LookupError):
    """No key has this id."""


class RevokedKeyError(UnknownKeyError):
    """The key was revoked; a reservation for it is refused in the transaction that would charge it."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key as anyone may see it: never the key itself, only a short prefix for display."""

    id: str
    name: str
    tier: str
    prefix: str
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's admitted requests and charged tokens on one UTC day."""

    requests: int = 0
    tokens: int = 0


def hash_key(plaintext: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def sqlite_path(dsn: str, root: Path = PROJECT_ROOT) -> str:
    """The database file of a sqlite:/// DSN; a relative path resolves against `root`."""
    rest = dsn.removeprefix("sqlite:///")
    if rest == dsn or not rest:
        raise ValueError("a SQLite DSN looks like sqlite:///relative/path or sqlite:////absolute/path")
    if rest == ":memory:":
        return rest
    path = Path(rest)
    return str(path if path.is_absolute() else root / path)


async def open_store(dsn: str, *, root: Path = PROJECT_ROOT, pool_size: int = 10) -> KeyStore:
    """Connect to the database named by `dsn` (sqlite:///... or postgresql://...) and create tables."""
    store: _SqlKeyStore
    if dsn.startswith("sqlite:///"):
        from deployments.admission.sqlite_store import SqliteKeyStore  # it subclasses _SqlKeyStore, below

        store = await SqliteKeyStore.connect(sqlite_path(dsn, root))
    elif dsn.startswith(("postgresql://", "postgres://")):
        store = await _PostgresKeyStore.connect(dsn, pool_size)
    else:
        raise ValueError("key store DSN must start with sqlite:///, postgresql:// or postgres://")
    try:
        await store._prepare()
    except BaseException:
        await store.close()
        raise
    return store


class KeyStore(ABC):
    """API keys (stored hashed) and their usage, shared by every ingress replica."""

    @abstractmethod
    async def create_key(self, name: str, tier: str) -> tuple[ApiKey, str]:
        """Create a key; returns it and its plaintext, which is shown once and never stored."""

    @abstractmethod
    async def lookup(self, plaintext: str) -> ApiKey | None:
        """The active key with this plaintext, or None (unknown or revoked)."""

    @abstractmethod
    async def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""

    @abstractmethod
    async def revoke(self, name_or_id: str) -> bool:
        """Revoke the active key with this id or name; False when there is none."""

    @abstractmethod
    async def reserve(
        self, key_id: str, *, now: float, requests: int, tokens: int, tier: TierConfig,
        warning_fraction: float | None = None,
    ) -> Reservation | Rejection:
        """Atomically check and charge rpm, tpm and every day/month quota, or say which limit binds; with a
        `warning_fraction`, the reservation lists the quotas that reached it and were not yet warned about."""

    @abstractmethod
    async def atomically(self, operation: Callable[[_Sql], Awaitable[T]], *, write: bool = True) -> T:
        """Run `operation` in one transaction, for modules that extend the store (clients.py)."""

    @abstractmethod
    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reserved tokens with the tokens actually used (refund, or charge an overrun)."""

    @abstractmethod
    async def usage(self, key_id: str, day: date) -> Usage:
        """The key's admitted requests and charged tokens on `day` (UTC)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection(s)."""

    async def __aenter__(self) -> KeyStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()



class _SqlKeyStore(KeyStore):
    """The key store in SQL both SQLite and Postgres understand; subclasses supply transactions and locks."""

    _FOR_UPDATE = ""
    # A statement that serialises schema creation between processes, where a transaction does not.
    _SCHEMA_LOCK = ""

    @abstractmethod
    def _transaction(self, write: bool = True) -> AbstractAsyncContextManager[_Sql]:
        """One transaction; a write transaction holds the write lock its database needs."""

    async def _prepare(self) -> None:
        """Create the tables if absent."""
        async with self._transaction() as tx:
            if self._SCHEMA_LOCK:
                await tx(self._SCHEMA_LOCK)
            for statement in _SCHEMA:
                await tx(statement)

    async def create_key(self, name: str, tier: str) -> tuple[ApiKey, str]:
        if not name.strip() or len(name) > 128:
            raise ValueError("a key name must be 1 to 128 characters")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        prefix = plaintext[: len(KEY_PREFIX) + _DISPLAY_CHARS]
        key = ApiKey("key_" + secrets.token_hex(8), name, tier, prefix, created_at=time.time())
        async with self._transaction() as tx:
            rows = await tx(
                "INSERT INTO surge_api_keys (id, name, tier, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING RETURNING id",
                key.id, key.name, key.tier, hash_key(plaintext), key.prefix, key.created_at,
            )  # fmt: skip
        if not rows:
            raise KeyNameTakenError(f"an active key is already named {name!r}")
        return key, plaintext

    async def lookup(self, plaintext: str) -> ApiKey | None:
        if not plaintext.startswith(KEY_PREFIX):
            return None
        # Found by its SHA-256 digest: the index compares digests, which a caller cannot steer byte by byte
        # toward a stored key; the digest is then compared again in constant time, in case a driver or collation
        # ever matched loosely.
        digest = hash_key(plaintext)
        async with self._transaction(write=False) as tx:
            rows = await tx(
                f"SELECT {_KEY_COLUMNS}, key_hash FROM surge_api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                digest,
            )
        if not rows or not hmac.compare_digest(str(rows[0][-1]), digest):
            return None
        return ApiKey(*rows[0][:-1])

    async def list_keys(self) -> list[ApiKey]:
        async with self._transaction(write=False) as tx:
            sql = f"SELECT {_KEY_COLUMNS} FROM surge_api_keys WHERE key_hash NOT LIKE '{PRINCIPAL_HASH_PREFIX}%'"
            rows = await tx(f"{sql} ORDER BY created_at, id")
        return [ApiKey(*row) for row in rows]

    async def revoke(self, name_or_id: str) -> bool:
        async with self._transaction() as tx:
            sql = (
                "UPDATE surge_api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND (id = ? OR name = ?)"
                f" AND key_hash NOT LIKE '{PRINCIPAL_HASH_PREFIX}%'"
            )
            rows = await tx(f"{sql} RETURNING id", time.time(), name_or_id, name_or_id)
        return bool(rows)

    async def atomically(self, operation: Callable[[_Sql], Awaitable[T]], *, write: bool = True) -> T:
        async with self._transaction(write) as tx:
            return await operation(tx)

    async def reserve(
        self, key_id: str, *, now: float, requests: int, tokens: int, tier: TierConfig,
        warning_fraction: float | None = None,
    ) -> Reservation | Rejection:
        if requests < 0 or tokens < 0:
            raise ValueError("requests and tokens must be >= 0")
        minute, day = window_start(now, MINUTE_S), day_of(now)
        async with self._transaction() as tx:
            await self._lock_key(tx, key_id, active=True)
            used = await read_usage(tx, key_id, minute, day, tier)
            decision = rate_limit_decision(used, now=now, requests=requests, tokens=tokens, tier=tier)
            if not decision.admit:
                assert decision.limit is not None
                return Rejection(key_id, decision.limit, decision.retry_after_s, decision.reason, decision.snapshot)
            await _charge(tx, key_id, minute, day, used, requests, tokens)
            warned = await claim_warnings(tx, key_id, decision.snapshot.quotas, warning_fraction, now)
        return Reservation(key_id, minute, day, requests, tokens, decision.snapshot, warned)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        delta = max(0, actual_tokens) - reservation.tokens
        if delta == 0:
            return
        windows = (("surge_rate_windows", "window_start", reservation.minute_start),
                   ("surge_daily_usage", "day", reservation.day.isoformat()))  # fmt: skip
        async with self._transaction() as tx:
            await self._lock_key(tx, reservation.key_id)
            # A minute window that has rolled over since the reservation matches no row and is left alone.
            for table, column, value in windows:
                sql = f"UPDATE {table} SET tokens = CASE WHEN tokens + ? < 0 THEN 0 ELSE tokens + ? END"
                await tx(f"{sql} WHERE key_id = ? AND {column} = ?", delta, delta, reservation.key_id, value)

    async def usage(self, key_id: str, day: date) -> Usage:
        async with self._transaction(write=False) as tx:
            sql = "SELECT requests, tokens FROM surge_daily_usage WHERE key_id = ? AND day = ?"
            rows = await tx(sql, key_id, day.isoformat())
        return Usage(int(rows[0][0]), int(rows[0][1])) if rows else Usage()

    async def _lock_key(self, tx: _Sql, key_id: str, *, active: bool = False) -> None:
        """Lock the key's row; with `active`, refuse a revoked key (the row is read anyway, so revocation is
        seen by the very next reservation on every ingress replica, whatever their key caches hold)."""
        rows = await tx(f"SELECT revoked_at FROM surge_api_keys WHERE id = ?{self._FOR_UPDATE}", key_id)
        if not rows:
            raise UnknownKeyError(f"no key with id {key_id!r}")
        if active and rows[0][0] is not None:
            raise RevokedKeyError(f"key {key_id!r} is revoked")


async def _charge(tx: _Sql, key_id: str, minute: int, day: date, used: WindowUsage, requests: int, tokens: int) -> None:
    # The caller holds the key's lock, so writing absolute minute counters is safe.
    await tx(
        "INSERT INTO surge_rate_windows (key_id, window_start, requests, tokens) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key_id) DO UPDATE SET window_start = excluded.window_start, requests = excluded.requests,"
        " tokens = excluded.tokens",
        key_id, minute, used.minute_requests + requests, used.minute_tokens + tokens,
    )  # fmt: skip
    await tx(
        "INSERT INTO surge_daily_usage (key_id, day, requests, tokens) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key_id, day) DO UPDATE SET requests = surge_daily_usage.requests + excluded.requests,"
        " tokens = surge_daily_usage.tokens + excluded.tokens",
        key_id, day.isoformat(), requests, tokens,
    )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _numbered(sql: str) -> str:
    """`?` placeholders as Postgres's `$1, $2, ...`."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], start=1)) + parts[-1]


async def _postgres_sql(conn: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(record) for record in await conn.fetch(_numbered(sql), *args)]


class _PostgresKeyStore(_SqlKeyStore):
    """PostgreSQL through an asyncpg pool; the key's row lock serialises its reservations."""

    _FOR_UPDATE = " FOR UPDATE"
    # CREATE ... IF NOT EXISTS races between processes on Postgres; an advisory lock serialises them.
    _SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(1400467559)"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, pool_size: int) -> _PostgresKeyStore:
        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size))

    @asynccontextmanager
    async def _transaction(self, write: bool = True) -> AsyncIterator[_Sql]:
        async with self._pool.acquire() as conn:
            if not write:
                yield functools.partial(_postgres_sql, conn)
                return
            async with conn.transaction():
                yield functools.partial(_postgres_sql, conn)

    async def close(self) -> None:
        await self._pool.close()
