"""A key store that does not answer is an outage, not a server bug: 503 with Retry-After, never a 500 and
never a request let through unchecked. The store's own pools reconnect, so the service recovers by itself."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from deployments.errors import ServiceUnavailable

__all__ = ["STORE_RETRY_AFTER_S", "key_store_outage"]

logger = logging.getLogger("surge.admission")
STORE_RETRY_AFTER_S = 1
# "database is locked" / I/O errors (SQLite); refused, dropped or shutting-down connections (Postgres). OSError
# covers ConnectionRefusedError and TimeoutError. asyncpg raises InternalClientError ("cannot switch to state
# 15; another operation is in progress") when the server goes away in the middle of a commit: seen with a
# Postgres stopped under load (a 500 in the multinode chaos test of 2026-12-03).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
)


@contextmanager
def key_store_outage() -> Iterator[None]:
    """Raise `ServiceUnavailable` (503, Retry-After) for a store that cannot answer inside the block."""
    try:
        yield
    except _UNAVAILABLE as exc:
        logger.warning("key store unavailable: %s: %s", type(exc).__name__, exc)
        headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
        raise ServiceUnavailable(
            "The key store is unavailable; retry shortly.", code="key_store_unavailable", headers=headers
        ) from None
