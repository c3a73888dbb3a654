"""Quota warnings that reach someone: a signed webhook (and e-mail when SMTP is configured), off the request path.

The store claims each warning once per tenant, quota and period (quota_store.claim_warnings); this module
delivers what was claimed: in a background task, retried with exponential backoff, never awaited by a request.
A webhook is signed like Stripe's: `X-Surge-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
so a receiver can check both who sent it and that it is recent; `X-Surge-Event-Id` lets it drop a redelivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import smtplib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from cluster.config import PROJECT_ROOT, NotifyConfig, SmtpConfig
from deployments.admission.quotas import QuotaState

__all__ = ["Destination", "Notifier", "sign", "signature_header", "verify_signature", "warning_event"]

logger = logging.getLogger("surge.notify")
# Statuses worth retrying: the receiver may be restarting or asks us to slow down.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
Post = Callable[[str, bytes, dict[str, str], float], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one tenant's warnings go."""

    tenant: str
    tier: str
    webhook_url: str | None = None
    email: str | None = None


def warning_event(destination: Destination, quota: QuotaState, fraction: float, now: float) -> dict[str, Any]:
    """The JSON event a webhook receives."""
    return {
        "id": "evt_" + secrets.token_hex(12),
        "type": "quota.warning",
        "created": int(now),
        "tenant": destination.tenant,
        "tier": destination.tier,
        "quota": quota.kind,
        "period": quota.period,
        "limit": quota.limit,
        "used": quota.used,
        "remaining": quota.remaining,
        "threshold": fraction,
        "resets_in_s": quota.reset_s,
    }


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of "<timestamp>.<body>"."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify_signature(secret: bytes, header: str, body: bytes, *, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver checks: the signature matches and its timestamp is within `tolerance_s` of `now`."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    fresh = abs(now - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(parts.get("v1", ""), sign(secret, timestamp, body))


async def _http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return (await client.post(url, content=body, headers=headers)).status_code


def _send_mail(smtp: SmtpConfig, to: str, subject: str, text: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = smtp.sender, to, subject
    message.set_content(text)
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as server:
        if smtp.starttls:
            server.starttls()
        if smtp.username:
            server.login(smtp.username, os.environ.get(smtp.password_env, ""))
        server.send_message(message)


def _secret(config: NotifyConfig, root: Path) -> bytes | None:
    if os.environ.get(config.webhook_secret_env):
        return os.environ[config.webhook_secret_env].encode()
    if config.webhook_secret_file:
        path = Path(config.webhook_secret_file)
        return (path if path.is_absolute() else root / path).read_bytes().strip()
    return None


class Notifier:
    """Delivers quota warnings in background tasks; `warn` returns at once."""

    def __init__(
        self, config: NotifyConfig, *, root: Path = PROJECT_ROOT, post: Post = _http_post,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        self._config = config
        self._secret = _secret(config, root)
        self._post = post
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()

    def warn(self, destination: Destination, quota: QuotaState, fraction: float) -> None:
        """Send one warning to the destination's webhook and e-mail, in the background."""
        event = warning_event(destination, quota, fraction, time.time())
        if destination.webhook_url:
            self._spawn(self._deliver_webhook(destination.webhook_url, event))
        if destination.email and self._config.smtp is not None:
            self._spawn(self._deliver_email(self._config.smtp, destination.email, event))
        if not destination.webhook_url and not (destination.email and self._config.smtp):
            logger.info("quota warning for %s has no destination: %s", destination.tenant, event)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every delivery in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver_webhook(self, url: str, event: dict[str, Any]) -> None:
        if self._secret is None:
            logger.error("quota warning webhook not sent: no secret in $%s", self._config.webhook_secret_env)
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        for attempt in range(self._config.attempts):
            # Signed per attempt, so a late retry still carries a fresh timestamp.
            headers = {"Content-Type": "application/json", "X-Surge-Event-Id": event["id"],
                       "X-Surge-Signature": signature_header(self._secret, int(time.time()), body)}  # fmt: skip
            status = await self._attempt(url, body, headers)
            if status is not None and 200 <= status < 300:
                return
            if status is not None and status not in _RETRY_STATUSES:
                break
            if attempt + 1 < self._config.attempts:
                await self._sleep(self._config.backoff_s * 2**attempt)
        logger.error("quota warning %s to %s was not delivered", event["id"], url)

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        try:
            return await self._post(url, body, headers, self._config.webhook_timeout_s)
        except (httpx.HTTPError, OSError) as exc:
            logger.warning("quota warning webhook to %s failed: %r", url, exc)
            return None

    async def _deliver_email(self, smtp: SmtpConfig, to: str, event: dict[str, Any]) -> None:
        subject = f"surge: {round(100 * event['threshold'])}% of your {event['quota'].replace('_', ' ')} quota used"
        text = (f"Tenant {event['tenant']} has used {event['used']} of {event['limit']} ({event['quota']}, "
                f"period {event['period']}); it resets in {event['resets_in_s']} s.\n")  # fmt: skip
        for attempt in range(self._config.attempts):
            try:
                await asyncio.to_thread(_send_mail, smtp, to, subject, text)
                return
            except (smtplib.SMTPException, OSError) as exc:
                logger.warning("quota warning e-mail to %s failed: %r", to, exc)
            if attempt + 1 < self._config.attempts:
                await self._sleep(self._config.backoff_s * 2**attempt)
