"""Admission through HTTP with keys from the SQL store: auth, tiers, limits, quotas, priority, cache, batching."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from deployments.admission import open_store
from tests.integration.conftest import Keys

pytestmark = pytest.mark.slow

MODEL = "surge-tiny"
USER = [{"role": "user", "content": "hi"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def http(surge_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=surge_url, timeout=120) as client:
        yield client


def chat(http: httpx.Client, key: str, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": USER, "max_tokens": 4, **fields}
    return http.post("/v1/chat/completions", json=body, headers=auth(key))


async def usage_of(keys: Keys, tier: str) -> tuple[int, int]:
    async with await open_store(keys.dsn) as store:
        key = await store.lookup(keys[tier])
        assert key is not None
        used = await store.usage(key.id, datetime.now(UTC).date())
        return used.requests, used.tokens


def test_missing_key_is_401(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_unknown_key_is_401(http: httpx.Client) -> None:
    assert chat(http, "sk-surge-not-a-real-key").status_code == 401


def test_revoked_key_is_401(http: httpx.Client, api_keys: Keys) -> None:
    async def revoked_key() -> str:
        async with await open_store(api_keys.dsn) as store:
            _, plaintext = await store.create_key("to-revoke", "pro")
            await store.revoke("to-revoke")
            return plaintext

    assert chat(http, asyncio.run(revoked_key())).status_code == 401


def test_models_need_a_key_but_health_does_not(http: httpx.Client, api_key: str) -> None:
    assert http.get("/v1/models").status_code == 401
    assert http.get("/v1/models", headers=auth(api_key)).status_code == 200
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_tier_without_the_model_is_403(http: httpx.Client, api_keys: Keys) -> None:
    response = chat(http, api_keys["fallback-only"])
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "model"


def test_every_response_carries_rate_limit_headers(http: httpx.Client, api_keys: Keys) -> None:
    response = chat(http, api_keys["pro"])
    assert response.status_code == 200
    for name in ("Limit-Requests", "Remaining-Requests", "Limit-Tokens", "Remaining-Tokens", "Reset-Requests",
                 "Reset-Tokens"):
        assert f"x-ratelimit-{name.lower()}" in response.headers


def test_requests_beyond_rpm_get_429_with_retry_after(http: httpx.Client, api_keys: Keys) -> None:
    left_in_minute_s = 60 - time.time() % 60
    if left_in_minute_s < 10:  # windows are whole minutes: keep the burst inside one
        time.sleep(left_in_minute_s + 0.5)
    statuses = [chat(http, api_keys["few-rpm"]) for _ in range(4)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    limited = statuses[3]
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"


def test_quota_is_never_overspent_by_200_concurrent_requests(surge_url: str, api_keys: Keys) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=surge_url, timeout=300) as client:
            body = {"model": "surge-fallback", "messages": USER, "max_tokens": 8}
            calls = [client.post("/v1/chat/completions", json=body, headers=auth(api_keys["tiny-quota"]))
                     for _ in range(200)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) > 0 and statuses.count(429) > 0
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota" and "Retry-After" in refused.headers
    assert any("x-quota-warning" in r.headers for r in responses)
    _, tokens = asyncio.run(usage_of(api_keys, "tiny-quota"))
    assert 0 < tokens <= 1_500


def test_low_priority_is_shed_first_under_overload(http: httpx.Client, surge_url: str, api_keys: Keys) -> None:
    long = {"model": MODEL, "messages": USER, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=surge_url, timeout=120, headers=auth(api_keys["enterprise"])) as filler:
        streams = [filler.stream("POST", "/v1/chat/completions", json=long) for _ in range(5)]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in opened)
            shed = chat(http, api_keys["free"])  # priority 5: admitted below 4 in flight
            vip = chat(http, api_keys["enterprise"], priority=1)  # priority 1: admitted below 8
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    deadline = time.monotonic() + 30  # later tests need the queue drained again
    while http.get("/readyz").json()["routing"]["in_flight"].get("main") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shed.status_code == 503 and int(shed.headers["Retry-After"]) >= 1
    assert shed.json()["error"]["code"] == "overloaded"
    assert vip.status_code == 200


def test_deterministic_requests_are_cached_per_tenant(http: httpx.Client, api_keys: Keys) -> None:
    fields = {"temperature": 0, "max_tokens": 6, "messages": [{"role": "user", "content": "cache me"}]}
    first = chat(http, api_keys["pro"], **fields)
    second = chat(http, api_keys["pro"], **fields)
    other_tenant = chat(http, api_keys["enterprise"], **fields)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert other_tenant.headers["X-Cache"] == "miss"
    text = first.json()["choices"][0]["message"]["content"]
    assert second.json()["choices"][0]["message"]["content"] == text
    with http.stream("POST", "/v1/chat/completions", headers=auth(api_keys["pro"]),
                     json={"model": MODEL, "stream": True, **fields}) as streamed:
        assert streamed.headers["X-Cache"] == "hit"
        events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text


def test_sampled_requests_are_not_cached(http: httpx.Client, api_key: str) -> None:
    response = chat(http, api_key, temperature=0.8)
    assert "X-Cache" not in response.headers


def test_batch_endpoint_answers_every_item_in_order(http: httpx.Client, api_keys: Keys) -> None:
    before, _ = asyncio.run(usage_of(api_keys, "pro"))
    items = [
        {"model": MODEL, "messages": USER, "max_tokens": 3},
        {"model": MODEL, "messages": USER, "max_tokens": 0},
        {"model": "nope", "messages": USER},
        {"model": MODEL, "messages": [{"role": "user", "content": "second"}], "max_tokens": 3},
    ]
    response = http.post("/v1/batch/chat/completions", json={"requests": items}, headers=auth(api_keys["pro"]))
    assert response.status_code == 200
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert [d["status"] for d in data] == [200, 400, 404, 200]
    assert data[0]["response"]["object"] == "chat.completion"
    assert data[1]["error"]["param"] == "max_tokens"
    after, _ = asyncio.run(usage_of(api_keys, "pro"))
    assert after - before == 2


def test_concurrent_non_streamed_requests_are_micro_batched(http: httpx.Client, surge_url: str, api_key: str) -> None:
    def pool_counters() -> tuple[int, int]:
        pool = http.get("/readyz").json()["pools"]["fallback"]  # the pool that sheds late
        return pool["batches"], pool["batched_requests"]

    batches_before, requests_before = pool_counters()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=surge_url, timeout=120, headers=auth(api_key)) as client:
            body = {"model": "surge-fallback", "messages": USER, "max_tokens": 2, "temperature": 0.7}
            return [r.status_code for r in await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body) for _ in range(12)))]

    assert asyncio.run(burst()) == [200] * 12
    batches, requests = pool_counters()
    # The burst's first request finds nothing in flight and goes at once; the ones behind it share batches.
    assert requests - requests_before >= 6
    assert batches - batches_before < requests - requests_before


def test_a_lone_non_streamed_request_is_not_held_for_a_batch(http: httpx.Client, api_key: str) -> None:
    before = http.get("/readyz").json()["pools"]["fallback"]["batched_requests"]
    body = {"model": "surge-fallback", "messages": USER, "max_tokens": 2, "temperature": 0.7}
    for _ in range(3):
        assert http.post("/v1/chat/completions", json=body, headers=auth(api_key)).status_code == 200
    assert http.get("/readyz").json()["pools"]["fallback"]["batched_requests"] == before


def test_a_burst_on_an_idle_pool_is_shed_beyond_its_limit(surge_url: str, api_key: str) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=surge_url, timeout=120, headers=auth(api_key)) as client:
            body = {"model": MODEL, "messages": USER, "max_tokens": 4, "priority": 5, "temperature": 0.7}
            responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(40)))
            return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 4  # priority 5 is admitted while fewer than 4 are in flight
    assert statuses.count(503) > 0


def test_api_keys_never_appear_in_logs(http: httpx.Client, api_keys: Keys) -> None:
    import ray

    for tier in ("pro", "free"):
        chat(http, api_keys[tier])
    chat(http, "sk-surge-wrong-key-for-the-logs")
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    secrets = [api_keys["pro"], api_keys["free"], "sk-surge-wrong-key-for-the-logs"]
    for log in (session_dir / "logs").rglob("*"):
        if log.is_file():
            text = log.read_text(errors="ignore")
            assert not any(secret in text for secret in secrets), f"an API key leaked into {log}"
