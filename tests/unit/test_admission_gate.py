"""The ingress's admission path with a real SQLite key store, without Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import asyncpg
import pytest

from deployments.admission import AdmissionConfig, ShedConfig, open_store
from deployments.admission import gate as gate_module
from deployments.admission.decisions import LimitSnapshot, Reservation
from deployments.admission.gate import ANONYMOUS, AdmissionGate, prompt_token_bound
from deployments.admission.outage import key_store_outage
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


class FlakyStore:
    """Settles only after `failures` attempts failed as a Postgres going away mid-commit does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.settled: list[int] = []

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if self.failures:
            self.failures -= 1
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress")
        self.settled.append(actual_tokens)


async def _settle_with(failures: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FlakyStore:
    monkeypatch.setattr(gate_module, "SETTLE_RETRY_S", (0.0, 0.0, 0.0))
    gate = AdmissionGate(AdmissionConfig(key_store_dsn=f"sqlite:///{tmp_path / 'k.db'}"))
    store = FlakyStore(failures)
    gate._store = store  # type: ignore[assignment]
    reservation = Reservation("key", 0, date(2026, 12, 3), 1, 100, LimitSnapshot(60, 59, 1000, 900, 60, 10_000, 100))
    await gate.settle(reservation, 40)
    return store


async def test_a_settlement_meeting_an_outage_is_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert (await _settle_with(3, monkeypatch, tmp_path)).settled == [40]


async def test_a_settlement_gives_up_after_its_retries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = await _settle_with(4, monkeypatch, tmp_path)
    assert (store.settled, store.failures) == ([], 0)


def test_an_asyncpg_client_state_error_is_an_outage_not_a_500() -> None:
    with pytest.raises(ServiceUnavailable) as caught, key_store_outage():
        raise asyncpg.exceptions.InternalClientError("cannot switch to state 15")
    assert (caught.value.code, caught.value.headers["Retry-After"]) == ("key_store_unavailable", "1")
