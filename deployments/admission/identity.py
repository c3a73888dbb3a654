"""Who a bearer token belongs to, and the token endpoint: surge's own JWTs, external issuers' JWTs, OAuth clients.

An API key is looked up by the gate; anything shaped like a JWT comes here. Every failure is a 401 in the one
error contract (deployments/errors.py), saying what was wrong with the token but never echoing it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cluster.config import AdmissionConfig
from deployments.admission.clients import Client, ensure_principal, find_client, verify_client
from deployments.admission.issuers import ExternalIssuers, FetchJwks, unverified_issuer
from deployments.admission.oauth import (
    OAuthError,
    TokenReply,
    granted_scope,
    invalid_client,
    parse_token_request,
    token_reply,
)
from deployments.admission.outage import STORE_RETRY_AFTER_S, key_store_outage
from deployments.admission.store import KeyStore
from deployments.admission.tokens import InvalidTokenError, TokenKeys
from deployments.errors import ServiceUnavailable, Unauthorized

__all__ = ["Identity", "Principal"]

# Ids of external tenants known to have a principal row; bounded, it only saves a write per request.
_MAX_KNOWN_PRINCIPALS = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The tenant a token is charged to: its stored id, tier and where its quota warnings go."""

    id: str
    name: str
    tier: str
    webhook_url: str | None = None
    email: str | None = None


class Identity:
    """surge's signing keys, the trusted external issuers, and the OAuth clients in the store."""

    def __init__(
        self, config: AdmissionConfig, store: Callable[[], Awaitable[KeyStore]], *,
        keys: TokenKeys | None = None, fetch_jwks: FetchJwks | None = None, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._config = config
        self._store = store
        self._keys = keys if keys is not None else TokenKeys.load(config.tokens) if config.enabled else None
        leeway_s = config.tokens.leeway_s
        self.issuers = (
            ExternalIssuers(config.issuers, leeway_s, fetch_jwks)
            if fetch_jwks is not None else ExternalIssuers(config.issuers, leeway_s)
        )  # fmt: skip
        self._clock = clock
        self._known_principals: set[str] = set()

    @property
    def issues_tokens(self) -> bool:
        return self._keys is not None

    def jwks(self) -> dict[str, Any]:
        """The public keys that verify surge's tokens (every configured key, the retiring ones included)."""
        return self._keys.jwks() if self._keys is not None else {"keys": []}

    async def principal(self, token: str) -> Principal:
        """The tenant of a valid access token; 401 for anything else."""
        try:
            return await self._verify(token)
        except InvalidTokenError as exc:
            raise Unauthorized(f"Invalid access token: {exc}.", code="invalid_token") from exc

    async def _verify(self, token: str) -> Principal:
        now = self._clock()
        issuer = unverified_issuer(token)
        if issuer != self._config.tokens.issuer and self.issuers.trusts(issuer):
            external = await self.issuers.verify(token, now=now)
            if external.principal_id not in self._known_principals:
                with key_store_outage():
                    await ensure_principal(await self._store(), external.principal_id, external.tier)
                if len(self._known_principals) > _MAX_KNOWN_PRINCIPALS:
                    self._known_principals.clear()
                self._known_principals.add(external.principal_id)
            return Principal(external.principal_id, external.principal_id, external.tier)
        if self._keys is None:
            raise InvalidTokenError("this server issues no access tokens")
        claims = self._keys.verify(token, now=now)
        # Looked up on every request, so a revoked client's tokens stop at its next request.
        with key_store_outage():
            client = await find_client(await self._store(), str(claims["sub"]))
        if client is None:
            raise InvalidTokenError("its client is unknown or revoked")
        tier = claims.get("tier")
        return Principal(client.id, client.name, tier if isinstance(tier, str) else client.tier,
                         client.webhook_url, client.email)  # fmt: skip

    async def issue(self, content_type: str | None, authorization: str | None, body: bytes) -> TokenReply:
        """Answer a POST /oauth/token request."""
        try:
            request = parse_token_request(content_type, authorization, body)
            if self._keys is None:
                raise OAuthError("temporarily_unavailable", "this server has no token signing key configured", 503)
            client = await self._verify_client(request.client_id, request.client_secret)
            if client is None:
                raise invalid_client("unknown client, revoked client or wrong client secret")
            if client.tier not in self._config.tiers:
                raise OAuthError("unauthorized_client", f"the client's tier {client.tier!r} is not configured")
            scope = granted_scope(request.scope, self._config.tokens.scopes)
        except OAuthError as exc:
            return exc.reply()
        token, expires_in_s = self._keys.issue(subject=client.id, tier=client.tier, scope=scope, now=self._clock())
        return token_reply(token, expires_in_s, scope)

    async def _verify_client(self, client_id: str, secret: str) -> Client | None:
        """The authenticated client; a store outage is RFC 6749's temporarily_unavailable, not a 500."""
        try:
            with key_store_outage():
                return await verify_client(await self._store(), client_id, secret)
        except ServiceUnavailable as exc:
            raise OAuthError("temporarily_unavailable", exc.message, 503, retry_after_s=STORE_RETRY_AFTER_S) from None
