"""Fuzzing every operation of the app's own OpenAPI schema (schemathesis): never a 5xx, always the error shape.

The cases come from `/openapi.json` as the session's app serves it; they are derandomized (the same cases each
run) and sent with a fresh key of the `tiny-quota` tier, so generations are short (max_tokens capped at 64) and
stop at its daily quota, which bounds the time the fuzz takes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from deployments.admission import open_store
from tests.integration.conftest import Keys

pytestmark = pytest.mark.slow

# Per operation: cases that fit the schema, then (where the schema leaves room) cases that do not.
POSITIVE_EXAMPLES = 70
NEGATIVE_EXAMPLES = 50
MIN_CASES = 1_000


@pytest.fixture(scope="module")
def fuzz_key(api_keys: Keys) -> str:
    async def create() -> str:
        async with await open_store(api_keys.dsn) as store:
            return (await store.create_key("fuzz", "tiny-quota"))[1]

    return asyncio.run(create())


def assert_contract(response: Any, label: str) -> None:
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400 and response.headers.get("content-type", [""])[0].startswith("application/json"):
        body = json.loads(response.content)
        if isinstance(body.get("error"), dict):
            assert {"message", "type", "param", "code"} <= set(body["error"]), f"{label}: {body}"
        else:  # OAuth's own endpoint answers RFC 6749 §5.2 errors
            assert "error" in body, f"{label}: {body}"


def fuzz(operation: Any, mode: GenerationMode, examples: int, surge_url: str, key: str) -> int:
    """Send `examples` generated cases of one operation; returns how many were sent."""
    sent = 0

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(mode))
    def send(case: Any) -> None:
        nonlocal sent
        headers = {"Authorization": f"Bearer {key}", **(case.headers or {})}
        response = case.call(base_url=surge_url, headers=headers, timeout=60)
        sent += 1
        assert_contract(response, f"{mode} {case.method} {case.path}")

    try:
        send()
    except Unsatisfiable:  # nothing in the schema to violate (no parameters, or only free-form strings)
        assert mode is GenerationMode.NEGATIVE
    return sent


def test_no_generated_request_gets_a_5xx_and_the_server_stays_healthy(surge_url: str, fuzz_key: str) -> None:
    document = httpx.get(f"{surge_url}/openapi.json", timeout=60).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(document)
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = fuzz(operation, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, surge_url, fuzz_key)
        sent[label] += fuzz(operation, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, surge_url, fuzz_key)
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= set(sent)
    assert sum(sent.values()) >= MIN_CASES, sent
    assert httpx.get(f"{surge_url}/readyz", timeout=60).status_code == 200
