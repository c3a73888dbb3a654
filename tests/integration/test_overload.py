"""20x the measured capacity offered open-loop for a bounded time through the session app's HTTP API: the ingress
and engine processes stay up with bounded memory, every refusal is a 429 or 503 with Retry-After, and every
accepted request completes. How fast refusals come back is measured in benchmarks/overload.py, not here."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import psutil
import pytest
from ray._private import state as ray_state

from deployments.admission import open_store
from tests.chaos_load import BoundedLoad, Outcome, Tally, open_loop
from tests.integration.conftest import Keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FACTOR, DURATION_S, MAX_REQUESTS, FREE_KEYS = 20, 4.0, 400, 8


def _keys(keys: Keys) -> dict[str, list[str]]:
    async def create() -> dict[str, list[str]]:
        async with await open_store(keys.dsn) as store:
            made: dict[str, list[str]] = {}
            for tier, count in (("enterprise", 1), ("pro", 2), ("free", FREE_KEYS)):
                made[tier] = [(await store.create_key(f"overload-{tier}-{n}", tier))[1] for n in range(count)]
            return made

    return asyncio.run(create())


def _body(i: int, stream: bool = False) -> dict[str, Any]:
    # Unique prompts: nothing is answered from the response cache.
    return {"model": "surge-tiny", "messages": [{"role": "user", "content": f"overload {i}"}], "max_tokens": 16,
            "stream": stream}  # fmt: skip


def _serve_processes() -> dict[str, tuple[int, int]]:
    """Ingress and main-pool replica actors: name -> (pid, restarts)."""
    wanted = ("ServeReplica:surge:ingress", "ServeReplica:surge:pool-main")
    return {a["Name"]: (a["Pid"], a["NumRestarts"]) for a in ray_state.actors(actor_state_name="ALIVE").values()
            if a["ActorClassName"] in wanted}  # fmt: skip


def _rss_bytes(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def _capacity_rps(url: str, key: str) -> float:
    """Closed-loop non-streamed requests per second with the pool busy, as the benchmark measures it."""
    load = BoundedLoad(url, key, 24, 8, lambda i, s: _body(10_000 + i, s), stream_every=0, id_prefix="capacity")
    started = time.monotonic()
    outcomes = load.start().join()
    assert all(o.ok for o in outcomes), Counter(o.status for o in outcomes)
    return len(outcomes) / (time.monotonic() - started)


def _key_for(keys: dict[str, list[str]]) -> Any:
    def key(i: int) -> str:
        tier = "enterprise" if i % 4 == 0 else "pro" if i % 4 == 1 else "free"
        return keys[tier][i % len(keys[tier])]

    return key


def test_twenty_times_capacity_refuses_with_retry_after_and_completes_what_it_accepts(
    surge_url: str, api_keys: Keys
) -> None:
    keys = _keys(api_keys)
    capacity_rps = _capacity_rps(surge_url, keys["enterprise"][0])
    processes = _serve_processes()
    rss_before = _rss_bytes([pid for pid, _ in processes.values()])
    rate_rps = FACTOR * capacity_rps
    count = min(MAX_REQUESTS, int(rate_rps * DURATION_S))
    outcomes = open_loop(surge_url, _key_for(keys), rate_rps, count, lambda i: _body(i, stream=i % 4 == 0))
    rss_after = _rss_bytes([pid for pid, _ in processes.values()])
    refused = [o for o in outcomes if o.status in (429, 503)]
    print(Tally("overload", outcomes, None, {
        "capacity_rps": f"{capacity_rps:.1f}", "offered_rps": f"{rate_rps:.1f}",
        "refusals_by_code": dict(Counter(o.error_code for o in refused)),
        "rss_mib_before": rss_before >> 20, "rss_mib_after": rss_after >> 20,
    }).line())  # fmt: skip
    assert _serve_processes() == processes  # same processes, none restarted
    assert rss_after <= 2 * rss_before, (rss_before, rss_after)
    assert refused, "20x capacity refused nothing: the test did not overload the service"
    assert all(o.retry_after for o in refused), Counter((o.status, o.error_code) for o in refused if not o.retry_after)
    accepted: list[Outcome] = [o for o in outcomes if o.status == 200]
    assert accepted and all(o.ok for o in accepted), [o for o in accepted if not o.ok][:3]
    assert len(accepted) + len(refused) == len(outcomes), Counter((o.status, o.broken) for o in outcomes)
    assert httpx.get(f"{surge_url}/readyz", timeout=30).status_code == 200
