"""The ingress's admission path with a real SQLite key store, without Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deployments.admission import AdmissionConfig, ShedConfig, open_store
from deployments.admission.gate import ANONYMOUS, AdmissionGate, prompt_token_bound
from deployments.engines.base import ChatPrompt, TextPrompt, TokenPrompt
from deployments.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized


@pytest.fixture
async def gate_and_key(tmp_path: Path) -> AsyncIterator[tuple[AdmissionGate, str]]:
    dsn = f"sqlite:///{tmp_path / 'keys.db'}"
    async with await open_store(dsn) as store:
        _, key = await store.create_key("t", "free")
    gate = AdmissionGate(AdmissionConfig(key_store_dsn=dsn, shed=ShedConfig(queue_limit=10)))
    yield gate, key
    await gate.close()


async def test_missing_or_malformed_authorization_is_401(gate_and_key: tuple[AdmissionGate, str]) -> None:
    gate, _ = gate_and_key
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(Unauthorized):
            await gate.authenticate(header)


async def test_valid_key_resolves_to_its_tier(gate_and_key: tuple[AdmissionGate, str]) -> None:
    gate, key = gate_and_key
    tenant = await gate.authenticate(f"Bearer {key}")
    assert tenant.key is not None and tenant.key.tier == "free"
    assert gate.priority(tenant, None) == 5
    assert gate.priority(tenant, 1) == 4  # clamped to the tier's best priority


async def test_free_tier_max_tokens_is_capped(gate_and_key: tuple[AdmissionGate, str]) -> None:
    gate, key = gate_and_key
    tenant = await gate.authenticate(f"Bearer {key}")
    assert gate.max_tokens(tenant, 10_000) == 256
    assert gate.max_tokens(tenant, 10) == 10


async def test_lowest_priority_is_shed_first(gate_and_key: tuple[AdmissionGate, str]) -> None:
    gate, _ = gate_and_key
    gate.shed(1, "main", 7)  # priority 1 gets in below 10
    with pytest.raises(ServiceUnavailable) as shed:
        gate.shed(5, "main", 7)  # priority 5 only below 5
    assert shed.value.headers["Retry-After"]


async def test_reservation_beyond_the_daily_quota_is_429(gate_and_key: tuple[AdmissionGate, str]) -> None:
    gate, key = gate_and_key
    tenant = await gate.authenticate(f"Bearer {key}")
    with pytest.raises(RateLimited) as limited:
        await gate.reserve(tenant, 10_000_000)
    assert limited.value.headers["Retry-After"]
    assert "X-RateLimit-Remaining-Tokens" in limited.value.headers


async def test_model_allow_list_is_403(tmp_path: Path) -> None:
    gate = AdmissionGate(AdmissionConfig(key_store_dsn=f"sqlite:///{tmp_path / 'k.db'}"))
    tier = gate._config.tiers["free"].model_copy(update={"allowed_models": ["small-*"]})
    tenant = ANONYMOUS.__class__("t", tier)
    gate.check_model(tenant, "small-1")
    with pytest.raises(Forbidden):
        gate.check_model(tenant, "large")


async def test_admission_off_lets_everyone_in(tmp_path: Path) -> None:
    gate = AdmissionGate(AdmissionConfig(enabled=False, key_store_dsn=f"sqlite:///{tmp_path / 'k.db'}"))
    assert await gate.authenticate(None) is ANONYMOUS
    assert await gate.reserve(ANONYMOUS, 10**9) is None


def test_prompt_token_bound_counts_bytes_and_template_overhead() -> None:
    chat = ChatPrompt([{"role": "user", "content": "héllo"}])
    assert prompt_token_bound(chat) == len("héllo".encode()) + 32
    assert prompt_token_bound(TextPrompt("abc")) == 4
    assert prompt_token_bound(TokenPrompt([1, 2, 3])) == 3
