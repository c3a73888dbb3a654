"""The admission gate with OAuth tokens: issue, authenticate, revoke, charge quotas, warn once (no Ray)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from cluster.config import AdmissionConfig, IssuerConfig, NotifyConfig, SmtpConfig, TierConfig, TokenConfig
from deployments.admission.clients import create_client, revoke_client
from deployments.admission.decisions import day_of
from deployments.admission.gate import AdmissionGate
from deployments.admission.notify import verify_signature
from deployments.admission.quotas import month_of, month_reset_seconds
from deployments.errors import RateLimited, Unauthorized
from tests.local_http import local_server
from tests.local_smtp import smtp_sink

SECRET = "whsec-gate-test"
FORM = "application/x-www-form-urlencoded"


def tier(**fields: Any) -> TierConfig:
    defaults = {"rpm": 100_000, "tpm": 100_000_000, "daily_token_quota": 100_000_000, "max_tokens_cap": 64,
                "default_priority": 3, "max_priority": 1}  # fmt: skip
    return TierConfig(**{**defaults, **fields})


class Hooks:
    """A webhook receiver that keeps the events whose signature verifies."""

    def __init__(self) -> None:
        self.url = ""
        self.events: list[dict[str, Any]] = []
        self.bad = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if verify_signature(SECRET.encode(), request.headers.get("X-Surge-Signature", ""), body, now=time.time()):
            self.events.append(json.loads(body))
            self.arrived.set()
            return web.Response(status=204)
        self.bad += 1
        return web.Response(status=401)


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    receiver = Hooks()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with local_server(app) as url:
        receiver.url = f"{url}/hook"
        yield receiver


def gate_config(tmp_path: Path, tiers: dict[str, TierConfig], notify: NotifyConfig | None = None) -> AdmissionConfig:
    """One store and one signing key under tmp_path: every gate built from it is a replica of the same ingress."""
    key = tmp_path / "signing.pem"
    if not key.exists():
        key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return AdmissionConfig(
        key_store_dsn=f"sqlite:///{tmp_path / 'keys.db'}", tiers=tiers,
        tokens=TokenConfig(signing_key_files=[str(key)]), notify=notify or NotifyConfig(backoff_s=0.05),
    )  # fmt: skip


@pytest.fixture
async def gate(tmp_path: Path, hooks: Hooks, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AdmissionGate]:
    monkeypatch.setenv("SURGE_WEBHOOK_SECRET", SECRET)
    tiers = {"pro": tier(), "limited": tier(daily_call_quota=100, warning_webhook_url=hooks.url)}
    admission = AdmissionGate(gate_config(tmp_path, tiers))
    yield admission
    await admission.close()


async def token_for(gate: AdmissionGate, name: str, tier_name: str = "pro") -> tuple[str, str]:
    client, secret = await create_client(await gate.store(), name, tier_name)
    body = f"grant_type=client_credentials&client_id={client.id}&client_secret={secret}".encode()
    reply = await gate.identity.issue(FORM, None, body)
    assert reply.status == 200, reply.body
    return client.id, reply.body["access_token"]


async def test_an_issued_token_authenticates_as_its_client(gate: AdmissionGate) -> None:
    client_id, token = await token_for(gate, "acme")
    tenant = await gate.authenticate(f"Bearer {token}")
    assert tenant.name == client_id and tenant.tier == tier()


async def test_basic_client_authentication_gets_a_token(gate: AdmissionGate) -> None:
    client, secret = await create_client(await gate.store(), "acme", "pro")
    basic = "Basic " + base64.b64encode(f"{client.id}:{secret}".encode()).decode()
    reply = await gate.identity.issue(FORM, basic, b"grant_type=client_credentials")
    assert (reply.status, reply.body["token_type"], reply.body["expires_in"]) == (200, "Bearer", 86_400)
    assert reply.headers["Cache-Control"] == "no-store"


async def test_a_wrong_secret_is_invalid_client_with_a_challenge(gate: AdmissionGate) -> None:
    client, _ = await create_client(await gate.store(), "acme", "pro")
    body = f"grant_type=client_credentials&client_id={client.id}&client_secret=wrong".encode()
    reply = await gate.identity.issue(FORM, None, body)
    assert (reply.status, reply.body["error"]) == (401, "invalid_client")
    assert "WWW-Authenticate" in reply.headers


async def test_a_revoked_clients_token_is_refused_on_its_next_request(gate: AdmissionGate) -> None:
    _, token = await token_for(gate, "acme")
    await gate.authenticate(f"Bearer {token}")
    await revoke_client(await gate.store(), "acme")
    with pytest.raises(Unauthorized) as caught:
        await gate.authenticate(f"Bearer {token}")
    assert caught.value.body()["error"]["type"] == "authentication_error"
    assert "revoked" in caught.value.message


async def test_a_client_revoked_after_authenticating_is_refused_by_its_reservation(gate: AdmissionGate) -> None:
    """Revocation between authentication and the quota charge: the reservation's transaction refuses it."""
    client_id, token = await token_for(gate, "acme")
    tenant = await gate.authenticate(f"Bearer {token}")
    await revoke_client(await gate.store(), "acme")
    with pytest.raises(Unauthorized):
        await gate.reserve(tenant, 1)
    assert (await (await gate.store()).usage(client_id, day_of(time.time()))).requests == 0


