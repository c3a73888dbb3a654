"""surge's access tokens: what they claim, and every way a forged, stale or misdirected token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cluster.config import TokenConfig
from deployments.admission.tokens import InvalidTokenError, TokenKeys, load_signing_key, time_decision

NOW = 1_800_000_000.0


def pem(private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(tmp_path: Path, name: str, private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    path = tmp_path / name
    path.write_bytes(pem(private))
    return str(path)


@pytest.fixture
def config(tmp_path: Path) -> TokenConfig:
    return TokenConfig(signing_key_files=[write_key(tmp_path, "k1.pem", ed25519.Ed25519PrivateKey.generate())])


@pytest.fixture
def keys(config: TokenConfig) -> TokenKeys:
    loaded = TokenKeys.load(config)
    assert loaded is not None
    return loaded


def segments(token: str) -> list[str]:
    return token.split(".")


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_carries_the_client_its_tier_scope_and_a_day_of_validity(keys: TokenKeys) -> None:
    token, expires_in = keys.issue(subject="client_1", tier="pro", scope="inference", now=NOW)
    claims = keys.verify(token, now=NOW)
    assert expires_in == 86_400
    assert {k: claims[k] for k in ("iss", "sub", "aud", "iat", "exp", "scope", "tier")} == {
        "iss": "surge", "sub": "client_1", "aud": "surge-api", "iat": int(NOW), "exp": int(NOW) + 86_400,
        "scope": "inference", "tier": "pro",
    }  # fmt: skip
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": keys.active.kid, "typ": "JWT"}


def test_every_token_has_its_own_jti(keys: TokenKeys) -> None:
    first = keys.verify(keys.issue(subject="c", tier="pro", scope="inference", now=NOW)[0], now=NOW)
    second = keys.verify(keys.issue(subject="c", tier="pro", scope="inference", now=NOW)[0], now=NOW)
    assert first["jti"] != second["jti"]


def test_a_p256_key_signs_es256(tmp_path: Path) -> None:
    config = TokenConfig(signing_key_files=[write_key(tmp_path, "ec.pem", ec.generate_private_key(ec.SECP256R1()))])
    keys = TokenKeys.load(config)
    assert keys is not None
    token, _ = keys.issue(subject="c", tier="pro", scope="inference", now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert keys.verify(token, now=NOW)["sub"] == "c"


def test_an_rsa_key_is_not_a_signing_key() -> None:
    with pytest.raises(ValueError, match="Ed25519 or EC P-256"):
        load_signing_key(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


@pytest.mark.parametrize(("offset_s", "valid"), [(86_400 + 29, True), (86_400 + 30, False), (86_400 + 3600, False)])
def test_expiry_allows_exactly_the_leeway(keys: TokenKeys, offset_s: int, valid: bool) -> None:
    token, _ = keys.issue(subject="c", tier="pro", scope="inference", now=NOW)
    if valid:
        keys.verify(token, now=NOW + offset_s)
    else:
        with pytest.raises(InvalidTokenError, match="expired"):
            keys.verify(token, now=NOW + offset_s)


@pytest.mark.parametrize(("skew_s", "valid"), [(-30, True), (-31, False)])
def test_a_verifier_whose_clock_is_behind_accepts_a_new_token_within_the_leeway(
    keys: TokenKeys, skew_s: int, valid: bool
) -> None:
    token, _ = keys.issue(subject="c", tier="pro", scope="inference", now=NOW)
    if valid:
        keys.verify(token, now=NOW + skew_s)
    else:
        with pytest.raises(InvalidTokenError, match="not valid yet"):
            keys.verify(token, now=NOW + skew_s)


def signed_by_surge(keys: TokenKeys, **claims: object) -> str:
    """A token with chosen claims, signed with surge's own active key."""
    body = {"iss": "surge", "sub": "c", "aud": "surge-api", "exp": int(NOW) + 600, "jti": "x", **claims}
    return jwt.encode(body, keys.active.private, algorithm=keys.active.algorithm, headers={"kid": keys.active.kid})


@pytest.mark.parametrize(("iat_ahead_s", "valid"), [(30, True), (31, False)])
def test_a_token_issued_ahead_of_the_verifiers_clock_is_accepted_within_the_leeway_only(
    keys: TokenKeys, iat_ahead_s: int, valid: bool
) -> None:
    token = signed_by_surge(keys, iat=int(NOW) + iat_ahead_s)
    if valid:
        keys.verify(token, now=NOW)
    else:
        with pytest.raises(InvalidTokenError, match="issued in the future"):
            keys.verify(token, now=NOW)


def test_the_leeway_is_configurable(config: TokenConfig) -> None:
    strict = TokenKeys.load(config.model_copy(update={"leeway_s": 0}))
    assert strict is not None
    token, _ = strict.issue(subject="c", tier="pro", scope="inference", now=NOW)
    strict.verify(token, now=NOW + 86_399)
    with pytest.raises(InvalidTokenError, match="expired"):
        strict.verify(token, now=NOW + 86_400)


def test_time_claims_must_be_numbers() -> None:
    assert time_decision({"exp": "tomorrow"}, now=NOW, leeway_s=30)[0] is False
    assert time_decision({}, now=NOW, leeway_s=30)[0] is False


def test_a_token_for_another_audience_is_refused(tmp_path: Path, config: TokenConfig) -> None:
    other = TokenKeys.load(config.model_copy(update={"audience": "someone-else"}))
    assert other is not None
    token, _ = other.issue(subject="c", tier="pro", scope="inference", now=NOW)
    keys = TokenKeys.load(config)
    assert keys is not None
    with pytest.raises(InvalidTokenError, match="audience"):
        keys.verify(token, now=NOW)


