"""A bounded load through the real HTTP API for the chaos, drain and overload tests: a fixed number of chat
requests, streamed and not, at a fixed concurrency, run in a thread of its own while the test injects a fault;
every answer is classified (ok, refused with its status, a stream cut with an SSE error event, a silent cut)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["BoundedLoad", "Outcome", "Tally", "open_loop", "recovery_s", "retried_requests", "wait_until_ok"]


@dataclass
class Outcome:
    """One request's answer as the client saw it; times on `time.monotonic()`."""

    streamed: bool
    started_s: float
    ended_s: float = 0.0
    status: int = 0  # 0: no HTTP answer (connection refused or reset before the headers)
    retry_after: bool = False
    error_code: str | None = None  # the error body's code, or the SSE error event's
    deltas: int = 0  # content chunks of a stream
    finished: bool = False  # a chunk with a finish_reason arrived
    done: bool = False  # `data: [DONE]` arrived
    error_event: bool = False  # the stream ended with an error event
    broken: str | None = None  # the connection failed mid-body (the client can tell: not silent)
    replica: str | None = None

    @property
    def ok(self) -> bool:
        complete = not self.streamed or (self.finished and self.done and not self.error_event)
        return self.status == 200 and complete and self.broken is None

    @property
    def cut_with_error_event(self) -> bool:
        return self.status == 200 and self.error_event and self.done

    @property
    def silently_truncated(self) -> bool:
        """A 200 stream that ended cleanly without its finish, [DONE] or an error event."""
        return self.streamed and self.status == 200 and self.broken is None and not self.ok \
            and not self.cut_with_error_event


@dataclass
class Tally:
    """Counts for a test's report line."""

    name: str
    outcomes: list[Outcome]
    retried: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        statuses = Counter(o.status for o in self.outcomes if not o.ok)
        streamed = sum(o.streamed for o in self.outcomes)
        parts = [
            f"{self.name}: sent={len(self.outcomes)} ({len(self.outcomes) - streamed} plain, {streamed} streamed)",
            f"ok={sum(o.ok for o in self.outcomes)}",
            f"retried={'?' if self.retried is None else self.retried}",
            f"failed_by_status={dict(sorted(statuses.items()))}",
            f"codes={dict(Counter(o.error_code for o in self.outcomes if o.error_code))}",
            f"cut_with_error_event={sum(o.cut_with_error_event for o in self.outcomes)}",
            f"broken={sum(o.broken is not None for o in self.outcomes)}",
            f"silently_truncated={sum(o.silently_truncated for o in self.outcomes)}",
        ]
        parts += [f"{key}={value}" for key, value in self.extra.items()]
        return " ".join(parts)


def _event(outcome: Outcome, data: str) -> None:
    if data == "[DONE]":
        outcome.done = True
        return
    event = json.loads(data)
    if "error" in event:
        outcome.error_event, outcome.error_code = True, event["error"].get("code")
        return
    for choice in event.get("choices", []):
        outcome.deltas += 1
        outcome.finished = outcome.finished or choice.get("finish_reason") is not None


async def _read_stream(response: httpx.Response, outcome: Outcome, on_first: Callable[[], None]) -> None:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            _event(outcome, line.removeprefix("data: "))
            if outcome.deltas == 1:
                on_first()


async def _one(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str], on_first: Callable[[], None]
) -> Outcome:
    outcome = Outcome(streamed=bool(body.get("stream")), started_s=time.monotonic())
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            outcome.status = response.status_code
            outcome.retry_after = bool(response.headers.get("Retry-After"))
            outcome.replica = response.headers.get("X-Surge-Replica")
            try:
                if response.status_code == 200 and outcome.streamed:
                    await _read_stream(response, outcome, on_first)
                else:
                    payload = json.loads(await response.aread() or b"{}")
                    outcome.error_code = (payload.get("error") or {}).get("code") if isinstance(payload, dict) else None
                    outcome.finished = response.status_code == 200 and bool(payload.get("choices"))
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                outcome.broken = f"{type(exc).__name__}: {exc}"
    except httpx.HTTPError as exc:
        outcome.broken = f"{type(exc).__name__}: {exc}"
    outcome.ended_s = time.monotonic()
    return outcome


