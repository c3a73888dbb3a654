"""Inert identity configuration: surge's own OAuth tokens, trusted external issuers, quota-warning notifiers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "IssuerConfig",
    "NotifyConfig",
    "SmtpConfig",
    "TokenConfig",
]

# Only asymmetric JWS algorithms: a shared-secret (HS*) or unsigned ("none") token is never accepted, so a
# public key can never be misused as an HMAC secret (HS/RS confusion).
ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
Algorithm = Literal["EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenConfig(_Strict):
    """Access tokens surge issues at POST /oauth/token (RFC 6749 client credentials) and verifies itself."""

    issuer: str = "surge"
    audience: str = "surge-api"
    ttl_s: int = Field(default=86_400, ge=60)
    # Tolerated clock difference for exp / nbf / iat between surge's replicas and the token's issuer.
    leeway_s: int = Field(default=30, ge=0, le=300)
    scopes: list[str] = Field(default_factory=lambda: ["inference"], min_length=1)
    # PEM private keys (Ed25519 -> EdDSA, P-256 -> ES256), relative to the project root or absolute. The
    # first signs; the others only verify (and stay in the JWKS) until the tokens they signed have expired.
    signing_key_files: list[str] = Field(default_factory=list)
    # An environment variable holding a PEM private key (a mounted secret); when set it signs, first.
    signing_key_env: str = "SURGE_TOKEN_SIGNING_KEY"
    # Development only (`make run`): without any configured key, generate one here and log a loud warning.
    # Unset in production, where a missing key means surge issues no tokens rather than signing with a
    # key no other replica shares.
    dev_key_file: str | None = None


class IssuerConfig(_Strict):
    """An external identity provider whose access tokens surge trusts."""

    # Short name: external tenants are stored as "<name>:<subject>".
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_url: str = Field(pattern=r"^https?://")
    algorithms: list[Algorithm] = Field(default_factory=lambda: list[Algorithm](("RS256", "ES256")), min_length=1)
    # The claim naming the tenant whose limits and quotas are charged.
    subject_claim: str = "sub"
    # The claim whose value picks the tier through tier_map; a missing or unmapped value gets default_tier.
    tier_claim: str = "tier"
    tier_map: dict[str, str] = Field(default_factory=dict)
    default_tier: str | None = None
    # A cached JWKS is refetched after this long, and at once for an unknown kid, but never more often
    # than min_refresh_s: a flood of tokens with made-up kids cannot become a flood of JWKS requests.
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    min_refresh_s: float = Field(default=30.0, ge=0)
    fetch_timeout_s: float = Field(default=5.0, gt=0)


class SmtpConfig(_Strict):
    """E-mail as a second quota-warning notifier."""

    host: str
    port: int = Field(default=25, ge=1, le=65535)
    sender: str
    starttls: bool = False
    username: str | None = None
    # The environment variable holding the SMTP password (never the password in the config).
    password_env: str = "SURGE_SMTP_PASSWORD"
    timeout_s: float = Field(default=10.0, gt=0)


class NotifyConfig(_Strict):
    """Where quota warnings go and how their webhooks are signed and retried."""

    # HMAC-SHA256 secret for webhook signatures, from an environment variable or a file.
    webhook_secret_env: str = "SURGE_WEBHOOK_SECRET"
    webhook_secret_file: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    attempts: int = Field(default=5, ge=1, le=20)
    # First retry delay; each further retry waits twice as long.
    backoff_s: float = Field(default=1.0, gt=0)
    smtp: SmtpConfig | None = None

    @field_validator("webhook_secret_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if not name:
            raise ValueError("webhook_secret_env must name an environment variable")
        return name

    @model_validator(mode="after")
    def _retries_fit(self) -> NotifyConfig:
        if self.backoff_s * (2 ** (self.attempts - 1)) > 3600:
            raise ValueError("attempts and backoff_s would retry for more than an hour")
        return self