def test_a_token_from_another_issuer_is_refused(config: TokenConfig) -> None:
    other = TokenKeys.load(config.model_copy(update={"issuer": "https://evil.example"}))
    keys = TokenKeys.load(config)
    assert other is not None and keys is not None
    token, _ = other.issue(subject="c", tier="pro", scope="inference", now=NOW)
    with pytest.raises(InvalidTokenError, match="issuer"):
        keys.verify(token, now=NOW)


def test_a_tampered_payload_fails_the_signature(keys: TokenKeys) -> None:
    header, payload, signature = segments(keys.issue(subject="c", tier="free", scope="inference", now=NOW)[0])
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = b64({**claims, "tier": "enterprise"})
    with pytest.raises(InvalidTokenError, match="signature"):
        keys.verify(f"{header}.{forged}.{signature}", now=NOW)


def test_an_unsigned_alg_none_token_is_refused(keys: TokenKeys) -> None:
    _, payload, _ = segments(keys.issue(subject="c", tier="pro", scope="inference", now=NOW)[0])
    header = b64({"alg": "none", "kid": keys.active.kid, "typ": "JWT"})
    with pytest.raises(InvalidTokenError, match="algorithm 'none'"):
        keys.verify(f"{header}.{payload}.", now=NOW)


def test_hmac_signed_with_the_public_key_is_refused(keys: TokenKeys) -> None:
    """Algorithm confusion: an attacker signs HS256 using the published public key as the HMAC secret."""
    _, payload, _ = segments(keys.issue(subject="c", tier="pro", scope="inference", now=NOW)[0])
    public_pem = keys.active.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64({"alg": "HS256", "kid": keys.active.kid, "typ": "JWT"})
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(InvalidTokenError, match="algorithm 'HS256'"):
        keys.verify(forged, now=NOW)


def test_an_rs256_token_under_surges_kid_is_refused(keys: TokenKeys) -> None:
    """Algorithm confusion the other way: an attacker's RSA key, presented under the kid of surge's key."""
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": "surge", "sub": "c", "aud": "surge-api", "iat": int(NOW), "exp": int(NOW) + 60, "jti": "x"}
    token = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": keys.active.kid})
    with pytest.raises(InvalidTokenError, match="algorithm 'RS256'"):
        keys.verify(token, now=NOW)


def test_a_token_without_a_kid_is_refused(keys: TokenKeys) -> None:
    claims = {"iss": "surge", "sub": "c", "aud": "surge-api", "iat": int(NOW), "exp": int(NOW) + 60, "jti": "x"}
    token = jwt.encode(claims, keys.active.private, algorithm=keys.active.algorithm)
    with pytest.raises(InvalidTokenError, match="kid"):
        keys.verify(token, now=NOW)


def test_a_token_signed_by_an_unknown_key_is_refused(keys: TokenKeys) -> None:
    stranger = ed25519.Ed25519PrivateKey.generate()
    claims = {"iss": "surge", "sub": "c", "aud": "surge-api", "iat": int(NOW), "exp": int(NOW) + 60, "jti": "x"}
    token = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "made-up"})
    with pytest.raises(InvalidTokenError, match="kid"):
        keys.verify(token, now=NOW)


def test_a_token_of_a_rotated_out_signing_key_verifies_until_it_expires(tmp_path: Path, config: TokenConfig) -> None:
    old = TokenKeys.load(config)
    assert old is not None
    token, _ = old.issue(subject="c", tier="pro", scope="inference", now=NOW)
    new_key = write_key(tmp_path, "k2.pem", ed25519.Ed25519PrivateKey.generate())
    rotated = TokenKeys.load(config.model_copy(update={"signing_key_files": [new_key, *config.signing_key_files]}))
    assert rotated is not None
    assert rotated.verify(token, now=NOW + 60)["sub"] == "c"
    new_token, _ = rotated.issue(subject="c", tier="p", scope="s", now=NOW)
    assert jwt.get_unverified_header(new_token)["kid"] != old.active.kid
    assert [k["kid"] for k in rotated.jwks()["keys"]] == [rotated.active.kid, old.active.kid]


def test_the_jwks_publishes_public_keys_only(keys: TokenKeys) -> None:
    (jwk,) = keys.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert jwt.PyJWK(jwk).key is not None


def test_the_secret_env_var_key_signs_first(monkeypatch: pytest.MonkeyPatch, config: TokenConfig) -> None:
    monkeypatch.setenv("SURGE_TOKEN_SIGNING_KEY", pem(ed25519.Ed25519PrivateKey.generate()).decode())
    keys = TokenKeys.load(config)
    assert keys is not None and len(keys.jwks()["keys"]) == 2
    assert keys.active.kid != keys.jwks()["keys"][1]["kid"]


def test_without_a_key_surge_issues_no_tokens_rather_than_inventing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SURGE_TOKEN_SIGNING_KEY", raising=False)
    assert TokenKeys.load(TokenConfig()) is None


def test_a_development_key_is_generated_once_and_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SURGE_TOKEN_SIGNING_KEY", raising=False)
    config = TokenConfig(dev_key_file=str(tmp_path / "dev" / "key.pem"))
    first, second = TokenKeys.load(config), TokenKeys.load(config)
    assert first is not None and second is not None
    assert first.active.kid == second.active.kid
    assert (tmp_path / "dev" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert "DEVELOPMENT TOKEN SIGNING KEY" in caplog.text
