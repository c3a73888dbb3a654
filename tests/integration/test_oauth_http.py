"""OAuth client credentials over HTTP on the real app: the official openai client with a token, token endpoint
errors, JWKS, refused tokens, revocation, and the daily call quota with its headers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from deployments.admission.clients import create_client, revoke_client
from deployments.admission.store import open_store
from deployments.admission.tokens import load_signing_key
from tests.integration.conftest import Keys

pytestmark = pytest.mark.slow

MODEL = "surge-tiny"
USER = [{"role": "user", "content": "hi"}]
README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"


def readme_block(language: str, after: str) -> str:
    """The first ```language block of the README after the text `after`."""
    text = README.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(f"```{language}\n")
    return text[start : text.index("```", start)]


@pytest.fixture(scope="module")
def http(surge_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=surge_url, timeout=120) as client:
        yield client


def new_client(keys: Keys, name: str, tier: str = "pro") -> tuple[str, str]:
    async def create() -> tuple[str, str]:
        async with await open_store(keys.dsn) as store:
            client, secret = await create_client(store, f"{name}-{time.time_ns()}", tier)
            return client.id, secret

    return asyncio.run(create())


def token_of(http: httpx.Client, client_id: str, secret: str) -> str:
    reply = http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed(token_key_file: str, **claims: Any) -> str:
    """A token signed with the app's own key, with chosen claims (expired, another audience, ...)."""
    key = load_signing_key(Path(token_key_file).read_bytes())
    now = int(time.time())
    body = {"iss": "surge", "aud": "surge-api", "sub": "client_x", "iat": now, "exp": now + 600, "jti": "t",
            "tier": "pro", **claims}  # fmt: skip
    return jwt.encode(body, key.private, algorithm=key.algorithm, headers={"kid": key.kid})


def test_the_openai_client_works_with_a_token_from_the_token_endpoint(
    http: httpx.Client, surge_url: str, api_keys: Keys
) -> None:
    client_id, secret = new_client(api_keys, "openai-user")
    reply = http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                            "client_secret": secret})  # fmt: skip
    assert reply.status_code == 200 and reply.headers["cache-control"] == "no-store"
    assert (reply.json()["token_type"], reply.json()["expires_in"]) == ("Bearer", 86_400)
    client = openai.OpenAI(base_url=f"{surge_url}/v1", api_key=reply.json()["access_token"], max_retries=0)
    completion = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)  # type: ignore[arg-type]
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None and completion.usage.completion_tokens >= 1


def test_the_readmes_curl_commands_get_a_token_and_use_it(surge_url: str, api_keys: Keys) -> None:
    client_id, secret = new_client(api_keys, "readme-curl")
    script = readme_block("bash", "Get a token (HTTP Basic")
    assert README_URL in script
    env = {**os.environ, "CLIENT_ID": client_id, "CLIENT_SECRET": secret,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(README_URL, surge_url)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    assert json.loads(done.stdout)["usage"]["completion_tokens"] >= 1


def test_the_readmes_python_client_refreshes_its_token_before_it_expires(surge_url: str, api_keys: Keys) -> None:
    client_id, secret = new_client(api_keys, "readme-python")
    code = readme_block("python", "A long-running Python process")
    assert f'BASE_URL = "{README_URL}"' in code
    namespace: dict[str, Any] = {"CLIENT_ID": client_id, "CLIENT_SECRET": secret}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code.replace(README_URL, surge_url), "README.md", "exec"), namespace)
    assert namespace["completion"].usage.completion_tokens >= 1
    tokens = namespace["tokens"]
    first = tokens.get()
    assert tokens.get() == first  # far from its exp: the cached token
    tokens.expires_at = time.time() + tokens.margin_s / 2  # as if most of its 24 h had passed
    fresh = tokens.get()
    assert fresh != first and jwt.decode(fresh, options={"verify_signature": False})["sub"] == client_id
    client = namespace["client"].with_options(api_key=fresh, max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices


def test_the_jwks_verifies_the_tokens_surge_issues(http: httpx.Client, api_keys: Keys) -> None:
    token = token_of(http, *new_client(api_keys, "jwks"))
    (jwk,) = http.get("/.well-known/jwks.json").json()["keys"]
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience="surge-api")
    assert claims["iss"] == "surge" and claims["tier"] == "pro" and claims["scope"] == "inference"
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]


def test_a_wrong_secret_is_a_401_invalid_client_with_a_challenge(http: httpx.Client, api_keys: Keys) -> None:
    client_id, _ = new_client(api_keys, "wrong")
    reply = http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, "nope"))
    assert (reply.status_code, reply.json()["error"]) == (401, "invalid_client")
    assert reply.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    ("content", "content_type", "error"),
    [
        (b"grant_type=password&username=a&password=b", "application/x-www-form-urlencoded", "unsupported_grant_type"),
        (b'{"grant_type": "client_credentials"}', "application/json", "invalid_request"),
        (b"client_id=a&client_secret=b", "application/x-www-form-urlencoded", "invalid_request"),
    ],
)
def test_malformed_token_requests_are_400s_with_rfc_6749_errors(
    http: httpx.Client, content: bytes, content_type: str, error: str
) -> None:
    reply = http.post("/oauth/token", content=content, headers={"Content-Type": content_type})
    assert (reply.status_code, reply.json()["error"]) == (400, error)


