"""The SQL key store on SQLite and on a real PostgreSQL: keys, hashing, atomic limits, persistence."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cluster.config import TierConfig
from deployments.admission.decisions import Rejection, Reservation, day_of
from deployments.admission.store import (
    KEY_PREFIX,
    KeyNameTakenError,
    KeyStore,
    RevokedKeyError,
    UnknownKeyError,
    Usage,
    hash_key,
    open_store,
    sqlite_path,
)
from tests.pg_server import fresh_database, postgres_server

# 20 s into a minute; every test charges within this one minute unless it moves on.
NOW = 1_700_000_000.0
DAY = day_of(NOW)


def tier(**overrides: int) -> TierConfig:
    fields: dict[str, Any] = dict(
        rpm=1000, tpm=1_000_000, daily_token_quota=1_000_000, max_tokens_cap=256,
        allowed_models=["*"], default_priority=3, max_priority=2,
    )  # fmt: skip
    return TierConfig.model_validate({**fields, **overrides})


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for each test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    admin_dsn: str = request.getfixturevalue("postgres_admin_dsn")
    return fresh_database(admin_dsn, "surge_test")


@pytest.fixture
async def store(dsn: str) -> Any:
    opened = await open_store(dsn)
    yield opened
    await opened.close()


async def _raw_key_rows(dsn: str) -> list[tuple[Any, ...]]:
    sql = "SELECT * FROM surge_api_keys"
    if dsn.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(dsn)) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(record) for record in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _reserve_many(stores: list[KeyStore], key_id: str, n: int, tokens: int, limits: TierConfig) -> list[Any]:
    calls = [stores[i % len(stores)].reserve(key_id, now=NOW, requests=1, tokens=tokens, tier=limits) for i in range(n)]
    return await asyncio.gather(*calls)


# Keys


async def test_created_key_is_found_by_its_plaintext(store: KeyStore) -> None:
    key, plaintext = await store.create_key("alice", "pro")
    assert plaintext.startswith(KEY_PREFIX)
    assert await store.lookup(plaintext) == key


async def test_unknown_key_is_not_found(store: KeyStore) -> None:
    await store.create_key("alice", "pro")
    assert await store.lookup(KEY_PREFIX + "not-a-real-key") is None


async def test_revoked_key_is_not_found(store: KeyStore) -> None:
    key, plaintext = await store.create_key("alice", "pro")
    assert await store.revoke(key.id)
    assert await store.lookup(plaintext) is None


async def test_revoking_an_unknown_key_reports_false(store: KeyStore) -> None:
    assert not await store.revoke("nobody")


async def test_list_shows_every_key_with_revocations(store: KeyStore) -> None:
    await store.create_key("alice", "pro")
    await store.create_key("bob", "free")
    await store.revoke("bob")
    keys = await store.list_keys()
    assert [(k.name, k.tier, k.revoked) for k in keys] == [("alice", "pro", False), ("bob", "free", True)]


async def test_key_is_stored_only_as_its_sha256(dsn: str, store: KeyStore) -> None:
    key, plaintext = await store.create_key("alice", "pro")
    (row,) = await _raw_key_rows(dsn)
    assert not any(plaintext in str(cell) for cell in row)
    assert hash_key(plaintext) in row
    assert key.prefix == plaintext[: len(KEY_PREFIX) + 4]


async def test_active_key_names_are_unique(store: KeyStore) -> None:
    await store.create_key("alice", "pro")
    with pytest.raises(KeyNameTakenError):
        await store.create_key("alice", "free")


async def test_revoked_key_name_may_be_reused(store: KeyStore) -> None:
    await store.create_key("alice", "pro")
    await store.revoke("alice")
    key, plaintext = await store.create_key("alice", "free")
    assert await store.lookup(plaintext) == key


# Usage


async def test_reservation_is_counted_in_daily_usage(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    reservation = await store.reserve(key.id, now=NOW, requests=1, tokens=300, tier=tier())
    assert isinstance(reservation, Reservation)
    assert await store.usage(key.id, DAY) == Usage(requests=1, tokens=300)


async def test_rejection_names_the_limit_and_when_to_retry(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    await store.reserve(key.id, now=NOW, requests=1, tokens=10, tier=tier(rpm=1))
    rejection = await store.reserve(key.id, now=NOW, requests=1, tokens=10, tier=tier(rpm=1))
    assert isinstance(rejection, Rejection)
    assert (rejection.limit, rejection.retry_after_s) == ("requests", 40)
    assert rejection.headers()["Retry-After"] == "40"


async def test_rejected_request_is_not_charged(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    await store.reserve(key.id, now=NOW, requests=1, tokens=2000, tier=tier(tpm=1000))
    assert await store.usage(key.id, DAY) == Usage()


async def test_next_minute_starts_a_fresh_rate_window(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    await store.reserve(key.id, now=NOW, requests=1, tokens=10, tier=tier(rpm=1))
    later = await store.reserve(key.id, now=NOW + 60, requests=1, tokens=10, tier=tier(rpm=1))
    assert isinstance(later, Reservation)


async def test_reserving_for_an_unknown_key_raises(store: KeyStore) -> None:
    with pytest.raises(UnknownKeyError):
        await store.reserve("key_missing", now=NOW, requests=1, tokens=1, tier=tier())


async def test_reserving_for_a_revoked_key_raises_and_charges_nothing(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    await store.revoke("alice")
    with pytest.raises(RevokedKeyError):
        await store.reserve(key.id, now=NOW, requests=1, tokens=1, tier=tier())
    assert await store.usage(key.id, DAY) == Usage()


async def test_a_reservation_made_before_revocation_still_settles(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    reservation = await store.reserve(key.id, now=NOW, requests=1, tokens=100, tier=tier())
    assert isinstance(reservation, Reservation)
    await store.revoke("alice")
    await store.settle(reservation, 40)
    assert await store.usage(key.id, DAY) == Usage(requests=1, tokens=40)


async def test_settle_refunds_unused_tokens(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    limits = tier(tpm=1000)
    reservation = await store.reserve(key.id, now=NOW, requests=1, tokens=1000, tier=limits)
    assert isinstance(reservation, Reservation)
    await store.settle(reservation, actual_tokens=400)
    assert await store.usage(key.id, DAY) == Usage(requests=1, tokens=400)
    refilled = await store.reserve(key.id, now=NOW, requests=1, tokens=600, tier=limits)
    assert isinstance(refilled, Reservation)


async def test_settle_after_the_minute_rolled_over_leaves_the_new_window_alone(store: KeyStore) -> None:
    key, _ = await store.create_key("alice", "pro")
    limits = tier(tpm=1000)
    first = await store.reserve(key.id, now=NOW, requests=1, tokens=500, tier=limits)
    await store.reserve(key.id, now=NOW + 60, requests=1, tokens=1000, tier=limits)
    assert isinstance(first, Reservation)
    await store.settle(first, actual_tokens=0)
    still_full = await store.reserve(key.id, now=NOW + 60, requests=1, tokens=1, tier=limits)
    assert isinstance(still_full, Rejection)


async def test_usage_survives_reopening_the_store(dsn: str) -> None:
    first = await open_store(dsn)
    key, _ = await first.create_key("alice", "pro")
    await first.reserve(key.id, now=NOW, requests=1, tokens=700, tier=tier())
    await first.close()
    async with await open_store(dsn) as reopened:
        assert await reopened.usage(key.id, DAY) == Usage(requests=1, tokens=700)
        over = await reopened.reserve(key.id, now=NOW, requests=1, tokens=400, tier=tier(daily_token_quota=1000))
        assert isinstance(over, Rejection) and over.limit == "daily_tokens"


async def test_concurrent_reservations_from_four_stores_never_exceed_daily_quota(dsn: str) -> None:
    stores = list(await asyncio.gather(*(open_store(dsn) for _ in range(4))))
    try:
        key, _ = await stores[0].create_key("alice", "pro")
        limits = tier(daily_token_quota=1000)
        results = await _reserve_many(stores, key.id, n=200, tokens=10, limits=limits)
        assert sum(isinstance(r, Reservation) for r in results) == 100
        assert await stores[1].usage(key.id, DAY) == Usage(requests=100, tokens=1000)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_concurrent_reservations_from_four_stores_never_exceed_rpm(dsn: str) -> None:
    stores = list(await asyncio.gather(*(open_store(dsn) for _ in range(4))))
    try:
        key, _ = await stores[0].create_key("alice", "pro")
        results = await _reserve_many(stores, key.id, n=200, tokens=1, limits=tier(rpm=37))
        assert sum(isinstance(r, Reservation) for r in results) == 37
        assert {r.limit for r in results if isinstance(r, Rejection)} == {"requests"}
        assert (await stores[2].usage(key.id, DAY)).requests == 37
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def _reserve_in_process(dsn: str, key_id: str, n: int, tokens: int, quota: int) -> int:
    """Run in a separate process: reserve n times concurrently, return how many succeeded."""

    async def reserve_all() -> int:
        async with await open_store(dsn) as store:
            results = await _reserve_many([store], key_id, n=n, tokens=tokens, limits=tier(daily_token_quota=quota))
        return sum(isinstance(r, Reservation) for r in results)

    return asyncio.run(reserve_all())


async def test_reservations_from_four_processes_never_exceed_daily_quota(store: KeyStore, dsn: str) -> None:
    key, _ = await store.create_key("alice", "pro")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        calls = [loop.run_in_executor(pool, _reserve_in_process, dsn, key.id, 50, 10, 1000) for _ in range(4)]
        admitted = await asyncio.gather(*calls)
    assert sum(admitted) == 100
    assert await store.usage(key.id, DAY) == Usage(requests=100, tokens=1000)


# DSNs


def test_relative_sqlite_path_resolves_against_the_project_root(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///.cache/keys.db", root=tmp_path) == str(tmp_path / ".cache" / "keys.db")


def test_absolute_sqlite_path_is_kept() -> None:
    assert sqlite_path("sqlite:////var/lib/surge/keys.db") == "/var/lib/surge/keys.db"


async def test_open_store_creates_missing_directories(tmp_path: Path) -> None:
    async with await open_store("sqlite:///nested/dir/keys.db", root=tmp_path) as store:
        await store.create_key("alice", "pro")
    assert (tmp_path / "nested" / "dir" / "keys.db").exists()


def test_a_sqlite_store_serves_any_event_loop_and_closes_twice(tmp_path: Path) -> None:
    """Its connection lives on the store's own thread: callers on other loops (a CLI's asyncio.run, a test's)
    share it, and a second close is harmless."""
    opened = asyncio.run(open_store(f"sqlite:///{tmp_path / 'keys.db'}"))
    _, plaintext = asyncio.run(opened.create_key("loops", "free"))
    assert asyncio.run(opened.lookup(plaintext)) is not None
    asyncio.run(opened.close())
    asyncio.run(opened.close())


async def test_reservations_queued_behind_a_locked_sqlite_fail_at_once_then_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.admission import sqlite_store

    monkeypatch.setattr(sqlite_store, "_BUSY_TIMEOUT_S", 0.5)
    path = tmp_path / "keys.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        key, _ = await store.create_key("locked", "pro")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process's writer holds the database
        calls = [store.reserve(key.id, now=NOW, requests=1, tokens=1, tier=tier()) for _ in range(6)]
        errors = [str(e) for e in await asyncio.gather(*calls, return_exceptions=True)]
        other.execute("ROLLBACK")
        other.close()
        # The first waits out the busy timeout; those queued behind it fail without waiting it again.
        assert errors[0] == "database is locked"
        assert all("found locked while this operation waited" in e for e in errors[1:]), errors
        assert isinstance(await store.reserve(key.id, now=NOW, requests=1, tokens=1, tier=tier()), Reservation)
    finally:
        await store.close()