async def test_a_tokens_tier_bounds_its_priority(tmp_path: Path) -> None:
    admission = AdmissionGate(gate_config(tmp_path, {"low": tier(default_priority=4, max_priority=3)}))
    try:
        _, token = await token_for(admission, "acme", "low")
        tenant = await admission.authenticate(f"Bearer {token}")
        assert [admission.priority(tenant, asked) for asked in (None, 1, 3, 5)] == [4, 3, 3, 5]
    finally:
        await admission.close()


async def test_a_tampered_token_is_a_401_in_the_openai_error_shape(gate: AdmissionGate) -> None:
    _, token = await token_for(gate, "acme")
    header, payload, signature = token.split(".")
    with pytest.raises(Unauthorized) as caught:
        await gate.authenticate(f"Bearer {header}.{payload}.{signature[:-4]}AAAA")
    assert caught.value.status == 401
    assert set(caught.value.body()["error"]) == {"message", "type", "param", "code"}


async def test_api_keys_keep_working_beside_tokens(gate: AdmissionGate) -> None:
    key, plaintext = await (await gate.store()).create_key("k", "pro")
    assert (await gate.authenticate(f"Bearer {plaintext}")).name == key.id


async def test_200_concurrent_calls_spend_exactly_the_daily_quota_and_warn_once(
    gate: AdmissionGate, hooks: Hooks
) -> None:
    client_id, token = await token_for(gate, "acme", "limited")
    tenant = await gate.authenticate(f"Bearer {token}")
    results = await asyncio.gather(*(gate.reserve(tenant, 1) for _ in range(200)), return_exceptions=True)
    limited = [r for r in results if isinstance(r, RateLimited)]
    assert len(results) - len(limited) == 100
    assert {(e.status, e.code, e.headers["X-Quota-Exceeded"]) for e in limited} == {
        (429, "insufficient_quota", "daily_requests")
    }
    assert all(int(e.headers["Retry-After"]) > 0 for e in limited)
    await gate.notifier.drain()
    assert hooks.bad == 0
    assert [(e["tenant"], e["quota"], e["used"]) for e in hooks.events] == [(client_id, "daily_requests", 80)]
    assert (await (await gate.store()).usage(client_id, day_of(time.time()))).requests == 100