def _alg_none(token_key_file: str) -> str:
    _, payload, _ = signed(token_key_file).split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}."


def _hs256_with_public_key(token_key_file: str) -> str:
    key = load_signing_key(Path(token_key_file).read_bytes())
    public = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(signed(token_key_file), options={"verify_signature": False})
    # PyJWT refuses to HMAC with a PEM key, so the forgery is assembled by hand, as an attacker would.
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": key.kid}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public, header + b"." + payload, hashlib.sha256).digest())
    return f"{header.decode()}.{payload.decode()}.{signature.rstrip(b'=').decode()}"


def _rs256_under_surges_kid(token_key_file: str) -> str:
    claims = jwt.decode(signed(token_key_file), options={"verify_signature": False})
    kid = load_signing_key(Path(token_key_file).read_bytes()).kid
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid})


def _unknown_kid(token_key_file: str) -> str:
    claims = jwt.decode(signed(token_key_file), options={"verify_signature": False})
    return jwt.encode(claims, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "rotated-out"})


@pytest.mark.parametrize(
    "forgery", ["expired", "not-yet-valid", "audience", "alg-none", "hs256", "rs256", "unknown-kid", "tampered"]
)
def test_bad_tokens_are_refused_with_401_and_the_openai_error_body(
    http: httpx.Client, token_key_file: str, forgery: str
) -> None:
    now = int(time.time())
    tokens = {
        "expired": lambda: signed(token_key_file, iat=now - 7200, exp=now - 3600),
        "not-yet-valid": lambda: signed(token_key_file, iat=now + 600, nbf=now + 600, exp=now + 7200),
        "audience": lambda: signed(token_key_file, aud="another-api"),
        "alg-none": lambda: _alg_none(token_key_file),
        "hs256": lambda: _hs256_with_public_key(token_key_file),
        "rs256": lambda: _rs256_under_surges_kid(token_key_file),
        "unknown-kid": lambda: _unknown_kid(token_key_file),
        "tampered": lambda: signed(token_key_file)[:-6] + "AAAAAA",
    }
    reply = http.get("/v1/models", headers=bearer(tokens[forgery]()))
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "authentication_error"
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_a_revoked_clients_token_stops_at_its_next_request(http: httpx.Client, api_keys: Keys) -> None:
    client_id, secret = new_client(api_keys, "revoked")
    token = token_of(http, client_id, secret)
    assert http.get("/v1/models", headers=bearer(token)).status_code == 200

    async def revoke() -> None:
        async with await open_store(api_keys.dsn) as store:
            assert await revoke_client(store, client_id)

    asyncio.run(revoke())
    assert http.get("/v1/models", headers=bearer(token)).status_code == 401
    again = http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert again.status_code == 401


def test_the_daily_call_quota_is_counted_in_headers_and_ends_in_a_429(http: httpx.Client, api_keys: Keys) -> None:
    token = token_of(http, *new_client(api_keys, "quota", tier="few-calls"))
    body = {"model": MODEL, "messages": USER, "max_tokens": 1}
    remaining = []
    for _ in range(3):
        reply = http.post("/v1/chat/completions", json=body, headers=bearer(token))
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-quota-daily-requests-limit"] == "3"
        remaining.append(reply.headers["x-quota-daily-requests-remaining"])
    assert remaining == ["2", "1", "0"]
    over = http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert (over.status_code, over.json()["error"]["code"]) == (429, "insufficient_quota")
    assert over.headers["x-quota-exceeded"] == "daily_requests"
    assert 0 < int(over.headers["retry-after"]) <= 86_400


def test_200_concurrent_token_calls_spend_exactly_the_daily_call_quota(surge_url: str, api_keys: Keys) -> None:
    client_id, secret = new_client(api_keys, "burst", tier="few-calls")
    with httpx.Client(base_url=surge_url, timeout=120) as http:
        token = token_of(http, client_id, secret)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=surge_url, timeout=300) as client:
            # The fallback pool sheds late, so all 200 reach the quota check.
            body = {"model": "surge-fallback", "messages": USER, "max_tokens": 1}
            calls = [client.post("/v1/chat/completions", json=body, headers=bearer(token)) for _ in range(200)]
            return list(await asyncio.gather(*calls))

    statuses = [r.status_code for r in asyncio.run(burst())]
    assert (statuses.count(200), statuses.count(429)) == (3, 197)
