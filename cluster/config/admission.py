"""Inert admission configuration: tiers (limits, priorities, models), the key store, the cache, shedding."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.config.identity import IssuerConfig, NotifyConfig, TokenConfig

__all__ = [
    "DEFAULT_KEY_STORE_DSN",
    "AdmissionConfig",
    "CacheConfig",
    "ShedConfig",
    "TierConfig",
    "default_tiers",
    "slos_by_priority",
]

DEFAULT_KEY_STORE_DSN = "sqlite:///.cache/surge-keys.db"
_PRIORITIES = range(1, 6)
_TIER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierConfig(_Strict):
    """What a tier of API keys may do: rate limits, daily quota, max_tokens cap, models, priorities."""

    rpm: int = Field(ge=1)
    tpm: int = Field(ge=1)
    daily_token_quota: int = Field(ge=1)
    max_tokens_cap: int = Field(ge=1)
    # Model ids or shell-style patterns; ["*"] allows every model.
    allowed_models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # Priority 1 is the highest; a request without one gets the default.
    default_priority: int = Field(ge=1, le=5)
    # The best (numerically lowest) priority a request of this tier may ask for.
    max_priority: int = Field(ge=1, le=5)
    # Call and token quotas per UTC day and calendar month (UTC); None is no such quota.
    daily_call_quota: int | None = Field(default=None, ge=1)
    monthly_call_quota: int | None = Field(default=None, ge=1)
    monthly_token_quota: int | None = Field(default=None, ge=1)
    # Where quota warnings for this tier's tenants go when the tenant has no address of its own.
    warning_webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    warning_email: str | None = None
    # The tier's time-to-first-token promise: while a pool's predicted TTFT misses it, the priorities below
    # this tier's default get a smaller share (admission.shed). None: best effort, it protects nothing.
    ttft_slo_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _max_not_worse_than_default(self) -> TierConfig:
        if self.max_priority > self.default_priority:
            raise ValueError(
                f"max_priority ({self.max_priority}) must be <= default_priority ({self.default_priority});"
                " 1 is the highest priority"
            )
        return self


class CacheConfig(_Strict):
    """The response cache for deterministic requests: in-process (L1), and in Redis (L2) when redis_url is set."""

    enabled: bool = True
    ttl_s: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    # redis://host:port/db (or rediss://): an L2 shared by every ingress replica; None is L1 only.
    redis_url: str | None = Field(default=None, pattern=r"^rediss?://")
    # Entries the L2 keeps (the oldest go first) and the largest value it stores.
    redis_max_entries: int = Field(default=100_000, ge=1)
    redis_max_value_bytes: int = Field(default=1 << 20, ge=1)
    # One Redis call's limit: past it the lookup is a miss, and a Redis that fails is left alone this long.
    redis_timeout_s: float = Field(default=0.05, gt=0)
    redis_retry_after_s: float = Field(default=5.0, ge=0)
    # Namespace of surge's keys in a shared Redis.
    redis_prefix: str = "surge:cache:"


def _default_admit_fraction() -> dict[int, float]:
    return {1: 1.0, 2: 0.9, 3: 0.75, 4: 0.6, 5: 0.5}


class ShedConfig(_Strict):
    """Priority p is admitted while its pool's queue depth < limit * admit_fraction[p], where the limit follows
    the pool's live capacity (running replicas x max_ongoing_requests) unless fixed by queue_limit. While the
    predicted TTFT misses the SLO of a tier above p (AdmissionConfig.ttft_slos), p gets a proportionally
    smaller share; priorities up to slo_protected_priority always keep theirs."""

    # A fixed limit for every pool; None follows each pool's live capacity (a pool that grows sheds later).
    queue_limit: int | None = Field(default=None, ge=1)
    # Per-pool fixed limits, by pool name (win over queue_limit and capacity).
    pool_queue_limits: dict[str, int] = Field(default_factory=dict)
    admit_fraction: dict[int, float] = Field(default_factory=_default_admit_fraction)
    # What a shed request is told to wait before retrying when no replica is on its way.
    retry_after_s: int = Field(default=1, ge=1)
    # The TTFT promise of the protected priorities (1..slo_protected_priority) when no tier states its own
    # (AdmissionConfig.ttft_slos); priorities up to slo_protected_priority are never shed for an SLO.
    ttft_slo_s: float = Field(default=2.0, gt=0)
    slo_protected_priority: int = Field(default=2, ge=1, le=5)

    def default_slos(self) -> dict[int, float]:
        """The SLO by priority when no tier states one: the protected priorities promise ttft_slo_s."""
        return {self.slo_protected_priority: self.ttft_slo_s}

    @field_validator("pool_queue_limits")
    @classmethod
    def _positive_pool_limits(cls, limits: dict[str, int]) -> dict[str, int]:
        bad = sorted(name for name, limit in limits.items() if limit < 1)
        if bad:
            raise ValueError(f"queue limits must be >= 1 (pools {', '.join(bad)})")
        return limits

    @field_validator("admit_fraction")
    @classmethod
    def _fraction_per_priority(cls, fractions: dict[int, float]) -> dict[int, float]:
        if sorted(fractions) != list(_PRIORITIES):
            raise ValueError("admit_fraction needs exactly the priorities 1..5 as keys")
        if any(not 0 < f <= 1 for f in fractions.values()):
            raise ValueError("admit_fraction values must be in (0, 1]")
        ordered = [fractions[p] for p in _PRIORITIES]
        if ordered != sorted(ordered, reverse=True):
            raise ValueError("admit_fraction must not grow as priority falls (lowest priority sheds first)")
        return fractions

    def queue_limit_for(self, pool: str | None) -> int | None:
        """The fixed queue limit of `pool`, or None when it follows the pool's live capacity."""
        return self.pool_queue_limits.get(pool, self.queue_limit) if pool else self.queue_limit


