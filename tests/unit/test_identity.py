"""Identity when the key store cannot answer: a 503 with Retry-After in each route's own error shape, never a 500."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cluster.config import AdmissionConfig, TokenConfig
from deployments.admission.identity import Identity
from deployments.admission.store import KeyStore
from deployments.errors import ServiceUnavailable

FORM = "application/x-www-form-urlencoded"


class LockedStore:
    """A store whose every transaction fails as a SQLite file locked by another writer does."""

    async def atomically(self, operation: Any, *, write: bool = True) -> Any:
        raise sqlite3.OperationalError("database is locked")


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    key = tmp_path / "signing.pem"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    config = AdmissionConfig(tokens=TokenConfig(signing_key_files=[str(key)]))

    async def store() -> KeyStore:
        return LockedStore()  # type: ignore[return-value]

    return Identity(config, store)


async def test_the_token_endpoint_answers_temporarily_unavailable_when_the_store_is_down(identity: Identity) -> None:
    reply = await identity.issue(FORM, None, b"grant_type=client_credentials&client_id=c&client_secret=s")
    assert (reply.status, reply.body["error"]) == (503, "temporarily_unavailable")
    assert reply.headers["Retry-After"] == "1" and reply.headers["Cache-Control"] == "no-store"


async def test_a_valid_token_meets_a_503_not_a_500_when_the_store_is_down(identity: Identity) -> None:
    token = identity._keys.issue(subject="client_1", tier="pro", scope="inference", now=time.time())[0]  # type: ignore[union-attr]
    with pytest.raises(ServiceUnavailable) as caught:
        await identity.principal(token)
    assert (caught.value.code, caught.value.headers["Retry-After"]) == ("key_store_unavailable", "1")
