"""Quota-warning webhooks: signed, timestamped, retried with backoff, delivered off the request path."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from cluster.config import NotifyConfig, SmtpConfig
from deployments.admission.notify import Destination, Notifier, signature_header, verify_signature
from deployments.admission.quotas import QuotaState
from tests.local_http import local_server
from tests.local_smtp import smtp_sink

SECRET = b"whsec-test"
QUOTA = QuotaState("daily_requests", limit=500, used=400, reset_s=3600, period="2026-12-02")


@dataclass
class Receiver:
    """A local webhook receiver that checks every signature; the first `fail_first` deliveries get a 503."""

    url: str = ""
    fail_first: int = 0
    attempts: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def hook(request: web.Request) -> web.Response:
        state.attempts += 1
        body = await request.read()
        if not verify_signature(SECRET, request.headers.get("X-Surge-Signature", ""), body, now=time.time()):
            state.bad_signatures += 1
            return web.Response(status=401)
        if state.attempts <= state.fail_first:
            return web.Response(status=503)
        state.events.append(json.loads(body))
        state.arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with local_server(app) as url:
        state.url = f"{url}/hook"
        yield state


def notifier(monkeypatch: pytest.MonkeyPatch, sleeps: list[float] | None = None, **config: Any) -> Notifier:
    monkeypatch.setenv("SURGE_WEBHOOK_SECRET", SECRET.decode())
    recorded = sleeps if sleeps is not None else []

    async def sleep(seconds: float) -> None:
        recorded.append(seconds)

    return Notifier(NotifyConfig(**config), sleep=sleep)


async def test_a_warning_arrives_signed_with_what_was_used(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = notifier(monkeypatch)
    sender.warn(Destination("client_1", "free", receiver.url), QUOTA, 0.8)
    await sender.drain()
    (event,) = receiver.events
    assert receiver.bad_signatures == 0
    assert {k: event[k] for k in ("type", "tenant", "tier", "quota", "period", "limit", "used", "remaining")} == {
        "type": "quota.warning", "tenant": "client_1", "tier": "free", "quota": "daily_requests",
        "period": "2026-12-02", "limit": 500, "used": 400, "remaining": 100,
    }  # fmt: skip


async def test_warn_returns_before_the_webhook_is_answered(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = notifier(monkeypatch)
    sender.warn(Destination("client_1", "free", receiver.url), QUOTA, 0.8)
    assert receiver.attempts == 0  # nothing was sent before warn returned
    await asyncio.wait_for(receiver.arrived.wait(), 30)
    await sender.drain()


async def test_a_failing_receiver_is_retried_with_doubling_backoff(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.fail_first = 3
    sleeps: list[float] = []
    sender = notifier(monkeypatch, sleeps, attempts=5, backoff_s=0.5)
    sender.warn(Destination("client_1", "free", receiver.url), QUOTA, 0.8)
    await sender.drain()
    assert (receiver.attempts, len(receiver.events), sleeps) == (4, 1, [0.5, 1.0, 2.0])


async def test_delivery_gives_up_after_the_configured_attempts(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.fail_first = 100
    sender = notifier(monkeypatch, attempts=3, backoff_s=0.1)
    sender.warn(Destination("client_1", "free", receiver.url), QUOTA, 0.8)
    await sender.drain()
    assert (receiver.attempts, receiver.events) == (3, [])


async def test_an_unreachable_receiver_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = notifier(monkeypatch, attempts=2, backoff_s=0.1)
    sender.warn(Destination("client_1", "free", "http://127.0.0.1:9/hook"), QUOTA, 0.8)
    await sender.drain()


async def test_no_secret_means_no_unsigned_webhook(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SURGE_WEBHOOK_SECRET", raising=False)
    sender = Notifier(NotifyConfig())
    sender.warn(Destination("client_1", "free", receiver.url), QUOTA, 0.8)
    await sender.drain()
    assert receiver.attempts == 0


def test_a_signature_checks_secret_body_and_age() -> None:
    body, now = b'{"a":1}', time.time()
    header = signature_header(SECRET, int(now), body)
    assert verify_signature(SECRET, header, body, now=now)
    assert not verify_signature(b"other", header, body, now=now)
    assert not verify_signature(SECRET, header, b'{"a":2}', now=now)
    assert not verify_signature(SECRET, header, body, now=now + 301)
    assert not verify_signature(SECRET, "garbage", body, now=now)


async def test_with_smtp_configured_a_warning_is_also_e_mailed(monkeypatch: pytest.MonkeyPatch) -> None:
    async with smtp_sink() as sink:
        smtp = SmtpConfig(host="127.0.0.1", port=sink.port, sender="surge@example.test")
        sender = notifier(monkeypatch, smtp=smtp)
        sender.warn(Destination("client_1", "free", email="ops@acme.test"), QUOTA, 0.8)
        await sender.drain()
    ((to, message),) = sink.messages
    assert to == "ops@acme.test"
    assert "Subject: surge: 80% of your daily requests quota used" in message
    assert "From: surge@example.test" in message
    assert "400 of 500" in message


async def test_an_smtp_server_that_is_down_is_retried_then_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    smtp = SmtpConfig(host="127.0.0.1", port=9, sender="surge@example.test", timeout_s=5)
    sender = notifier(monkeypatch, sleeps, smtp=smtp, attempts=3, backoff_s=0.5)
    sender.warn(Destination("client_1", "free", email="ops@acme.test"), QUOTA, 0.8)
    await sender.drain()
    assert sleeps == [0.5, 1.0]
