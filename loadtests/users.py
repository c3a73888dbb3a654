"""Locust users that play customer-service conversations against an OpenAI-compatible API, open loop.

A user is a free slot, not a customer: it claims the next arrival from the shape's schedule, waits until it is
due, and sends it. Customers keep arriving when the server slows down; when every slot is busy, arrivals are
claimed late and the report says the generator was saturated.

Each request shows up in Locust twice, apart: the HTTP row (request type POST, time to response headers for a
stream) and the LLM rows under request type `LLM`: `TTFT <tier>`, `ITL <tier>` (one event per token),
`TPOT <tier>`, `E2E <tier>`, and `output tok/s <tier>` (whose "response time" is tokens per second).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import gevent
from locust import HttpUser, constant, task

from loadtests.conversations import Dialogue, load_script
from loadtests.metrics import Chunk, RequestRecord, retry_after_s, stream_timing
from loadtests.shapes import OpenLoopShape
from loadtests.spec import RunSpec

__all__ = ["LLM_REQUEST_TYPE", "CustomerUser", "parse_sse_line"]

LLM_REQUEST_TYPE = "LLM"
_CHAT_PATH = "/v1/chat/completions"


def parse_sse_line(line: bytes) -> dict[str, Any] | None:
    """The JSON payload of one `data:` line; None for blank lines, comments and `[DONE]`."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return None
    parsed: dict[str, Any] = json.loads(data)
    return parsed


def _chunk_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    return str((choice.get("delta") or {}).get("content") or choice.get("text") or "")


class CustomerUser(HttpUser):
    """One slot of the open-loop generator (see the module docstring)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.dialogue: Dialogue | None = None
        self.tier = ""

    @property
    def _shape(self) -> OpenLoopShape:
        shape = self.environment.shape_class
        assert isinstance(shape, OpenLoopShape), "loadtests users need an open-loop shape"
        return shape

    @property
    def _spec(self) -> RunSpec:
        return self._shape.spec

    @task
    def arrive(self) -> None:
        shape = self._shape
        arrival = shape.schedule.claim(shape.now_s())
        if arrival is None:
            gevent.sleep(0.5)  # the schedule is spent: idle until the shape ends the run
            return
        gevent.sleep(max(arrival.t_s - shape.now_s(), 0.0))
        if arrival.prompt_tokens is not None:
            self._new_dialogue()
            assert self.dialogue is not None
            messages = self.dialogue.sized_messages(arrival.prompt_tokens)
            max_tokens, ignore_eos = arrival.max_tokens or self._spec.max_tokens, True
        else:
            if self.dialogue is None or self.dialogue.done or self.dialogue.turn >= (self._spec.max_turns or 99):
                self._new_dialogue()
            assert self.dialogue is not None
            messages, max_tokens = self.dialogue.next_messages(), self._spec.max_tokens
            ignore_eos = self._spec.ignore_eos
        stream = self.rng.random() < self._spec.stream_fraction
        record = RequestRecord(due_s=arrival.t_s, sent_s=shape.now_s(), tier=self.tier, stream=stream,
                               topic=self.dialogue.topic, turn=self.dialogue.turn)
        shape.in_flight += 1
        try:
            text = self._send(record, self._body(messages, max_tokens, ignore_eos, record.stream))
        finally:
            shape.in_flight -= 1
        shape.records.append(record)
        if text is not None and arrival.prompt_tokens is None:
            self.dialogue.answered(text)
        self._fire(record)

    def _new_dialogue(self) -> None:
        tiers = list(self._spec.tiers)
        self.tier = self.rng.choices(tiers, weights=[self._spec.tiers[t].weight for t in tiers])[0]
        self.dialogue = Dialogue.pick(load_script(), self.rng)

    def _body(self, messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._spec.model, "messages": messages, "max_tokens": max_tokens}
        if ignore_eos:
            body["ignore_eos"] = True
        priority = self._spec.tiers[self.tier].priority
        if priority is not None:
            body["priority"] = priority
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return body

    def _send(self, record: RequestRecord, body: dict[str, Any]) -> str | None:
        """Send one request, fill `record`; the answer's text, None when it failed."""
        headers = {"Authorization": f"Bearer {self._spec.keys[self.tier]}"}
        name = f"{_CHAT_PATH} [{'stream' if record.stream else 'json'}]"
        start = time.perf_counter()
        with self.client.post(
            _CHAT_PATH, json=body, headers=headers, stream=record.stream, catch_response=True, name=name
        ) as resp:
            record.status = resp.status_code or 0
            if record.status != 200:
                record.retry_after_s = retry_after_s(resp.headers.get("Retry-After"))
                record.error = _error_message(resp)
                resp.failure(f"{record.status}: {record.error}")
                return None
            try:
                text = self._read_stream(resp, start, record) if record.stream else self._read_json(resp, start, record)
            except Exception as exc:  # a broken stream or body fails this request, not the user
                record.error = f"{type(exc).__name__}: {exc}"
                resp.failure(record.error)
                return None
            if record.error is not None:
                resp.failure(record.error)
                return None
            resp.success()
            return text

    def _read_json(self, resp: Any, start: float, record: RequestRecord) -> str:
        data = resp.json()
        record.e2e_s = record.ttft_s = time.perf_counter() - start
        record.output_tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        return str(data["choices"][0]["message"]["content"])

    def _read_stream(self, resp: Any, start: float, record: RequestRecord) -> str:
        chunks: list[Chunk] = []
        pieces: list[str] = []
        final_tokens: int | None = None
        for line in resp.iter_lines(chunk_size=None):
            event = parse_sse_line(line)
            if event is None:
                continue
            now = time.perf_counter() - start
            if "error" in event:
                record.error = str(event["error"].get("message", event["error"]))
                break
            usage = event.get("usage")
            tokens = int(usage["completion_tokens"]) if usage else None
            if event.get("choices"):
                text = _chunk_text(event)
                pieces.append(text)
                chunks.append(Chunk(now, tokens, len(text)))
            elif tokens is not None:
                final_tokens = tokens  # the closing usage-only chunk
        record.e2e_s = time.perf_counter() - start
        timing = stream_timing(chunks, final_tokens)
        record.ttft_s, record.tpot_s, record.itl_s = timing.ttft_s, timing.tpot_s, list(timing.itl_s)
        record.output_tokens, record.counting = final_tokens or timing.output_tokens, timing.counting
        return "".join(pieces)

    def _fire(self, record: RequestRecord) -> None:
        """The LLM rows, under their own request type so the HTTP rows stay as they are."""
        if not record.ok:
            return
        fire = self.environment.events.request.fire
        tier, tokens = record.tier, record.output_tokens

        def event(name: str, value_ms: float, length: int = 0) -> None:
            fire(request_type=LLM_REQUEST_TYPE, name=f"{name} {tier}", response_time=value_ms, response_length=length,
                 exception=None, context={"tier": tier})

        if record.ttft_s is not None:
            event("TTFT", record.ttft_s * 1000)
        for gap in record.itl_s:
            event("ITL", gap * 1000, 1)
        if record.tpot_s is not None:
            event("TPOT", record.tpot_s * 1000)
        if record.e2e_s:
            event("E2E", record.e2e_s * 1000, tokens)
            event("output tok/s", tokens / record.e2e_s, tokens)


def _error_message(resp: Any) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except Exception:
        return str(getattr(resp, "error", None) or (resp.text or "")[:200] or "no response")
