"""OAuth clients in the key store: created with a secret shown once, stored as an scrypt hash, revocable.

The password hash is scrypt from Python's hashlib (OpenSSL's implementation: maintained, memory-hard, no new
dependency) with a random salt per secret; verification is constant-time and runs off the event loop.
Each client also owns a principal row in surge_api_keys, so its limits and quotas are charged exactly like a
key's; external tenants get such a row (ensure_principal) on their first request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from deployments.admission.quota_store import Sql
from deployments.admission.store import PRINCIPAL_HASH_PREFIX, KeyNameTakenError, KeyStore

__all__ = [
    "CLIENT_SECRET_PREFIX",
    "Client",
    "create_client",
    "ensure_principal",
    "find_client",
    "hash_secret",
    "list_clients",
    "revoke_client",
    "verify_client",
    "verify_secret",
]

CLIENT_SECRET_PREFIX = "surge-cs-"
# scrypt cost: ~16 MiB and some tens of ms per check; the token endpoint is called once a day per client.
_N, _R, _P = 2**14, 8, 1
_COLUMNS = "id, name, tier, webhook_url, email, created_at, revoked_at"
# Checked against when the client id is unknown, so an unknown id costs as long as a wrong secret.
_DECOY_HASH = f"scrypt${_N}${_R}${_P}$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44


@dataclass(frozen=True, slots=True)
class Client:
    """A stored OAuth client as anyone may see it (never its secret)."""

    id: str
    name: str
    tier: str
    webhook_url: str | None
    email: str | None
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_secret(secret: str) -> str:
    """`scrypt$N$r$p$salt$hash`, salt and hash in base64."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches the stored scrypt hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


async def create_client(
    store: KeyStore, name: str, tier: str, *, webhook_url: str | None = None, email: str | None = None
) -> tuple[Client, str]:
    """A new client and its secret, which is shown once and stored only as a hash."""
    if not name.strip() or len(name) > 128:
        raise ValueError("a client name must be 1 to 128 characters")
    secret = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
    secret_hash = await asyncio.to_thread(hash_secret, secret)
    client = Client("client_" + secrets.token_hex(8), name, tier, webhook_url, email, time.time())

    async def insert(tx: Sql) -> bool:
        taken = await tx("SELECT id FROM surge_clients WHERE name = ? AND revoked_at IS NULL", name)
        if taken:
            return False
        await _insert_principal(tx, client.id, f"client:{client.id}", tier, client.created_at)
        await tx(
            f"INSERT INTO surge_clients ({_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
            client.id, name, tier, webhook_url, email, client.created_at, secret_hash,
        )  # fmt: skip
        return True

    if not await store.atomically(insert):
        raise KeyNameTakenError(f"an active client is already named {name!r}")
    return client, secret


async def _insert_principal(tx: Sql, principal_id: str, name: str, tier: str, created_at: float) -> None:
    await tx(
        "INSERT INTO surge_api_keys (id, name, tier, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        principal_id, name, tier, PRINCIPAL_HASH_PREFIX + principal_id, "principal", created_at,
    )  # fmt: skip


async def ensure_principal(store: KeyStore, principal_id: str, tier: str) -> None:
    """Give an external tenant a row to charge its limits and quotas to (a no-op when it has one)."""

    async def insert(tx: Sql) -> None:
        await _insert_principal(tx, principal_id, principal_id, tier, time.time())

    await store.atomically(insert)


async def find_client(store: KeyStore, client_id: str) -> Client | None:
    """The active client with this id, or None (unknown or revoked)."""

    async def select(tx: Sql) -> list[tuple[object, ...]]:
        return await tx(f"SELECT {_COLUMNS} FROM surge_clients WHERE id = ? AND revoked_at IS NULL", client_id)

    rows = await store.atomically(select, write=False)
    return Client(*rows[0]) if rows else None  # type: ignore[arg-type]


async def verify_client(store: KeyStore, client_id: str, secret: str) -> Client | None:
    """The active client when `secret` is its secret, else None; as slow for an unknown id as a wrong secret."""

    async def select(tx: Sql) -> list[tuple[object, ...]]:
        sql = f"SELECT {_COLUMNS}, secret_hash FROM surge_clients WHERE id = ? AND revoked_at IS NULL"
        return await tx(sql, client_id)

    rows = await store.atomically(select, write=False)
    stored = str(rows[0][-1]) if rows else _DECOY_HASH
    matches = await asyncio.to_thread(verify_secret, secret, stored)
    return Client(*rows[0][:-1]) if rows and matches else None  # type: ignore[arg-type]


async def list_clients(store: KeyStore) -> list[Client]:
    """Every client, revoked ones included, oldest first."""

    async def select(tx: Sql) -> list[tuple[object, ...]]:
        return await tx(f"SELECT {_COLUMNS} FROM surge_clients ORDER BY created_at, id")

    return [Client(*row) for row in await store.atomically(select, write=False)]  # type: ignore[arg-type]


async def revoke_client(store: KeyStore, name_or_id: str) -> bool:
    """Revoke the active client with this id or name (its tokens stop working at once); False if none."""

    async def update(tx: Sql) -> bool:
        now = time.time()
        rows = await tx(
            "UPDATE surge_clients SET revoked_at = ? WHERE revoked_at IS NULL AND (id = ? OR name = ?) RETURNING id",
            now, name_or_id, name_or_id,
        )  # fmt: skip
        for (client_id,) in rows:
            await tx("UPDATE surge_api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", now, client_id)
        return bool(rows)

    return await store.atomically(update)
