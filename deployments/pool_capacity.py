"""Live pool capacity for admission: running and starting replicas per pool, watched off the request path.

The traffic router polls Serve's status in a thread once a second; ingress replicas read the result with the
breaker snapshot they already refresh, so shedding follows the fleet as the autoscaler grows or shrinks it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from deployments.admission.capacity import PoolCapacity

__all__ = [
    "CapacityWatch",
    "PoolSize",
    "ReplicaCounts",
    "next_capacity",
    "read_decisions",
    "read_shed_signal",
    "record_decision",
    "write_shed_signal",
]

logger = logging.getLogger("surge.capacity")
_POLL_S = 1.0
_STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")
# Weight of the newest measured cold start in the running estimate.
_COLD_START_WEIGHT = 0.5
# The autoscaler (in Serve's controller) learns that a pool sheds through Ray's internal KV store: the policy
# never scales in while its pool sheds. Written at most this often per pool.
_SHED_WRITE_S = 1.0
_SHED_KEY = "surge:shed:{deployment}"


def write_shed_signal(deployment: str, at_s: float) -> None:
    """Blocking (a GCS call): record that `deployment`'s pool shed a request at wall time `at_s`."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_SHED_KEY.format(deployment=deployment), str(at_s).encode(), overwrite=True)


_DECISIONS_KEY = "surge:autoscaling:{deployment}"
_DECISIONS_KEPT = 50


def record_decision(deployment: str, decision: dict[str, object]) -> None:
    """Blocking (GCS): append one autoscaling decision to the pool's recent history (operators and tests read
    it; called only when the decision changes, so the controller's loop pays it rarely)."""
    from ray.experimental import internal_kv

    history = [*read_decisions(deployment), decision][-_DECISIONS_KEPT:]
    internal_kv._internal_kv_put(_DECISIONS_KEY.format(deployment=deployment), json.dumps(history).encode(),
                                 overwrite=True)  # fmt: skip


def read_decisions(deployment: str) -> list[dict[str, object]]:
    """The pool's recent autoscaling decisions, oldest first ([] when none or no Ray)."""
    try:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(_DECISIONS_KEY.format(deployment=deployment))
        return list(json.loads(raw)) if raw else []
    except Exception:
        return []


def read_shed_signal(deployment: str) -> float | None:
    """Wall time of the pool's last shed, or None (never, or no Ray here)."""
    try:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(_SHED_KEY.format(deployment=deployment))
        return float(raw) if raw else None
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class PoolSize:
    """What config says of a pool: Serve deployment name, per-replica limit, assumed cold start."""

    deployment: str
    max_ongoing_requests: int
    replicas: int
    cold_start_s: float


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    running: int
    starting: int


@dataclass
class _PoolWatch:
    size: PoolSize
    cold_start_s: float
    starting_since: float | None = None
    capacity: PoolCapacity = field(init=False)

    def __post_init__(self) -> None:
        self.capacity = PoolCapacity(self.size.replicas, self.size.max_ongoing_requests)


def next_capacity(watch: _PoolWatch, counts: ReplicaCounts, now: float) -> None:
    """Fold one status poll into the watch: starting replicas get an expected ready time from the cold start
    estimate, which learns from each start seen end to end."""
    was_starting = watch.capacity.starting_replicas
    if counts.starting and watch.starting_since is None:
        watch.starting_since = now
    elif not counts.starting and watch.starting_since is not None:
        if was_starting and counts.running > watch.capacity.replicas:
            measured = now - watch.starting_since
            watch.cold_start_s += _COLD_START_WEIGHT * (measured - watch.cold_start_s)
        watch.starting_since = None
    ready_in = None
    if watch.starting_since is not None:
        ready_in = max(0.0, watch.cold_start_s - (now - watch.starting_since))
    watch.capacity = PoolCapacity(
        counts.running, watch.size.max_ongoing_requests, counts.starting, ready_in, watch.capacity.ttft_s
    )


def _serve_counts(app_name: str) -> dict[str, ReplicaCounts]:
    """Blocking: one Serve status call (run it in a thread)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    counts = {}
    for name, deployment in app.deployments.items():
        states = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
        starting = sum(states.get(s, 0) for s in _STARTING_STATES)
        counts[name] = ReplicaCounts(states.get("RUNNING", 0), starting)
    return counts


class CapacityWatch:
    """Polls replica counts in the background; `snapshot()` never blocks."""

    def __init__(
        self, pools: Mapping[str, PoolSize], counts: Callable[[str], dict[str, ReplicaCounts]] = _serve_counts
    ) -> None:
        self._pools = {name: _PoolWatch(size, size.cold_start_s) for name, size in pools.items()}
        self._counts = counts
        self._task: asyncio.Task[None] | None = None
        self._shed_written: dict[str, float] = {}

    def snapshot(self) -> dict[str, PoolCapacity]:
        self._ensure_polling()
        return {name: watch.capacity for name, watch in self._pools.items()}

    async def note_shed(self, pools: list[str]) -> None:
        """Ingresses shed requests for `pools`: tell the autoscaler (rate-limited, in a thread)."""
        now = time.time()
        for pool in pools:
            watch = self._pools.get(pool)
            if watch is None or now - self._shed_written.get(pool, 0.0) < _SHED_WRITE_S:
                continue
            self._shed_written[pool] = now
            try:
                await asyncio.to_thread(write_shed_signal, watch.size.deployment, now)
            except Exception as exc:
                logger.warning("could not record shedding of pool %s: %r", pool, exc)

    def _ensure_polling(self) -> None:
        if self._pools and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def poll_once(self, app_name: str) -> None:
        counts = await asyncio.to_thread(self._counts, app_name)
        now = time.monotonic()
        for watch in self._pools.values():
            if watch.size.deployment in counts:
                next_capacity(watch, counts[watch.size.deployment], now)

    async def _poll_forever(self) -> None:
        app_name = _app_name()
        while True:
            try:
                await self.poll_once(app_name)
            except Exception as exc:  # the controller restarting: keep the last snapshot
                logger.warning("replica counts unavailable: %r", exc)
            await asyncio.sleep(_POLL_S)


def _app_name() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().app_name)
    except Exception:
        return "surge"