class BoundedLoad:
    """`total` requests at `concurrency`, every `stream_every`-th one streamed (none for 0), in a background
    thread. `body(i, stream)` builds request i's JSON; `key` is one API key or request i's."""

    def __init__(
        self,
        url: str,
        key: str | Callable[[int], str],
        total: int,
        concurrency: int,
        body: Callable[[int, bool], dict[str, Any]],
        stream_every: int = 2,
        timeout_s: float = 120,
        id_prefix: str = "load",
    ) -> None:
        self._url, self._total, self._concurrency = url, total, concurrency
        self._key = key if callable(key) else (lambda _i, k=key: k)
        self._body, self._stream_every, self._timeout_s = body, stream_every, timeout_s
        self.id_prefix = id_prefix
        self.first_tokens = 0  # streams that have received their first token
        self.outcomes: list[Outcome] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> BoundedLoad:
        self._thread.start()
        return self

    @property
    def completed(self) -> int:
        return len(self.outcomes)

    def wait_for(self, completed: int, limit_s: float = 600) -> None:
        """Until `completed` answers are in (an outer bound only: the load itself paces the test)."""
        deadline = time.monotonic() + limit_s
        while self.completed < completed and self._thread.is_alive():
            assert time.monotonic() < deadline, f"only {self.completed} of {completed} answers in {limit_s:g} s"
            time.sleep(0.05)

    def join(self, limit_s: float = 900) -> list[Outcome]:
        self._thread.join(limit_s)
        assert not self._thread.is_alive(), f"the load did not finish within {limit_s:g} s"
        return self.outcomes

    def _first_token(self) -> None:
        self.first_tokens += 1

    async def _run(self) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self._total):
            queue.put_nowait(i)
        timeout = httpx.Timeout(self._timeout_s, connect=10)
        limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency)
        async with httpx.AsyncClient(base_url=self._url, timeout=timeout, limits=limits) as client:

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    stream = self._stream_every > 0 and i % self._stream_every == self._stream_every - 1
                    headers = {"Authorization": f"Bearer {self._key(i)}", "X-Request-Id": f"{self.id_prefix}-{i}"}
                    self.outcomes.append(await _one(client, self._body(i, stream), headers, self._first_token))

            await asyncio.gather(*(worker() for _ in range(self._concurrency)))


def recovery_s(outcomes: list[Outcome], fault_s: float) -> float | None:
    """Seconds from the fault to the first success among requests sent after it."""
    ends = [o.ended_s for o in outcomes if o.ok and o.started_s >= fault_s]
    return min(ends) - fault_s if ends else None


def wait_until_ok(send: Callable[[], httpx.Response], since_s: float, limit_s: float = 300) -> float:
    """Seconds from `since_s` until `send()` first answers 200, waiting on the answers (outer bound `limit_s`)."""
    deadline = time.monotonic() + limit_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = send()
            if response.status_code == 200:
                return time.monotonic() - since_s
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise AssertionError(f"no 200 within {limit_s:g} s; last answer: {last}")


def retried_requests(logs_dir: Path, id_prefix: str, expected: int, settle_s: float = 30) -> tuple[int, int]:
    """Requests of this load that the ingress dispatched more than once, and the requests logged at all, from its
    request log lines (one JSON line per request, with `attempts`) in the Ray session's logs; waits until
    `expected` lines are there (outer bound `settle_s`)."""
    pattern = re.compile(rf'"request_id":"({re.escape(id_prefix)}[^"]*)".*?"attempts":(\d+)')
    deadline = time.monotonic() + settle_s
    while True:
        attempts: dict[str, int] = {}
        for path in logs_dir.rglob("*"):
            if path.is_file():
                for match in pattern.finditer(path.read_text(errors="replace")):
                    attempts[match[1]] = max(attempts.get(match[1], 0), int(match[2]))
        if len(attempts) >= expected or time.monotonic() > deadline:
            return sum(n > 1 for n in attempts.values()), len(attempts)
        time.sleep(0.5)


def open_loop(
    url: str, key: Callable[[int], str], rate_rps: float, count: int, body: Callable[[int], dict[str, Any]]
) -> list[Outcome]:
    """`count` requests sent at `rate_rps` whatever the answers (open loop), each on its own connection slot."""

    async def run() -> list[Outcome]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300, connect=30), limits=limits) as client:
            tasks, started = [], time.monotonic()
            for i in range(count):
                await asyncio.sleep(max(0.0, started + i / rate_rps - time.monotonic()))
                headers = {"Authorization": f"Bearer {key(i)}", "X-Request-Id": f"overload-{i}"}
                tasks.append(asyncio.create_task(_one(client, body(i), headers, lambda: None)))
            return list(await asyncio.gather(*tasks))

    return asyncio.run(run())
