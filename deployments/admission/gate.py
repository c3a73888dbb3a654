"""The admission path of one ingress replica: who is calling, may they, how urgently, and can we afford it.

The rules are the pure functions in decisions.py; this module holds the state they need (the SQL store, a
short-lived key cache, the response cache) and turns their decisions into the one error contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from cluster.config import AdmissionConfig, TierConfig
from deployments.admission.cache import ResponseCache, cache_key
from deployments.admission.capacity import PoolCapacity
from deployments.admission.decisions import (
    Rejection,
    Reservation,
    cap_max_tokens,
    check_model_allowed,
    clamp_priority,
    shed_decision,
)
from deployments.admission.identity import Identity, Principal
from deployments.admission.notify import Destination, Notifier
from deployments.admission.outage import key_store_outage
from deployments.admission.shared_cache import RedisCache, TieredCache
from deployments.admission.store import ApiKey, KeyStore, RevokedKeyError, hash_key, open_store
from deployments.admission.tokens import looks_like_jwt
from deployments.engines.base import ChatPrompt, Prompt, SamplingSpec, TextPrompt
from deployments.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized

__all__ = ["ANONYMOUS", "AdmissionGate", "Tenant", "prompt_token_bound"]

# How long a key's row is cached per replica. A revocation still takes effect at the key's next request: the
# quota reservation every generation makes reads the row in its transaction (store.RevokedKeyError).
# Routes that reserve nothing (/v1/models, /v1/files, /v1/batches) may see a revoked key for this long.
_KEY_CACHE_S = 5.0
# A settlement that meets a store outage waits and tries again (about a minute in all), so a store restart does
# not lose the tokens a request refunds or owes. It runs in the background: nobody waits on it.
SETTLE_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
logger = logging.getLogger("surge.admission")
# Chat templates add a few tokens per message (role headers, end-of-turn).
_TEMPLATE_TOKENS_PER_MESSAGE = 16
# How long closing waits for quota warnings still being delivered.
_NOTIFY_DRAIN_S = 5.0


def _destination(
    tenant: str, tier_name: str, tier: TierConfig, webhook_url: str | None, email: str | None
) -> Destination | None:
    """The tenant's own addresses, else its tier's; None when there is nowhere to send a warning."""
    webhook_url, email = webhook_url or tier.warning_webhook_url, email or tier.warning_email
    return Destination(tenant, tier_name, webhook_url, email) if webhook_url or email else None


@dataclass(frozen=True)
class Tenant:
    """The caller as admission sees it; `key` is None when admission is off."""

    name: str
    tier: TierConfig | None
    key: ApiKey | None = None
    # Where its quota warnings go; None when nobody is to be told.
    notify: Destination | None = None


ANONYMOUS = Tenant("anonymous", None)


def prompt_token_bound(prompt: Prompt) -> int:
    """An upper bound on the prompt's token count without tokenizing: a byte-level BPE token is at least one
    byte, so reserving this never under-reserves and the quota is never overspent."""
    if isinstance(prompt, ChatPrompt):
        text_bytes = sum(len(str(m["content"]).encode()) for m in prompt.messages)
        return text_bytes + _TEMPLATE_TOKENS_PER_MESSAGE * (len(prompt.messages) + 1)
    if isinstance(prompt, TextPrompt):
        return len(prompt.text.encode()) + 1
    return len(prompt.token_ids)


class AdmissionGate:
    """Authentication, tier rules, shedding, rate limits and quotas, and the response cache."""

    def __init__(self, config: AdmissionConfig) -> None:
        self._config = config
        self._slos = config.ttft_slos()  # the tiers' TTFT SLOs by priority, for shedding
        self._store: KeyStore | None = None
        self._store_lock = asyncio.Lock()
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}
        self.cache: ResponseCache[Any] = ResponseCache(config.cache.ttl_s, config.cache.max_entries)
        # `cache` is L1; `responses` puts the Redis L2 behind it when cache.redis_url is set.
        self.responses = TieredCache(self.cache, RedisCache(config.cache) if config.cache.redis_url else None)
        self.identity = Identity(config, self.store)
        self.notifier = Notifier(config.notify)

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    async def store(self) -> KeyStore:
        async with self._store_lock:
            if self._store is None:
                with key_store_outage():
                    self._store = await open_store(self._config.key_store_dsn)
            return self._store

    async def authenticate(self, authorization: str | None) -> Tenant:
        """401 for a missing, unknown or revoked key; keys are compared by hash and never logged."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        if looks_like_jwt(token.strip()):
            return self._principal_tenant(await self.identity.principal(token.strip()))
        key = await self._lookup(token.strip())
        if key is None:
            raise Unauthorized("Incorrect or revoked API key provided.")
        tier = self._config.tiers.get(key.tier)
        if tier is None:
            raise Forbidden(f"The key's tier {key.tier!r} is not configured on this server.", code="unknown_tier")
        return Tenant(key.id, tier, key, _destination(key.id, key.tier, tier, None, None))

    def _principal_tenant(self, principal: Principal) -> Tenant:
        tier = self._config.tiers.get(principal.tier)
        if tier is None:
            message = f"The token's tier {principal.tier!r} is not configured on this server."
            raise Forbidden(message, code="unknown_tier")
        key = ApiKey(principal.id, principal.name, principal.tier, "principal", 0.0)
        notify = _destination(principal.id, principal.tier, tier, principal.webhook_url, principal.email)
        return Tenant(principal.id, tier, key, notify)

    async def _lookup(self, plaintext: str) -> ApiKey | None:
        digest = hash_key(plaintext)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        store = await self.store()
        with key_store_outage():
            key = await store.lookup(plaintext)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (now + _KEY_CACHE_S, key)
        return key

    def _forget_key(self, key_id: str) -> None:
        """Drop a revoked key from this replica's cache, so its other routes refuse it at once too."""
        for digest in [d for d, (_, key) in self._keys.items() if key is not None and key.id == key_id]:
            del self._keys[digest]

    def check_model(self, tenant: Tenant, model: str) -> None:
        if tenant.tier is not None and not check_model_allowed(model, tenant.tier):
            raise Forbidden(f"Your tier may not use the model '{model}'.", param="model")

    def priority(self, tenant: Tenant, requested: int | None) -> int:
        if tenant.tier is None:
            return requested or 3
        return clamp_priority(requested, tenant.tier).priority

    def max_tokens(self, tenant: Tenant, requested: int | None) -> int | None:
        return requested if tenant.tier is None else cap_max_tokens(requested, tenant.tier, None)

    def shed(self, priority: int, pool: str, queue_depth: int, capacity: PoolCapacity | None = None) -> None:
        """503 before any engine work when the pool is too busy for this priority; the lowest go first."""
        if not self.enabled:
            return
        decision = shed_decision(priority, queue_depth, self._config.shed, pool=pool, capacity=capacity,
                                 slos=self._slos)  # fmt: skip
        if not decision.admit:
            headers = {"Retry-After": str(decision.retry_after_s)}
            raise ServiceUnavailable(decision.reason, code="overloaded", headers=headers)

    async def reserve(self, tenant: Tenant, tokens: int) -> Reservation | None:
        """Charge one request and `tokens` against every limit, or raise 429 saying which limit."""
        if tenant.key is None or tenant.tier is None:
            return None
        store = await self.store()
        fraction = self._config.quota_warning_fraction if tenant.notify is not None else None
        try:
            with key_store_outage():
                result = await store.reserve(
                    tenant.key.id, now=time.time(), requests=1, tokens=tokens, tier=tenant.tier,
                    warning_fraction=fraction,
                )
        except RevokedKeyError:
            self._forget_key(tenant.key.id)
            raise Unauthorized("Incorrect or revoked API key provided.") from None
        if isinstance(result, Rejection):
            code = "rate_limit_exceeded" if result.limit in ("requests", "tokens") else "insufficient_quota"
            raise RateLimited(result.reason, code=code, headers=result.headers(self._config.quota_warning_fraction))
        for quota in result.warnings:  # claimed by this request alone; delivered in the background
            assert tenant.notify is not None
            self.notifier.warn(tenant.notify, quota, self._config.quota_warning_fraction)
        return result

    async def settle(self, reservation: Reservation | None, actual_tokens: int) -> None:
        """Charge the tokens actually used instead of the reserved ones, retrying through a store outage."""
        if reservation is None:
            return
        for wait_s in (*SETTLE_RETRY_S, None):
            try:
                with key_store_outage():
                    await (await self.store()).settle(reservation, actual_tokens)
                return
            except ServiceUnavailable:
                if wait_s is None:
                    logger.error("key %s: %d tokens left unsettled after the store stayed unavailable",
                                 reservation.key_id, actual_tokens - reservation.tokens)  # fmt: skip
                    return
                await asyncio.sleep(wait_s)

    def headers(self, reservation: Reservation | None) -> dict[str, str]:
        return {} if reservation is None else reservation.headers(self._config.quota_warning_fraction)

    def cache_key(self, tenant: Tenant, model_version: str, prompt: Prompt, sampling: SamplingSpec) -> str | None:
        if not self._config.cache.enabled:
            return None
        params = asdict(sampling)
        material: str | list[Any]
        if isinstance(prompt, ChatPrompt):
            material = prompt.messages
        elif isinstance(prompt, TextPrompt):
            material = prompt.text
        else:
            material = prompt.token_ids
        return cache_key(tenant.name, model_version, material, params)

    async def close(self) -> None:
        await self.responses.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.notifier.drain(), _NOTIFY_DRAIN_S)
        if self._store is not None:
            await self._store.close()
