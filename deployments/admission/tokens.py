"""surge's own access tokens: JWTs signed with an asymmetric key (Ed25519 -> EdDSA, P-256 -> ES256), verified
by every ingress replica, published as a JWKS.

JOSE is PyJWT with `cryptography` (maintained, the most used Python JOSE library, and already a dependency of
Ray's stack); nothing here parses or signs a JWT by hand. Signature, algorithm, issuer and audience are PyJWT's
checks; the time claims are checked by `time_decision` so the clock is a parameter and the edges are testable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from cluster.config import PROJECT_ROOT, TokenConfig

__all__ = [
    "InvalidTokenError",
    "SigningKey",
    "TokenKeys",
    "decode_claims",
    "load_signing_key",
    "looks_like_jwt",
    "time_decision",
    "unverified_header",
]

logger = logging.getLogger("surge.tokens")
_REQUIRED_CLAIMS = ["iss", "sub", "aud", "iat", "exp", "jti"]
_NO_TIME_CHECKS = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


class InvalidTokenError(ValueError):
    """A bearer token that is not a valid access token; the message is safe to show the caller."""


PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """One signing key pair; `kid` is its RFC 7638 thumbprint, so a rotated key gets a new kid by itself."""

    kid: str
    algorithm: str
    private: PrivateKey

    @property
    def public(self) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with kid, alg and use."""
        return {**_public_jwk(self.private), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def _public_jwk(private: PrivateKey) -> dict[str, Any]:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return dict(OKPAlgorithm.to_jwk(private.public_key(), as_dict=True))
    return dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def load_signing_key(pem: bytes) -> SigningKey:
    """A signing key from a PEM private key: Ed25519 (EdDSA) or EC P-256 (ES256)."""
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
    elif isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        algorithm = "ES256"
    else:
        raise ValueError("a token signing key must be an Ed25519 or EC P-256 private key (PEM)")
    return SigningKey(_thumbprint(_public_jwk(private)), algorithm, private)


def _dev_key(path: Path) -> bytes:
    """The development key at `path`, generated (once, shared by every local replica) when absent."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica generated it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return pem


def time_decision(claims: Mapping[str, Any], *, now: float, leeway_s: float) -> tuple[bool, str]:
    """Whether exp, nbf and iat admit the token at `now`, allowing `leeway_s` of clock difference."""
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    numbers = [value for value in (exp, nbf, iat) if value is not None]
    if exp is None or any(not isinstance(v, int | float) or isinstance(v, bool) for v in numbers):
        return False, "the token's exp, nbf and iat must be numbers, and exp is required"
    if now >= float(exp) + leeway_s:
        return False, "the token has expired"
    if nbf is not None and now + leeway_s < float(nbf):
        return False, "the token is not valid yet"
    if iat is not None and now + leeway_s < float(iat):
        return False, "the token was issued in the future"
    return True, "valid at this time"


def looks_like_jwt(token: str) -> bool:
    """A compact JWS has three dot-separated parts; an API key has none."""
    return token.count(".") == 2


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, before anything is trusted (to pick the key and check the algorithm)."""
    try:
        return dict(jwt.get_unverified_header(token))
    except jwt.PyJWTError as exc:
        raise InvalidTokenError("the bearer token is not a well-formed JWT") from exc


class TokenKeys:
    """surge's signing keys: the first signs, every one verifies and is published, until it is removed."""

    def __init__(self, keys: list[SigningKey], config: TokenConfig) -> None:
        if not keys:
            raise ValueError("TokenKeys needs at least one key")
        self._keys = keys
        self._by_kid = {key.kid: key for key in keys}
        self._config = config

    @classmethod
    def load(cls, config: TokenConfig, *, root: Path = PROJECT_ROOT) -> TokenKeys | None:
        """The configured keys (the secret's first, then the files); None, and no tokens, when there are none."""
        pems = [os.environ[config.signing_key_env].encode()] if os.environ.get(config.signing_key_env) else []
        pems += [_resolve(root, name).read_bytes() for name in config.signing_key_files]
        if not pems and config.dev_key_file:
            path = _resolve(root, config.dev_key_file)
            logger.warning(
                "DEVELOPMENT TOKEN SIGNING KEY in use (%s): generated for local runs only; configure "
                "admission.tokens.signing_key_files or $%s in any other deployment",
                path, config.signing_key_env,
            )  # fmt: skip
            pems = [_dev_key(path)]
        return cls([load_signing_key(pem) for pem in pems], config) if pems else None

    @property
    def active(self) -> SigningKey:
        return self._keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self._keys]}

    def issue(self, *, subject: str, tier: str, scope: str, now: float) -> tuple[str, int]:
        """A signed access token for `subject` and its lifetime in seconds."""
        ttl_s = self._config.ttl_s
        claims = {
            "iss": self._config.issuer, "sub": subject, "aud": self._config.audience,
            "iat": int(now), "nbf": int(now), "exp": int(now) + ttl_s,
            "jti": secrets.token_urlsafe(16), "scope": scope, "tier": tier,
        }  # fmt: skip
        key = self.active
        return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid}), ttl_s

    def verify(self, token: str, *, now: float) -> dict[str, Any]:
        """The claims of a token surge signed, or InvalidTokenError saying what is wrong."""
        header = unverified_header(token)
        key = self._by_kid.get(str(header.get("kid")))
        if key is None:
            raise InvalidTokenError("the token's key id (kid) is not one of surge's signing keys")
        if header.get("alg") != key.algorithm:
            raise InvalidTokenError(f"the token's algorithm {header.get('alg')!r} is not allowed for its key")
        claims = decode_claims(token, key.public, key.algorithm, self._config.audience, self._config.issuer)
        ok, reason = time_decision(claims, now=now, leeway_s=self._config.leeway_s)
        if not ok:
            raise InvalidTokenError(reason)
        return claims


def decode_claims(token: str, key: Any, algorithm: str, audience: str, issuer: str) -> dict[str, Any]:
    """Signature, algorithm, audience, issuer and required claims; times are checked by time_decision."""
    try:
        options: Any = {"require": _REQUIRED_CLAIMS, **_NO_TIME_CHECKS}
        return dict(jwt.decode(token, key, algorithms=[algorithm], audience=audience, issuer=issuer, options=options))
    except jwt.InvalidAudienceError as exc:
        raise InvalidTokenError("the token is not meant for this audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidTokenError("the token's issuer is not trusted") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidTokenError("the token's signature does not verify") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidTokenError(f"the token lacks the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise InvalidTokenError("the token is not valid") from exc


def _resolve(root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path
