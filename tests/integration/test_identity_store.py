"""OAuth clients and day/month quotas in the SQL store (SQLite and a real PostgreSQL), exact under concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from typing import Any

import asyncpg
import pytest

from cluster.config import TierConfig
from deployments.admission.clients import (
    create_client,
    ensure_principal,
    find_client,
    list_clients,
    revoke_client,
    verify_client,
)
from deployments.admission.decisions import Rejection, Reservation, day_of
from deployments.admission.store import KeyNameTakenError, KeyStore, open_store, sqlite_path
from tests.integration.test_key_store import dsn, postgres_admin_dsn, store  # noqa: F401 (fixtures)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z: 6400 s before UTC midnight, 16 days before the month ends
DAY_S = 86_400


def tier(**quotas: int) -> TierConfig:
    return TierConfig(
        rpm=1_000_000, tpm=1_000_000_000, daily_token_quota=1_000_000_000, max_tokens_cap=64,
        default_priority=3, max_priority=1, **quotas,
    )  # fmt: skip


async def _raw(dsn: str, sql: str) -> list[tuple[Any, ...]]:  # noqa: F811
    if dsn.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(dsn)) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(record) for record in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _burst(stores: list[KeyStore], key_id: str, n: int, limits: TierConfig, *, now: float = NOW,
                 fraction: float | None = None) -> list[Reservation | Rejection]:  # fmt: skip
    calls = [stores[i % len(stores)].reserve(key_id, now=now, requests=1, tokens=1, tier=limits,
                                             warning_fraction=fraction) for i in range(n)]  # fmt: skip
    return list(await asyncio.gather(*calls))


async def _stores(dsn: str, n: int = 4) -> list[KeyStore]:  # noqa: F811
    return list(await asyncio.gather(*(open_store(dsn) for _ in range(n))))


# Clients


async def test_a_client_authenticates_with_its_secret_only(store: KeyStore) -> None:  # noqa: F811
    client, secret = await create_client(store, "acme", "pro")
    assert await verify_client(store, client.id, secret) == client
    assert await verify_client(store, client.id, secret + "x") is None
    assert await verify_client(store, "client_unknown", secret) is None


async def test_a_client_secret_is_stored_only_as_a_salted_scrypt_hash(dsn: str, store: KeyStore) -> None:  # noqa: F811
    _, secret = await create_client(store, "acme", "pro")
    (stored,) = [row[0] for row in await _raw(dsn, "SELECT secret_hash FROM surge_clients")]
    assert stored.startswith("scrypt$16384$8$1$")
    assert secret not in stored and hashlib.sha256(secret.encode()).hexdigest() not in stored


async def test_a_revoked_client_is_neither_found_nor_verified(store: KeyStore) -> None:  # noqa: F811
    client, secret = await create_client(store, "acme", "pro")
    assert await revoke_client(store, "acme")
    assert await find_client(store, client.id) is None
    assert await verify_client(store, client.id, secret) is None
    assert [c.revoked for c in await list_clients(store)] == [True]
    assert not await revoke_client(store, client.id)


async def test_active_client_names_are_unique(store: KeyStore) -> None:  # noqa: F811
    await create_client(store, "acme", "pro")
    with pytest.raises(KeyNameTakenError):
        await create_client(store, "acme", "free")


async def test_clients_are_not_listed_or_revoked_as_api_keys(store: KeyStore) -> None:  # noqa: F811
    client, _ = await create_client(store, "acme", "pro")
    await ensure_principal(store, "idp:alice", "pro")
    assert await store.list_keys() == []
    assert not await store.revoke(client.id)
    assert await find_client(store, client.id) is not None


async def test_a_client_is_charged_like_a_key(store: KeyStore) -> None:  # noqa: F811
    client, _ = await create_client(store, "acme", "pro")
    result = await store.reserve(client.id, now=NOW, requests=1, tokens=10, tier=tier())
    assert isinstance(result, Reservation)


# Day and month quotas, four stores standing in for four ingress replicas


async def test_daily_call_quota_admits_exactly_its_size_under_200_concurrent_calls(dsn: str) -> None:  # noqa: F811
    stores = await _stores(dsn)
    try:
        client, _ = await create_client(stores[0], "acme", "free")
        results = await _burst(stores, client.id, 200, tier(daily_call_quota=150))
        rejected = [r for r in results if isinstance(r, Rejection)]
        assert sum(isinstance(r, Reservation) for r in results) == 150
        assert {(r.limit, r.retry_after_s) for r in rejected} == {("daily_requests", 6400)}
        assert (await stores[1].usage(client.id, day_of(NOW))).requests == 150
        tomorrow = await _burst(stores, client.id, 1, tier(daily_call_quota=150), now=NOW + DAY_S)
        assert isinstance(tomorrow[0], Reservation)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_monthly_call_quota_counts_every_day_of_the_month_under_200_concurrent_calls(
    dsn: str,  # noqa: F811
) -> None:
    stores = await _stores(dsn)
    limits = tier(monthly_call_quota=150)
    try:
        client, _ = await create_client(stores[0], "acme", "pro")
        earlier = await _burst(stores, client.id, 100, limits, now=NOW - 4 * DAY_S)
        assert all(isinstance(r, Reservation) for r in earlier)
        results = await _burst(stores, client.id, 200, limits)
        rejected = [r for r in results if isinstance(r, Rejection)]
        assert sum(isinstance(r, Reservation) for r in results) == 50
        month_end_s = 6400 + 16 * DAY_S
        assert {(r.limit, r.retry_after_s) for r in rejected} == {("monthly_requests", month_end_s)}
        next_month = await _burst(stores, client.id, 1, limits, now=NOW + month_end_s)
        assert isinstance(next_month[0], Reservation)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_quota_warning_is_claimed_by_exactly_one_of_200_concurrent_calls(dsn: str) -> None:  # noqa: F811
    stores = await _stores(dsn)
    limits = tier(daily_call_quota=250)
    try:
        client, _ = await create_client(stores[0], "acme", "free")
        results = await _burst(stores, client.id, 200, limits, fraction=0.8)
        warned = [r for r in results if isinstance(r, Reservation) and r.warnings]
        assert [[q.kind for q in r.warnings] for r in warned] == [["daily_requests"]]
        assert warned[0].warnings[0].used == 200
        again = await _burst(stores, client.id, 20, limits, fraction=0.8)
        assert not any(isinstance(r, Reservation) and r.warnings for r in again)
        tomorrow = await _burst(stores, client.id, 200, limits, now=NOW + DAY_S, fraction=0.8)
        assert sum(1 for r in tomorrow if isinstance(r, Reservation) and r.warnings) == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))
