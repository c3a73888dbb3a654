"""External issuers: tokens of a trusted identity provider, verified against its JWKS served by a local server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from cluster.config import AdmissionConfig, IssuerConfig
from deployments.admission.issuers import ExternalIssuers
from deployments.admission.tokens import InvalidTokenError
from tests.local_http import local_server

ISSUER = "https://idp.example.test"
AUDIENCE = "surge-enterprise"


@dataclass
class Provider:
    """A local identity provider: RSA keys, a JWKS endpoint that counts its requests."""

    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    requests: int = 0
    down: bool = False
    with_alg: bool = True

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        alg = {"alg": "RS256"} if self.with_alg else {}
        return {"keys": [{**RSAAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid, **alg}
                         for kid, k in self.keys.items()]}  # fmt: skip

    def token(self, kid: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@acme", "iat": now, "exp": now + 300, "jti": "j1",
                "plan": "gold", **claims}  # fmt: skip
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    idp = Provider()
    idp.add_key("k1")

    async def jwks(_: web.Request) -> web.Response:
        idp.requests += 1
        if idp.down:
            return web.Response(status=503)
        return web.json_response(idp.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    async with local_server(app) as url:
        idp.url = f"{url}/jwks.json"
        yield idp


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issuers(provider: Provider, clock: FakeClock | None = None, **overrides: Any) -> ExternalIssuers:
    config = IssuerConfig.model_validate({
        "name": "acme", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": provider.url, "algorithms": ["RS256"],
        "tier_claim": "plan", "tier_map": {"gold": "enterprise", "silver": "pro"}, **overrides,
    })  # fmt: skip
    return ExternalIssuers([config], leeway_s=30, clock=clock or time.monotonic)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_trusted_issuers_token_names_its_tenant_and_mapped_tier(provider: Provider) -> None:
    identity = await issuers(provider).verify(provider.token("k1"), now=time.time())
    assert (identity.principal_id, identity.tier) == ("acme:alice@acme", "enterprise")


async def test_an_unmapped_tier_claim_gets_the_default_tier(provider: Provider) -> None:
    identity = await issuers(provider, default_tier="free").verify(provider.token("k1", plan="tin"), now=time.time())
    assert identity.tier == "free"


async def test_an_unmapped_tier_claim_without_default_is_refused(provider: Provider) -> None:
    with pytest.raises(InvalidTokenError, match="maps to no tier"):
        await issuers(provider).verify(provider.token("k1", plan="tin"), now=time.time())


async def test_the_jwks_is_fetched_once_and_cached(provider: Provider) -> None:
    trusted = issuers(provider)
    for _ in range(5):
        await trusted.verify(provider.token("k1"), now=time.time())
    assert provider.requests == 1


async def test_a_key_rotated_in_is_picked_up_by_refetching_on_its_unknown_kid(provider: Provider) -> None:
    trusted = issuers(provider, min_refresh_s=0)
    await trusted.verify(provider.token("k1"), now=time.time())
    provider.add_key("k2")
    identity = await trusted.verify(provider.token("k2"), now=time.time())
    assert identity.subject == "alice@acme" and provider.requests == 2


async def test_a_flood_of_unknown_kids_makes_at_most_one_jwks_request(provider: Provider) -> None:
    trusted = issuers(provider, min_refresh_s=3600)
    await trusted.verify(provider.token("k1"), now=time.time())
    provider.add_key("k2")
    forged = [provider.token("k2", jti=str(i)) for i in range(50)]
    results = await asyncio.gather(*(trusted.verify(t, now=time.time()) for t in forged), return_exceptions=True)
    assert all(isinstance(r, InvalidTokenError) for r in results)
    assert provider.requests == 1  # the refresh interval has not passed since the first fetch


async def test_concurrent_first_requests_share_one_fetch(provider: Provider) -> None:
    trusted = issuers(provider)
    await asyncio.gather(*(trusted.verify(provider.token("k1"), now=time.time()) for _ in range(20)))
    assert provider.requests == 1


async def test_an_unreachable_jwks_keeps_the_cached_keys(provider: Provider) -> None:
    trusted = issuers(provider, cache_ttl_s=0.001, min_refresh_s=0)
    await trusted.verify(provider.token("k1"), now=time.time())
    provider.down = True
    await asyncio.sleep(0.01)
    identity = await trusted.verify(provider.token("k1"), now=time.time())
    assert identity.subject == "alice@acme" and provider.requests == 2


async def test_a_token_for_another_audience_is_refused(provider: Provider) -> None:
    with pytest.raises(InvalidTokenError, match="audience"):
        await issuers(provider).verify(provider.token("k1", aud="someone-else"), now=time.time())


async def test_an_expired_token_is_refused(provider: Provider) -> None:
    token = provider.token("k1", iat=int(time.time()) - 1000, exp=int(time.time()) - 100)
    with pytest.raises(InvalidTokenError, match="expired"):
        await issuers(provider).verify(token, now=time.time())


async def test_hmac_signed_with_the_providers_public_key_is_refused(provider: Provider) -> None:
    public_pem = provider.keys["k1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = provider.token("k1").split(".")[1]
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidTokenError, match="algorithm 'HS256'"):
        await issuers(provider).verify(f"{header}.{payload}.{signature}", now=time.time())


async def test_an_algorithm_the_issuer_does_not_use_is_refused(provider: Provider) -> None:
    token = provider.token("k1")
    ps256 = jwt.encode(jwt.decode(token, options={"verify_signature": False}), provider.keys["k1"],
                       algorithm="PS256", headers={"kid": "k1"})  # fmt: skip
    with pytest.raises(InvalidTokenError, match="algorithm 'PS256'"):
        await issuers(provider).verify(ps256, now=time.time())


async def test_a_token_of_an_untrusted_issuer_is_refused(provider: Provider) -> None:
    with pytest.raises(InvalidTokenError, match="issuer is not trusted"):
        await issuers(provider).verify(provider.token("k1", iss="https://other.example"), now=time.time())


async def test_an_unsigned_alg_none_token_is_refused(provider: Provider) -> None:
    header = b64(json.dumps({"alg": "none", "kid": "k1", "typ": "JWT"}).encode())
    payload = provider.token("k1").split(".")[1]
    with pytest.raises(InvalidTokenError, match="algorithm 'none'"):
        await issuers(provider).verify(f"{header}.{payload}.", now=time.time())


@pytest.mark.parametrize("jwk_has_alg", [True, False])
async def test_an_allowed_algorithm_of_another_key_type_than_its_kids_is_refused(
    provider: Provider, jwk_has_alg: bool
) -> None:
    """ES256 is allowed for the issuer, but k1 is an RSA key: the token must not be checked against it as EC."""
    provider.with_alg = jwk_has_alg
    claims = jwt.decode(provider.token("k1"), options={"verify_signature": False})
    token = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k1"})
    with pytest.raises(InvalidTokenError, match="algorithm 'ES256' does not match its key"):
        await issuers(provider, algorithms=["RS256", "ES256"]).verify(token, now=time.time())


@pytest.mark.parametrize(("after_exp_s", "valid"), [(29, True), (30, False)])
async def test_an_issuers_token_expires_with_exactly_the_leeway(
    provider: Provider, after_exp_s: int, valid: bool
) -> None:
    now = int(time.time())
    token = provider.token("k1", iat=now - 300, exp=now)
    if valid:
        await issuers(provider).verify(token, now=now + after_exp_s)
    else:
        with pytest.raises(InvalidTokenError, match="expired"):
            await issuers(provider).verify(token, now=now + after_exp_s)


@pytest.mark.parametrize(("nbf_ahead_s", "valid"), [(30, True), (31, False)])
async def test_an_issuers_clock_ahead_of_ours_is_tolerated_within_the_leeway(
    provider: Provider, nbf_ahead_s: int, valid: bool
) -> None:
    now = int(time.time())
    token = provider.token("k1", iat=now + nbf_ahead_s, nbf=now + nbf_ahead_s, exp=now + 600)
    if valid:
        await issuers(provider).verify(token, now=now)
    else:
        with pytest.raises(InvalidTokenError, match="not valid yet"):
            await issuers(provider).verify(token, now=now)


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_refresh_interval(provider: Provider) -> None:
    clock = FakeClock()
    trusted = issuers(provider, clock, min_refresh_s=30)
    await trusted.verify(provider.token("k1"), now=time.time())
    provider.add_key("k2")
    clock.now += 29  # the provider rotated in k2, but the last fetch is too recent to refetch
    early = await asyncio.gather(*(trusted.verify(provider.token("k2"), now=time.time()) for _ in range(20)),
                                 return_exceptions=True)  # fmt: skip
    assert all(isinstance(r, InvalidTokenError) for r in early) and provider.requests == 1
    clock.now += 1
    late = await asyncio.gather(*(trusted.verify(provider.token("k2"), now=time.time()) for _ in range(20)))
    assert {r.subject for r in late} == {"alice@acme"} and provider.requests == 2
    clock.now += 1
    claims = jwt.decode(provider.token("k1"), options={"verify_signature": False})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    made_up = [jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": f"made-up-{i}"}) for i in range(20)]
    flood = await asyncio.gather(*(trusted.verify(t, now=time.time()) for t in made_up), return_exceptions=True)
    assert all(isinstance(r, InvalidTokenError) for r in flood) and provider.requests == 2


def test_the_readmes_issuer_example_is_a_valid_config() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```yaml\nadmission:\n  issuers:") + len("```yaml\n")
    admission = AdmissionConfig.model_validate(yaml.safe_load(readme[start : readme.index("```", start)])["admission"])
    (issuer,) = admission.issuers
    assert set(issuer.tier_map.values()) <= set(admission.tiers)
