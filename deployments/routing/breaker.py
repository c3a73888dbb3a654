"""Circuit breaker for one pool as a pure state machine.

closed --(failure_threshold consecutive failures)--> open --(open_s elapsed)--> half_open, which lets
exactly one probe through: its success closes the breaker, its failure (or its timeout) reopens it.
Timeouts are reported as failures: `on_result(state, ok=False, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = [
    "BreakerDecision",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "allow_request",
    "on_result",
]


class BreakerStatus(StrEnum):
    """The three breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens and how long it stays open."""

    failure_threshold: int = 5
    open_s: float = 10.0
    # A probe with no result after this long counts as failed, so a lost probe cannot wedge
    # the breaker half-open forever. Match the request timeout.
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.open_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"invalid breaker policy {self}")


@dataclass(frozen=True)
class BreakerState:
    """Everything the breaker remembers; the default is a fresh, closed breaker."""

    status: BreakerStatus = BreakerStatus.CLOSED
    consecutive_failures: int = 0
    opened_at: float | None = None
    probe_in_flight: bool = False
    probe_started_at: float | None = None


@dataclass(frozen=True)
class BreakerDecision:
    """Whether a request may go to the pool; `retry_after_s` is set when it may not."""

    allowed: bool
    is_probe: bool
    retry_after_s: float | None
    reason: str


_CLOSED = BreakerState()


def on_result(state: BreakerState, ok: bool, now: float, policy: BreakerPolicy) -> BreakerState:
    """Fold one request outcome (a timeout is `ok=False`) into the breaker state."""
    if state.status is BreakerStatus.HALF_OPEN:
        if ok:
            return _CLOSED
        return _open(replace(state, consecutive_failures=state.consecutive_failures + 1), now)
    if state.status is BreakerStatus.OPEN:
        # Stragglers sent before the breaker opened say nothing about the pool now;
        # only the half-open probe decides.
        return state
    if ok:
        return _CLOSED
    failures = state.consecutive_failures + 1
    if failures >= policy.failure_threshold:
        return _open(replace(state, consecutive_failures=failures), now)
    return replace(state, consecutive_failures=failures)


def allow_request(state: BreakerState, now: float, policy: BreakerPolicy) -> tuple[BreakerDecision, BreakerState]:
    """Decide whether a request may pass, returning the state to keep (a probe changes it)."""
    if state.status is BreakerStatus.CLOSED:
        return BreakerDecision(True, False, None, "breaker closed"), state
    if state.status is BreakerStatus.OPEN:
        return _allow_when_open(state, now, policy)
    return _allow_when_half_open(state, now, policy)


def _allow_when_open(state: BreakerState, now: float, policy: BreakerPolicy) -> tuple[BreakerDecision, BreakerState]:
    opened_at = now if state.opened_at is None else state.opened_at
    remaining_s = opened_at + policy.open_s - now
    if remaining_s > 0:
        reason = f"breaker open after {state.consecutive_failures} failures; {remaining_s:.1f}s left"
        return BreakerDecision(False, False, remaining_s, reason), state
    return _start_probe(state, now)


def _allow_when_half_open(
    state: BreakerState, now: float, policy: BreakerPolicy
) -> tuple[BreakerDecision, BreakerState]:
    if not state.probe_in_flight:
        return _start_probe(state, now)
    started_at = now if state.probe_started_at is None else state.probe_started_at
    if now - started_at >= policy.timeout_s:
        reopened = _open(state, now)
        reason = f"probe timed out after {policy.timeout_s:.1f}s; breaker reopened"
        return BreakerDecision(False, False, policy.open_s, reason), reopened
    # Everyone but the probe waits for its verdict, at most until the probe times out.
    wait_s = started_at + policy.timeout_s - now
    return BreakerDecision(False, False, min(policy.open_s, wait_s), "half-open: probe in flight"), state


def _start_probe(state: BreakerState, now: float) -> tuple[BreakerDecision, BreakerState]:
    probing = replace(state, status=BreakerStatus.HALF_OPEN, probe_in_flight=True, probe_started_at=now)
    return BreakerDecision(True, True, None, "half-open: this request is the probe"), probing


def _open(state: BreakerState, now: float) -> BreakerState:
    return replace(
        state,
        status=BreakerStatus.OPEN,
        opened_at=now,
        probe_in_flight=False,
        probe_started_at=None,
    )
