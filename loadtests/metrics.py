"""Token-accurate timings of one request, from when each SSE chunk arrived and how many tokens it carried.

Servers send several tokens per message (surge's engine every 4), so ITL is computed per *token*: a chunk of k
new tokens that came `gap` after the previous one contributes k gaps of `gap / k`. Token counts come from vLLM's
continuous usage stats (cumulative `completion_tokens` on every chunk); a server without them gets the final usage
spread over the chunks by text length, and the record says which was used.
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Chunk", "RequestRecord", "StreamTiming", "retry_after_s", "stream_timing"]

Counting = Literal["usage", "text", "none"]


@dataclass(frozen=True)
class Chunk:
    """One SSE message: arrival time (s since the request was sent), cumulative tokens if the server said, text."""

    t_s: float
    tokens: int | None
    text_chars: int


@dataclass(frozen=True)
class StreamTiming:
    ttft_s: float | None
    itl_s: tuple[float, ...]
    tpot_s: float | None
    output_tokens: int
    counting: Counting


def _token_counts(chunks: list[Chunk], final_tokens: int | None) -> tuple[list[int], Counting]:
    """New tokens per chunk."""
    if chunks and all(c.tokens is not None for c in chunks):
        counts, before = [], 0
        for c in chunks:
            assert c.tokens is not None
            counts.append(max(c.tokens - before, 0))
            before = max(before, c.tokens)
        return counts, "usage"
    chars = sum(c.text_chars for c in chunks)
    if not final_tokens or not chars:
        return [0 for _ in chunks], "none"
    # Largest-remainder split of the final count by text length.
    raw = [final_tokens * c.text_chars / chars for c in chunks]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: final_tokens - sum(counts)]:
        counts[i] += 1
    return counts, "text"


def stream_timing(chunks: list[Chunk], final_tokens: int | None = None) -> StreamTiming:
    """TTFT, per-token ITL and TPOT of a stream; chunks with no new token (role, finish, usage) are ignored."""
    counts, counting = _token_counts(chunks, final_tokens)
    carrying = [(c.t_s, n) for c, n in zip(chunks, counts, strict=True) if n > 0]
    if not carrying:
        return StreamTiming(None, (), None, 0, counting)
    first_t, first_n = carrying[0]
    itl: list[float] = [0.0] * (first_n - 1)  # tokens that came with the first one
    last_t = first_t
    for t, n in carrying[1:]:
        itl.extend([(t - last_t) / n] * n)
        last_t = t
    total = sum(n for _, n in carrying)
    tpot = (last_t - first_t) / (total - 1) if total > 1 else None
    return StreamTiming(first_t, tuple(itl), tpot, total, counting)


@dataclass
class RequestRecord:
    """What the report needs of one request (one JSON line in requests.jsonl)."""

    due_s: float  # scheduled arrival, run seconds
    sent_s: float
    tier: str
    stream: bool
    topic: str
    turn: int
    status: int = 0  # HTTP status; 0: no response
    error: str | None = None
    retry_after_s: float | None = None  # a refusal's Retry-After (429/503), in seconds; None: not sent
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    output_tokens: int = 0
    counting: Counting = "none"
    itl_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["itl_s"] = [round(x, 6) for x in self.itl_s]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


def retry_after_s(value: str | None, now_s: float | None = None) -> float | None:
    """A Retry-After header in seconds: delay-seconds, or an HTTP-date counted from `now_s` (epoch seconds, default
    now); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP-date is always GMT; a date without a zone is not one
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))