def slos_by_priority(slos: Iterable[tuple[int, float]]) -> dict[int, float]:
    """(priority, TTFT SLO) pairs as the tightest SLO of each priority, as shedding reads them."""
    tightest: dict[int, float] = {}
    for priority, slo in slos:
        tightest[priority] = min(slo, tightest.get(priority, math.inf))
    return tightest


def default_tiers() -> dict[str, TierConfig]:
    """The free / pro / enterprise tiers surge ships with."""
    return {
        "free": TierConfig(
            rpm=20, tpm=10_000, daily_token_quota=100_000, max_tokens_cap=256, daily_call_quota=500,
            allowed_models=["*"], default_priority=5, max_priority=4,
        ),
        "pro": TierConfig(
            rpm=600, tpm=200_000, daily_token_quota=5_000_000, max_tokens_cap=2048, monthly_call_quota=100_000,
            allowed_models=["*"], default_priority=3, max_priority=2, ttft_slo_s=2.0,
        ),
        "enterprise": TierConfig(
            rpm=6000, tpm=2_000_000, daily_token_quota=100_000_000, max_tokens_cap=4096,
            allowed_models=["*"], default_priority=2, max_priority=1, ttft_slo_s=1.0,
        ),
    }  # fmt: skip


class AdmissionConfig(_Strict):
    """Authentication and admission: where keys live, the tiers, the quota warning, cache and shedding."""

    enabled: bool = True
    # sqlite:///relative/path (resolved against the project root), sqlite:////absolute/path,
    # or postgresql://user:password@host:port/database.
    key_store_dsn: str = DEFAULT_KEY_STORE_DSN
    tiers: dict[str, TierConfig] = Field(default_factory=default_tiers, min_length=1)
    # Responses carry X-Quota-Warning once this fraction of the daily token quota is used.
    quota_warning_fraction: float = Field(default=0.8, gt=0, le=1)
    cache: CacheConfig = CacheConfig()
    shed: ShedConfig = ShedConfig()
    tokens: TokenConfig = TokenConfig()
    issuers: list[IssuerConfig] = Field(default_factory=list)
    notify: NotifyConfig = NotifyConfig()

    def ttft_slos(self) -> dict[int, float]:
        """Each tier's TTFT SLO by its default priority (the tightest where tiers share one); the shed config's
        protected SLO when no tier states one."""
        stated = ((t.default_priority, t.ttft_slo_s) for t in self.tiers.values() if t.ttft_slo_s is not None)
        return slos_by_priority(stated) or self.shed.default_slos()

    @model_validator(mode="after")
    def _issuer_tiers_exist(self) -> AdmissionConfig:
        for issuer in self.issuers:
            named = [*issuer.tier_map.values(), *([issuer.default_tier] if issuer.default_tier else [])]
            unknown = sorted(set(named) - set(self.tiers))
            if unknown:
                raise ValueError(f"issuer {issuer.name!r} maps to unknown tiers: {', '.join(unknown)}")
        if len({issuer.name for issuer in self.issuers}) != len(self.issuers):
            raise ValueError("issuer names must be unique")
        return self

    @field_validator("key_store_dsn")
    @classmethod
    def _known_scheme(cls, dsn: str) -> str:
        if not dsn.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("key_store_dsn must start with sqlite:///, postgresql:// or postgres://")
        return dsn

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, tiers: dict[str, TierConfig]) -> dict[str, TierConfig]:
        bad = sorted(name for name in tiers if not re.fullmatch(_TIER_NAME_PATTERN, name))
        if bad:
            raise ValueError(f"tier names must match {_TIER_NAME_PATTERN} (got {', '.join(bad)})")
        return tiers
