"""External identity providers: their JWKS fetched asynchronously and cached, their tokens verified like surge's.

A JWKS is refetched when it is older than the issuer's cache_ttl_s, or at once for an unknown kid (a key the
provider just rotated in), but never twice within min_refresh_s, and one fetch at a time: a flood of tokens
with made-up kids costs the provider at most one request per min_refresh_s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from cluster.config import ASYMMETRIC_ALGORITHMS, IssuerConfig
from deployments.admission.tokens import InvalidTokenError, decode_claims, time_decision, unverified_header

__all__ = ["ExternalIdentity", "ExternalIssuers", "FetchJwks", "JwksCache", "tier_for_claims", "unverified_issuer"]

logger = logging.getLogger("surge.issuers")
FetchJwks = Callable[[str, float], Awaitable[dict[str, Any]]]


async def _http_fetch(url: str, timeout_s: float) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise ValueError(f"{url} did not return a JWKS")
    return body


@dataclass(frozen=True)
class ExternalIdentity:
    """A caller authenticated by an external issuer: the tenant to charge and its tier."""

    issuer: IssuerConfig
    subject: str
    tier: str
    claims: dict[str, Any]

    @property
    def principal_id(self) -> str:
        return f"{self.issuer.name}:{self.subject}"


def tier_for_claims(issuer: IssuerConfig, claims: Mapping[str, Any]) -> str | None:
    """The tier the issuer's claim maps to, else its default tier (None: the caller has no tier here)."""
    value = claims.get(issuer.tier_claim)
    return issuer.tier_map.get(str(value), issuer.default_tier) if value is not None else issuer.default_tier


class JwksCache:
    """One issuer's keys by kid, refreshed on age or an unknown kid, rate-limited, one fetch at a time."""

    def __init__(
        self, issuer: IssuerConfig, fetch: FetchJwks = _http_fetch, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._issuer = issuer
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> dict[str, Any] | None:
        """The JWK with `kid`, refetching the JWKS first when it is stale or lacks that kid (if allowed)."""
        if kid in self._keys and not self._stale():
            return self._keys[kid]
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if (kid not in self._keys or self._stale()) and self._may_fetch():
                await self._refresh()
        return self._keys.get(kid)

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._issuer.cache_ttl_s

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._issuer.min_refresh_s

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            body = await self._fetch(self._issuer.jwks_url, self._issuer.fetch_timeout_s)
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the keys we have: a provider's outage must not log out every tenant at once.
            logger.warning("JWKS fetch from %s failed: %r", self._issuer.jwks_url, exc)
            return
        keys = [k for k in body["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)]
        self._keys = {k["kid"]: k for k in keys}
        self._fetched_at = self._clock()


class ExternalIssuers:
    """Every configured external issuer, chosen by the token's `iss`."""

    def __init__(
        self, issuers: list[IssuerConfig], leeway_s: float, fetch: FetchJwks = _http_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        # `clock` paces the JWKS refreshes (monotonic); token times are checked against `now` in verify.
        self._caches = {issuer.issuer: JwksCache(issuer, fetch, clock) for issuer in issuers}
        self._leeway_s = leeway_s

    def trusts(self, issuer: object) -> bool:
        return isinstance(issuer, str) and issuer in self._issuers

    def cache(self, issuer: str) -> JwksCache:
        return self._caches[issuer]

    async def verify(self, token: str, *, now: float) -> ExternalIdentity:
        """The identity in a token of a trusted issuer, or InvalidTokenError."""
        header = unverified_header(token)
        issuer = self._issuers.get(unverified_issuer(token))
        if issuer is None:
            raise InvalidTokenError("the token's issuer is not trusted")
        alg = header.get("alg")
        if alg not in issuer.algorithms or alg not in ASYMMETRIC_ALGORITHMS:
            raise InvalidTokenError(f"the token's algorithm {alg!r} is not allowed for its issuer")
        jwk = await self._caches[issuer.issuer].key(str(header.get("kid")))
        if jwk is None:
            raise InvalidTokenError("the token's key id (kid) is not in its issuer's JWKS")
        if jwk.get("alg") not in (None, alg):
            raise InvalidTokenError(f"the token's algorithm {alg!r} does not match its key")
        try:
            key = jwt.PyJWK(jwk, algorithm=str(alg)).key  # refuses a key of another type than alg's
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"the token's algorithm {alg!r} does not match its key") from exc
        claims = decode_claims(token, key, str(alg), issuer.audience, issuer.issuer)
        ok, reason = time_decision(claims, now=now, leeway_s=self._leeway_s)
        if not ok:
            raise InvalidTokenError(reason)
        return _identity(issuer, claims)


def _identity(issuer: IssuerConfig, claims: dict[str, Any]) -> ExternalIdentity:
    subject = claims.get(issuer.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError(f"the token lacks the {issuer.subject_claim!r} claim that names its tenant")
    tier = tier_for_claims(issuer, claims)
    if tier is None:
        raise InvalidTokenError(f"the token's {issuer.tier_claim!r} claim maps to no tier on this server")
    return ExternalIdentity(issuer, subject, tier, claims)


def unverified_issuer(token: str) -> str:
    """The `iss` claim before verification: which issuer's keys to verify with."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidTokenError("the bearer token is not a well-formed JWT") from exc
    return str(claims.get("iss"))

