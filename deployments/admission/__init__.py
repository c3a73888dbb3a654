"""Admission: API keys and tiers, rate limits and quotas, priority, shedding, the response cache."""

from cluster.config import AdmissionConfig, CacheConfig, ShedConfig, TierConfig
from deployments.admission.cache import ResponseCache, cache_key, is_deterministic
from deployments.admission.decisions import (
    LimitSnapshot,
    PriorityDecision,
    Rejection,
    Reservation,
    ShedDecision,
    cap_max_tokens,
    check_model_allowed,
    clamp_priority,
    rate_limit_headers,
    shed_decision,
)
from deployments.admission.store import (
    ApiKey,
    KeyNameTakenError,
    KeyStore,
    RevokedKeyError,
    UnknownKeyError,
    Usage,
    open_store,
)

__all__ = [
    "AdmissionConfig",
    "ApiKey",
    "CacheConfig",
    "KeyNameTakenError",
    "KeyStore",
    "LimitSnapshot",
    "PriorityDecision",
    "Rejection",
    "Reservation",
    "ResponseCache",
    "RevokedKeyError",
    "ShedConfig",
    "ShedDecision",
    "TierConfig",
    "UnknownKeyError",
    "Usage",
    "cache_key",
    "cap_max_tokens",
    "check_model_allowed",
    "clamp_priority",
    "is_deterministic",
    "open_store",
    "rate_limit_headers",
    "shed_decision",
]
