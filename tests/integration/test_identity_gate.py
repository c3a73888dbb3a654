"""The admission gate with OAuth tokens: issue, authenticate, revoke, charge quotas, warn once (no Ray)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from cluster.config import AdmissionConfig, IssuerConfig, NotifyConfig, TierConfig, TokenConfig
from deployments.admission.clients import create_client, revoke_client
from deployments.admission.decisions import day_of
from deployments.admission.gate import AdmissionGate
from deployments.admission.notify import verify_signature
from deployments.errors import RateLimited, Unauthorized
from tests.local_http import local_server

SECRET = "whsec-gate-test"
FORM = "application/x-www-form-urlencoded"


def tier(**fields: Any) -> TierConfig:
    return TierConfig(rpm=100_000, tpm=100_000_000, daily_token_quota=100_000_000, max_tokens_cap=64,
                      default_priority=3, max_priority=1, **fields)  # fmt: skip


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


@pytest.fixture
async def gate(tmp_path: Path, hooks: Hooks, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AdmissionGate]:
    monkeypatch.setenv("SURGE_WEBHOOK_SECRET", SECRET)
    key = tmp_path / "signing.pem"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    tiers = {"pro": tier(), "limited": tier(daily_call_quota=100, warning_webhook_url=hooks.url)}
    config = AdmissionConfig(
        key_store_dsn=f"sqlite:///{tmp_path / 'keys.db'}", tiers=tiers,
        tokens=TokenConfig(signing_key_files=[str(key)]), notify=NotifyConfig(backoff_s=0.05),
    )  # fmt: skip
    admission = AdmissionGate(config)
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
