"""A SQLite key store locked by another writer under a bounded load through the session app's HTTP API: refused
503 + Retry-After while locked (never a 500, never a request let through unchecked, a key past its quota still
refused), and served again once the lock is gone, by itself. PostgreSQL stopped and started is in test_multinode.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.chaos_load import BoundedLoad, Tally, recovery_s, wait_until_ok
from tests.integration.conftest import Keys
from tests.integration.test_key_store_outage import sqlite_write_locked

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOTAL, CONCURRENCY = 160, 8


def _body(i: int, stream: bool) -> dict[str, Any]:
    return {"model": "surge-tiny", "messages": [{"role": "user", "content": f"locked {i}"}],
            "max_tokens": 16 if stream else 4, "stream": stream}  # fmt: skip


def _new_keys(keys: Keys) -> dict[str, str]:
    from deployments.admission import open_store

    async def create() -> dict[str, str]:
        async with await open_store(keys.dsn) as store:
            return {tier: (await store.create_key(f"chaos-sqlite-{tier}", tier))[1] for tier in ("pro", "tiny-quota")}

    return asyncio.run(create())


def _wait_until(check: Any, what: str, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_locked_sqlite_under_load_refuses_503_then_recovers_and_keeps_quotas(surge_url: str, api_keys: Keys) -> None:
    keys = _new_keys(api_keys)
    quota = {"Authorization": f"Bearer {keys['tiny-quota']}"}
    body = {"model": "surge-tiny", "messages": [{"role": "user", "content": "more"}], "max_tokens": 64}
    with httpx.Client(base_url=surge_url, timeout=60) as client:
        statuses = [client.post("/v1/chat/completions", json=body, headers=quota).status_code]
        while statuses[-1] == 200 and len(statuses) < 100:
            statuses.append(client.post("/v1/chat/completions", json=body, headers=quota).status_code)
        assert statuses[-1] == 429, statuses  # the tiny quota is spent before the outage
        load = BoundedLoad(surge_url, keys["pro"], TOTAL, CONCURRENCY, _body, id_prefix="chaos-sqlite").start()
        load.wait_for(TOTAL // 4)
        fault_s = time.monotonic()  # taking the lock waits for the app's writers, and already blocks new ones
        with sqlite_write_locked(api_keys.dsn):
            # Requests waiting on the lock hold their pool's queue slots, so newer ones are shed (503 overloaded)
            # until the waiting ones give up after the store's busy wait (503 key_store_unavailable).
            _wait_until(lambda: any(o.error_code == "key_store_unavailable" for o in load.outcomes),
                        "a key-store refusal while locked")  # fmt: skip
            quota_locked = client.post("/v1/chat/completions", json=body, headers=quota)
        released_s = time.monotonic()
        outcomes = load.join()
        pro = {"Authorization": f"Bearer {keys['pro']}"}
        back_s = wait_until_ok(lambda: client.post("/v1/chat/completions", json=body, headers=pro), released_s)
        quota_after = client.post("/v1/chat/completions", json=body, headers=quota)
    first = recovery_s([o for o in outcomes if o.started_s >= released_s], released_s)
    print(Tally("sqlite locked", outcomes, None, {
        "locked_for_s": f"{released_s - fault_s:.2f}",
        "first_success_after_release_s": "none" if first is None else f"{first:.2f}",
        "answers_again_s": f"{back_s:.2f}", "quota_key_locked": quota_locked.status_code,
        "quota_key_after": quota_after.status_code,
    }).line())  # fmt: skip
    refused = [o for o in outcomes if o.status == 503]
    assert {o.status for o in outcomes} <= {200, 503}, Counter(o.status for o in outcomes)
    codes = Counter((o.error_code, o.retry_after) for o in refused)
    assert set(codes) <= {("key_store_unavailable", True), ("overloaded", True)}, codes
    assert not [o for o in outcomes if o.silently_truncated or o.broken]
    assert quota_locked.status_code == 503 and quota_locked.headers.get("Retry-After"), quota_locked.text
    assert quota_after.status_code == 429  # the outage let nothing past the quota
