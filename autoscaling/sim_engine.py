"""The simulator's replica: continuous batching with an engine profile's prefill and per-step decode times.

Between changes the batch is fixed, so a replica jumps from one change to the next (a completion, or the next
step boundary after a new request arrives) instead of simulating every step: work is O(requests), not O(steps).
New requests are prefilled together before the next decode step (vLLM without chunked prefill); the engine's
waiting queue is ordered by priority, then arrival (vLLM's priority scheduling).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from autoscaling.profiles import EngineProfile
from autoscaling.traces import Arrival

__all__ = ["SimReplica", "SimRequest"]

_TTFT_WINDOW_S = 15.0


@dataclass(eq=False)
class SimRequest:
    arrival: Arrival
    seq: int
    generated: int = 0
    prefilled: bool = False
    first_token_s: float | None = None
    done_s: float | None = None

    @property
    def remaining(self) -> int:
        return self.arrival.output_tokens - self.generated


@dataclass
class _Segment:
    start_s: float
    prefill_s: float
    step_s: float
    steps: int


@dataclass(eq=False)
class SimReplica:
    """One engine replica; the simulator calls `admit`, `settle` at the times `next_event_s` names."""

    name: str
    profile: EngineProfile
    ready_at_s: float
    draining: bool = False
    running: list[SimRequest] = field(default_factory=list)
    waiting: list[tuple[int, int, SimRequest]] = field(default_factory=list)
    next_event_s: float | None = None
    version: int = 0
    ttfts: deque[tuple[float, float]] = field(default_factory=deque)
    # The host's CPU share now (autoscaling/sim_host.py): steps and prefills take 1/speed as long; 1 when the
    # host is not modelled.
    host_speed: Callable[[], float] | None = None
    load_cpu_left_s: float = 0.0  # a start's CPU still to do (host model); it serves once that reaches 0
    _segment: _Segment | None = None

    @property
    def ongoing(self) -> int:
        return len(self.running) + len(self.waiting)

    def accepts(self, now_s: float) -> bool:
        return not self.draining and now_s >= self.ready_at_s and self.ongoing < self.profile.max_ongoing_requests

    def admit(self, request: SimRequest, now_s: float) -> None:
        """A request routed here: it waits in the engine until the next step boundary."""
        heapq.heappush(self.waiting, (request.arrival.tier.priority, request.seq, request))
        if self._segment is None:
            self._plan(now_s)
        else:
            self._interrupt(now_s)

    def _interrupt(self, now_s: float) -> None:
        seg = self._segment
        assert seg is not None
        decode_start = seg.start_s + seg.prefill_s
        done = 0 if now_s <= decode_start else math.ceil((now_s - decode_start) / seg.step_s - 1e-9)
        boundary = decode_start + min(done, seg.steps) * seg.step_s
        if self.next_event_s is None or boundary < self.next_event_s:
            self.next_event_s = max(boundary, now_s)
            self.version += 1

    def settle(self, now_s: float) -> list[SimRequest]:
        """At `next_event_s`: apply the steps done, finish requests, then plan the next segment."""
        finished = self._apply(now_s) if self._segment is not None else []
        self._plan(now_s)
        return finished

    def _apply(self, now_s: float) -> list[SimRequest]:
        seg = self._segment
        assert seg is not None
        decode_start = seg.start_s + seg.prefill_s
        steps = max(0, min(seg.steps, round((now_s - decode_start) / seg.step_s))) if now_s > decode_start else 0
        finished = []
        for request in self.running:
            made = min(steps, request.remaining)
            if made and request.generated == 0:
                request.first_token_s = decode_start + seg.step_s
                self.ttfts.append((request.first_token_s, request.first_token_s - request.arrival.t_s))
            request.generated += made
            if request.remaining <= 0:
                request.done_s = decode_start + made * seg.step_s
                finished.append(request)
        self.running = [r for r in self.running if r.remaining > 0]
        self._segment = None
        return finished

    def _plan(self, now_s: float) -> None:
        while self.waiting and len(self.running) < self.profile.max_num_seqs:
            self.running.append(heapq.heappop(self.waiting)[2])
        if not self.running:
            self._segment, self.next_event_s = None, None
            self.version += 1
            return
        fresh = [r for r in self.running if not r.prefilled]
        for request in fresh:
            request.prefilled = True
        # The host's share read when a segment is planned, i.e. at each of this replica's arrivals and
        # completions; a change elsewhere between two of them is seen at the next.
        speed = self.host_speed() if self.host_speed is not None else 1.0
        prefill_s = self.profile.prefill_s(sum(r.arrival.prompt_tokens for r in fresh)) / speed
        step_s = self.profile.step_s(len(self.running)) / speed
        steps = min(r.remaining for r in self.running)
        self._segment = _Segment(now_s, prefill_s, step_s, steps)
        self.next_event_s = now_s + prefill_s + steps * step_s
        self.version += 1

    def load(self, now_s: float, dt_s: float, cores: float) -> bool:
        """Advance a start by `dt_s` at `cores`; True once it has finished (then it serves from `ready_at_s`,
        within this interval). Until then `ready_at_s` is the estimate at the current rate."""
        if self.load_cpu_left_s <= 0:
            return False
        rate = max(cores, 1e-9)
        if self.load_cpu_left_s <= rate * dt_s:
            self.ready_at_s = now_s + self.load_cpu_left_s / rate
            self.load_cpu_left_s = 0.0
            return True
        self.load_cpu_left_s -= rate * dt_s
        self.ready_at_s = now_s + dt_s + self.load_cpu_left_s / rate
        return False

    def recent_ttft_s(self, now_s: float) -> float:
        while self.ttfts and self.ttfts[0][0] < now_s - _TTFT_WINDOW_S:
            self.ttfts.popleft()
        return max((t for _, t in self.ttfts), default=0.0)

    def stats(self, now_s: float) -> dict[str, float]:
        """What ModelReplica.record_autoscaling_stats would report (KV use approximated by batch occupancy)."""
        return {
            "engine_waiting_requests": float(len(self.waiting)),
            "engine_running_requests": float(len(self.running)),
            "kv_cache_usage": len(self.running) / self.profile.max_num_seqs,
            "ttft_recent_s": self.recent_ttft_s(now_s),
            "startup_s": self.profile.cold_start_s,
        }
