"""A key store that cannot answer: 503 with Retry-After (never a 500, never a request let through unchecked),
and the service recovers by itself once the store is back. SQLite locked by another writer; PostgreSQL stopped
and started again. Through the session app's HTTP API for SQLite, through the admission gate for PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from deployments.admission import AdmissionConfig, open_store
from deployments.admission.gate import AdmissionGate
from deployments.errors import ServiceUnavailable
from tests.integration.conftest import Keys
from tests.pg_server import _as_server_user, fresh_database, postgres_bin_dir, postgres_server

CHAT = {"model": "surge-tiny", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 2}


@contextmanager
def sqlite_write_locked(dsn: str) -> Iterator[None]:
    """Another process's writer holding the database: every reservation's BEGIN IMMEDIATE waits and fails."""
    conn = sqlite3.connect(dsn.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def first_200_s(client: httpx.Client, limit_s: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if client.post("/v1/chat/completions", json=CHAT).status_code == 200:
            return time.monotonic() - start
        time.sleep(0.1)
    return float("inf")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_locked_sqlite_key_store_answers_503_with_retry_after_and_recovers(surge_url: str, api_keys: Keys) -> None:
    headers = {"Authorization": f"Bearer {api_keys['pro']}"}
    with httpx.Client(base_url=surge_url, timeout=60, headers=headers) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # the key is cached and served
        with sqlite_write_locked(api_keys.dsn):
            answers = [client.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
        statuses = Counter(r.status_code for r in answers)
        print(f"sqlite locked: sent=3 statuses={dict(statuses)}")
        assert statuses == {503: 3}, [r.text for r in answers]
        assert all(r.headers.get("Retry-After") for r in answers)
        assert {r.json()["error"]["code"] for r in answers} == {"key_store_unavailable"}
        recovery_s = first_200_s(client)
        print(f"sqlite lock released: first 200 after {recovery_s:.2f} s")
        assert recovery_s <= 5


@pytest.fixture(scope="module")
def postgres_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


async def _server_settings(admin_dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        names = ("data_directory", "port", "unix_socket_directories")
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}
    finally:
        await conn.close()


def _pg_ctl(settings: dict[str, str], action: str) -> None:
    options = (f"-p {settings['port']} -k {settings['unix_socket_directories']} "
               "-c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")  # fmt: skip
    args = [str(postgres_bin_dir() / "pg_ctl"), "-D", settings["data_directory"], "-w", "-t", "60"]
    args += ["-m", "fast", "stop"] if action == "stop" else ["-o", options, "-l",
                                                             f"{settings['data_directory']}/../restart.log", "start"]
    subprocess.run(_as_server_user(args), check=True, capture_output=True)


@pytest.fixture
def postgres_dsn(postgres_admin_dsn: str) -> str:
    return fresh_database(postgres_admin_dsn, "surge_outage")


@pytest.fixture
async def postgres_gate(postgres_dsn: str) -> AsyncIterator[tuple[AdmissionGate, str]]:
    dsn = postgres_dsn
    async with await open_store(dsn) as store:
        _, key = await store.create_key("outage", "pro")
    gate = AdmissionGate(AdmissionConfig(key_store_dsn=dsn))
    yield gate, key
    await gate.close()


async def _reserve_outcome(gate: AdmissionGate, tenant: Any) -> str:
    try:
        await asyncio.wait_for(gate.reserve(tenant, 10), timeout=60)
        return "ok"
    except ServiceUnavailable as err:
        assert err.headers.get("Retry-After"), err.headers
        return "503"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
async def test_stopped_postgres_key_store_answers_503_and_recovers_when_started(
    postgres_admin_dsn: str, postgres_gate: tuple[AdmissionGate, str]
) -> None:
    gate, key = postgres_gate
    tenant = await gate.authenticate(f"Bearer {key}")
    assert await _reserve_outcome(gate, tenant) == "ok"
    settings = await _server_settings(postgres_admin_dsn)
    await asyncio.to_thread(_pg_ctl, settings, "stop")
    try:
        down = [await _reserve_outcome(gate, tenant) for _ in range(3)]
    finally:
        await asyncio.to_thread(_pg_ctl, settings, "start")
    started = time.monotonic()
    outcome = await _reserve_outcome(gate, tenant)
    while outcome != "ok" and time.monotonic() - started < 30:
        await asyncio.sleep(0.1)
        outcome = await _reserve_outcome(gate, tenant)
    recovery_s = time.monotonic() - started
    print(f"postgres stopped: sent=3 outcomes={Counter(down)}; started again: ok after {recovery_s:.2f} s")
    assert down == ["503"] * 3
    assert outcome == "ok" and recovery_s <= 5