async def test_two_replicas_spend_exactly_the_monthly_call_quota_and_warn_once(
    tmp_path: Path, hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """70 of 100 monthly calls used on an earlier day; 200 concurrent calls through two ingress replicas."""
    monkeypatch.setenv("SURGE_WEBHOOK_SECRET", SECRET)
    limits = tier(monthly_call_quota=100, warning_webhook_url=hooks.url)
    config = gate_config(tmp_path, {"monthly": limits})
    replicas = [AdmissionGate(config), AdmissionGate(config)]
    try:
        client_id, token = await token_for(replicas[0], "acme", "monthly")
        now = time.time()
        month_start = datetime.combine(month_of(now), datetime.min.time(), UTC).timestamp()
        earlier = max(month_start, now - 86_400)
        await (await replicas[0].store()).reserve(client_id, now=earlier, requests=70, tokens=0, tier=limits)
        tenants = [await replica.authenticate(f"Bearer {token}") for replica in replicas]
        results = await asyncio.gather(*(replicas[i % 2].reserve(tenants[i % 2], 1) for i in range(200)),
                                       return_exceptions=True)  # fmt: skip
        limited = [r for r in results if isinstance(r, RateLimited)]
        assert len(results) - len(limited) == 30
        exceeded = {(e.code, e.headers["X-Quota-Exceeded"]) for e in limited}
        assert exceeded == {("insufficient_quota", "monthly_requests")}
        assert all(0 < int(e.headers["Retry-After"]) <= month_reset_seconds(now) for e in limited)
        await asyncio.gather(*(replica.notifier.drain() for replica in replicas))
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))
    assert hooks.bad == 0
    assert [(e["tenant"], e["quota"], e["period"], e["used"], e["limit"]) for e in hooks.events] == [
        (client_id, "monthly_requests", month_of(now).isoformat()[:7], 80, 100)
    ]


async def test_a_clients_own_webhook_and_e_mail_get_its_warning_once(
    tmp_path: Path, hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SURGE_WEBHOOK_SECRET", SECRET)
    async with smtp_sink() as sink:
        notify = NotifyConfig(backoff_s=0.05, smtp=SmtpConfig(host="127.0.0.1", port=sink.port, sender="q@surge.test"))
        admission = AdmissionGate(gate_config(tmp_path, {"small": tier(daily_call_quota=50)}, notify))
        try:
            client, secret = await create_client(await admission.store(), "acme", "small", webhook_url=hooks.url,
                                                 email="ops@acme.test")  # fmt: skip
            body = f"grant_type=client_credentials&client_id={client.id}&client_secret={secret}".encode()
            token = (await admission.identity.issue(FORM, None, body)).body["access_token"]
            tenant = await admission.authenticate(f"Bearer {token}")
            await asyncio.gather(*(admission.reserve(tenant, 1) for _ in range(200)), return_exceptions=True)
            await admission.notifier.drain()
        finally:
            await admission.close()
    assert [(e["tenant"], e["quota"], e["used"]) for e in hooks.events] == [(client.id, "daily_requests", 40)]
    assert [to for to, _ in sink.messages] == ["ops@acme.test"]
    assert "40 of 50" in sink.messages[0][1]


async def test_the_quota_headers_say_what_is_left(gate: AdmissionGate) -> None:
    _, token = await token_for(gate, "acme", "limited")
    reservation = await gate.reserve(await gate.authenticate(f"Bearer {token}"), 1)
    headers = gate.headers(reservation)
    assert (headers["X-Quota-Daily-Requests-Limit"], headers["X-Quota-Daily-Requests-Remaining"]) == ("100", "99")


async def test_an_external_issuers_tenant_is_charged_under_its_issuer(tmp_path: Path) -> None:
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [{**RSAAlgorithm.to_jwk(idp_key.public_key(), as_dict=True), "kid": "idp1", "alg": "RS256"}]}
    app = web.Application()
    app.router.add_get("/jwks", lambda _: web.json_response(jwks))  # type: ignore[arg-type, return-value]
    async with local_server(app) as url:
        issuer = IssuerConfig(name="acme", issuer="https://idp.test", audience="surge", jwks_url=f"{url}/jwks",
                              tier_map={"gold": "pro"})  # fmt: skip
        config = AdmissionConfig(key_store_dsn=f"sqlite:///{tmp_path / 'k.db'}", tiers={"pro": tier()},
                                 issuers=[issuer])  # fmt: skip
        admission = AdmissionGate(config)
        try:
            now = int(time.time())
            claims = {"iss": "https://idp.test", "aud": "surge", "sub": "alice", "iat": now, "exp": now + 60,
                      "jti": "1", "tier": "gold"}  # fmt: skip
            token = jwt.encode(claims, idp_key, algorithm="RS256", headers={"kid": "idp1"})
            tenant = await admission.authenticate(f"Bearer {token}")
            assert tenant.name == "acme:alice"
            await admission.reserve(tenant, 5)
            assert (await (await admission.store()).usage("acme:alice", day_of(time.time()))).tokens == 5
        finally:
            await admission.close()
