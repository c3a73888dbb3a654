"""Discrete-event simulation of a pool: arrivals by tier, admission and shedding, a FIFO queue at the handle,
replicas with continuous batching and cold starts, and the autoscaling policy called as Serve calls it.

The policy is the same object Serve calls (SurgePolicy, Ray's default policy, KpaPolicy), wrapped by Serve's own
`_apply_autoscaling_config` (scaling factors, delays) with Serve's clock pointed at simulated time, and handed a
real `AutoscalingContext`. Admission for the surge policies is deployments/admission/capacity.py's decision.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ray.serve import autoscaling_policy as serve_policy
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from autoscaling.profiles import EngineProfile
from autoscaling.sim_engine import SimReplica, SimRequest
from autoscaling.sim_host import HostCpu, HostShare
from autoscaling.traces import Arrival, tier_slos
from cluster.config import ShedConfig
from deployments.admission.capacity import PoolCapacity
from deployments.admission.decisions import shed_decision

__all__ = ["PolicySetup", "SimResult", "simulate"]

# Serve's control loop runs every CONTROL_LOOP_INTERVAL_S (0.1 s); 0.5 s changes nothing for per-second rate
# traces at promo scale, but a trace whose bursts last less than a tick needs Serve's own (PolicySetup.tick_s).
_TICK_S = 0.5
_SAMPLE_S = 5.0
_DEPLOYMENT = DeploymentID(name="pool-sim", app_name="sim")


@dataclass
class PolicySetup:
    """A policy as Serve would run it: the callable, its AutoscalingConfig, and whether surge admits."""

    name: str
    policy: Callable[[Any], tuple[Any, dict[str, Any]]]
    config: AutoscalingConfig
    surge_admission: bool
    shed: ShedConfig = field(default_factory=ShedConfig)
    origin_s: float = 0.0  # wall time of the trace's t=0 (promo calendars use wall times)
    tick_s: float = _TICK_S  # how often the policy runs (and the demand is sampled)


@dataclass
class SimResult:
    requests: list[SimRequest]
    shed: list[Arrival]
    timeline: list[dict[str, Any]]
    gpu_hours: float
    max_replicas: int
    decisions: list[dict[str, Any]]
    oversubscription: list[tuple[float, float]] = field(default_factory=list)  # (t_s, the host's) at each send


@contextmanager
def _serve_clock(clock: Callable[[], float]) -> Any:
    """Serve's delay logic reads time.time(); in the simulation it must read simulated time."""
    real = serve_policy.time
    serve_policy.time = SimpleNamespace(time=clock)  # type: ignore[assignment]
    try:
        yield
    finally:
        serve_policy.time = real


class _Pool:
    def __init__(self, setup: PolicySetup, profile: EngineProfile, host: HostCpu) -> None:
        self.setup, self.profile = setup, profile
        self.replicas: list[SimReplica] = []
        self.handle_queue: list[SimRequest] = []
        self.target = setup.config.initial_replicas or setup.config.min_replicas
        self.names = itertools.count()
        self.samples: list[tuple[float, float, float]] = []  # (t, total requests, queued at handle)
        self.policy_state: dict[str, Any] = {}
        self.ttft_ewma_s: float | None = None
        self.last_shed_s = -1e18
        self.host = host
        self.now_s = 0.0

    def start_replica(self, now_s: float, warm: bool) -> SimReplica:
        p = self.profile
        # On a modelled host a start is CPU work that competes with serving; otherwise a fixed wall time.
        by_cpu = not warm and self.host.modelled and p.cold_start_cpu_s > 0 and p.cold_start_cores > 0
        ready = now_s if warm else now_s + (p.cold_start_cpu_s / p.cold_start_cores if by_cpu else p.cold_start_s)
        replica = SimReplica(f"r{next(self.names)}", p, ready, host_speed=self.host_speed,
                             load_cpu_left_s=p.cold_start_cpu_s if by_cpu else 0.0)  # fmt: skip
        self.replicas.append(replica)
        return replica

    def host_share(self) -> HostShare:
        loading = sum(1 for r in self.replicas if r.load_cpu_left_s > 0)
        return self.host.share(self.now_s, (len(r.running) for r in self.replicas), loading)

    def host_speed(self) -> float:
        """The engines' and the starts' fraction of full speed on the host now."""
        return self.host_share().engine

    def advance_starts(self, dt_s: float) -> list[SimReplica]:
        """Starts on a modelled host progress by the cores they get over the next `dt_s`; those that finish."""
        cores = self.profile.cold_start_cores * self.host_share().start
        return [r for r in self.replicas if r.load_cpu_left_s > 0 and r.load(self.now_s, dt_s, cores)]

    def joining_batch(self, now_s: float, on_the_way: int) -> int:
        """The batch a request sent now joins: the pool's requests and those on the way to it (still in the
        serving path), spread over the serving replicas, with it."""
        return 1 + (self.total_requests() + on_the_way) // max(1, len(self.ready(now_s)))

    def ready(self, now_s: float) -> list[SimReplica]:
        return [r for r in self.replicas if not r.draining and r.ready_at_s <= now_s]

    def starting(self, now_s: float) -> list[SimReplica]:
        return [r for r in self.replicas if not r.draining and r.ready_at_s > now_s]

    def total_requests(self) -> int:
        return sum(r.ongoing for r in self.replicas) + len(self.handle_queue)

    def capacity(self, now_s: float) -> PoolCapacity:
        starting = self.starting(now_s)
        ready_in = min((r.ready_at_s - now_s for r in starting), default=None)
        return PoolCapacity(len(self.ready(now_s)), self.profile.max_ongoing_requests, len(starting), ready_in,
                            self.ttft_ewma_s)  # fmt: skip


def _route(pool: _Pool, request: SimRequest, now_s: float) -> SimReplica | None:
    open_ = [r for r in pool.replicas if r.accepts(now_s)]
    if not open_:
        pool.handle_queue.append(request)
        return None
    replica = min(open_, key=lambda r: r.ongoing)
    replica.admit(request, now_s)
    return replica


def _window_mean(samples: list[tuple[float, float, float]], now_s: float, window_s: float, i: int) -> float:
    values = [s[i] for s in samples if s[0] > now_s - window_s]
    return sum(values) / len(values) if values else 0.0


def _context(pool: _Pool, now_s: float) -> AutoscalingContext:
    config = pool.setup.config
    ready = pool.ready(now_s)
    ids = [ReplicaID(r.name, _DEPLOYMENT) for r in ready]
    metrics: dict[str, dict[ReplicaID, float]] = {}
    for rid, replica in zip(ids, ready, strict=True):
        for name, value in replica.stats(now_s).items():
            metrics.setdefault(name, {})[rid] = value
    window = config.look_back_period_s
    return AutoscalingContext(
        deployment_id=_DEPLOYMENT, deployment_name=_DEPLOYMENT.name, app_name=_DEPLOYMENT.app_name,
        current_num_replicas=len(ready), target_num_replicas=pool.target, running_replicas=ids,
        total_num_requests=_window_mean(pool.samples, now_s, window, 1),
        total_queued_requests=_window_mean(pool.samples, now_s, window, 2),
        aggregated_metrics=metrics, raw_metrics=None, capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas, policy_state=dict(pool.policy_state),
        last_scale_up_time=None, last_scale_down_time=None, current_time=pool.setup.origin_s + now_s, config=config,
    )  # fmt: skip


def _resize(pool: _Pool, target: int, now_s: float) -> None:
    live = [r for r in pool.replicas if not r.draining]
    for _ in range(target - len(live)):
        pool.start_replica(now_s, warm=False)
    excess = len(live) - target
    # Serve stops starting replicas first, then the least loaded running ones (they drain).
    for replica in sorted(live, key=lambda r: (r.ready_at_s <= now_s, r.ongoing))[: max(0, excess)]:
        replica.draining = True


def _tick(pool: _Pool, wrapped: Callable[[Any], tuple[int, dict[str, Any]]], now_s: float) -> dict[str, Any]:
    pool.samples.append((now_s, float(pool.total_requests()), float(len(pool.handle_queue))))
    horizon = now_s - max(pool.setup.config.look_back_period_s, 60.0)
    while pool.samples and pool.samples[0][0] < horizon:
        pool.samples.pop(0)
    decision, pool.policy_state = wrapped(_context(pool, now_s))
    config = pool.setup.config
    target = max(config.min_replicas, min(config.max_replicas, int(decision)))
    changed = target != pool.target
    pool.target = target
    _resize(pool, target, now_s)
    return {"t_s": now_s, "replicas": target, "changed": changed,
            "reason": str(pool.policy_state.get("surge_reason", pool.policy_state.get("kpa_mode", "")))}  # fmt: skip


class _ServingPath:
    """The way to the pool: the serving path's idle delay (TTFT counts it) plus the wait for its one-at-a-time
    work, so simultaneous arrivals reach the pool spread out, as a burst does through the ingress's and the
    replica's event loops (measured: autoscaling/fidelity.py). On a modelled host both take 1/speed as long, at
    the serving path's (light) share of the host, and an oversubscribed host adds its processes' wait for a
    core (`busy_delay_s`, autoscaling/sim_host.py)."""

    def __init__(self, profile: EngineProfile) -> None:
        self.profile = profile
        self.free_s = -1e18

    def reach_s(self, now_s: float, speed: float, busy_delay_s: float = 0.0) -> float:
        wait_s = max(0.0, self.free_s - now_s)
        self.free_s = max(self.free_s, now_s) + self.profile.serial_s_per_request / speed
        return now_s + wait_s + self.profile.request_overhead_s / speed + busy_delay_s


class _Run:
    """One simulation's event loop state."""

    def __init__(self, arrivals: list[Arrival], profile: EngineProfile, setup: PolicySetup, host: HostCpu) -> None:
        self.arrivals, self.profile, self.setup = arrivals, profile, setup
        self.pool = _Pool(setup, profile, host)
        self.path = _ServingPath(profile)
        self.heap: list[tuple[float, int, str, Any, int]] = []
        self.counter = itertools.count()
        self.now_s = 0.0
        self.requests: list[SimRequest] = []
        self.shed: list[Arrival] = []
        self.timeline: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []
        self.gpu_s = 0.0
        self.max_replicas = 0
        self.ticks = 0
        self.on_the_way = 0  # requests sent that have not yet reached the pool (in the serving path)
        self.oversubscription: list[tuple[float, float]] = []
        self.slos = tier_slos(arrivals)

    def push(self, t_s: float, kind: str, obj: Any = None, version: int = 0) -> None:
        heapq.heappush(self.heap, (t_s, next(self.counter), kind, obj, version))

    def schedule(self, replica: SimReplica) -> None:
        if replica.next_event_s is not None:
            self.push(replica.next_event_s, "replica", replica, replica.version)

    def send(self, index: int) -> None:
        """A request enters the serving path: its CPU there counts on the host, and it reaches the pool later."""
        pool = self.pool
        pool.host.note_request(self.now_s, pool.joining_batch(self.now_s, self.on_the_way))
        self.on_the_way += 1
        share = pool.host_share()
        self.oversubscription.append((self.now_s, share.oversubscription))
        self.push(self.path.reach_s(self.now_s, share.light, pool.host.busy_delay_s(share)), "arrival", index)

    def arrive(self, index: int) -> None:
        self.on_the_way -= 1
        arrival = self.arrivals[index]
        if self.setup.surge_admission:
            capacity = self.pool.capacity(self.now_s)
            decision = shed_decision(arrival.tier.priority, self.pool.total_requests(), self.setup.shed,
                                     capacity=capacity, slos=self.slos)  # fmt: skip
            if not decision.admit:
                self.shed.append(arrival)
                self.pool.last_shed_s = self.setup.origin_s + self.now_s
                return
        request = SimRequest(arrival, index)
        self.requests.append(request)
        replica = _route(self.pool, request, self.now_s)
        if replica is not None:
            self.schedule(replica)

    def drain_handle_queue(self) -> None:
        pool = self.pool
        while pool.handle_queue:
            open_ = [r for r in pool.replicas if r.accepts(self.now_s)]
            if not open_:
                return
            replica = min(open_, key=lambda r: r.ongoing)
            replica.admit(pool.handle_queue.pop(0), self.now_s)
            self.schedule(replica)

    def settle(self, replica: SimReplica) -> None:
        before = len(replica.ttfts)
        replica.settle(self.now_s)
        for _, ttft_s in list(replica.ttfts)[before:]:
            last = self.pool.ttft_ewma_s
            self.pool.ttft_ewma_s = ttft_s if last is None else last + 0.1 * (ttft_s - last)
        self.schedule(replica)
        self.drain_handle_queue()

    def tick(self, wrapped: Callable[[Any], tuple[int, dict[str, Any]]]) -> None:
        pool = self.pool
        pool.replicas = [r for r in pool.replicas if not (r.draining and r.ongoing == 0)]
        before = {id(r) for r in pool.replicas}
        record = _tick(pool, wrapped, self.now_s)
        for replica in pool.replicas:
            if id(replica) not in before:
                self.push(replica.ready_at_s, "ready", replica)
        if record["changed"]:
            self.decisions.append({k: v for k, v in record.items() if k != "changed"})
        if self.ticks % round(_SAMPLE_S / self.setup.tick_s) == 0:
            waiting = sum(len(r.waiting) for r in pool.replicas)
            self.timeline.append({"t_s": self.now_s, "replicas": len(pool.ready(self.now_s)),
                                  "target": pool.target, "queue": len(pool.handle_queue) + waiting})  # fmt: skip
        for replica in pool.advance_starts(self.setup.tick_s):
            self.push(replica.ready_at_s, "ready", replica)
        self.ticks += 1

    def run(self, end_s: float) -> SimResult:
        for _ in range(self.pool.target):
            self.pool.start_replica(0.0, warm=True)
        for i, arrival in enumerate(self.arrivals):
            self.push(arrival.t_s, "sent", i)
        self.push(0.0, "tick")
        wrapped = serve_policy._apply_autoscaling_config(self.setup.policy)
        last_s = 0.0
        with _serve_clock(lambda: self.setup.origin_s + self.now_s):
            while self.heap:
                t_s, _, kind, obj, version = heapq.heappop(self.heap)
                self.gpu_s += (t_s - last_s) * len(self.pool.replicas) * self.profile.gpus_per_replica
                self.max_replicas = max(self.max_replicas, len(self.pool.replicas))
                self.now_s = self.pool.now_s = last_s = t_s
                if kind == "sent":
                    self.send(obj)
                elif kind == "arrival":
                    self.arrive(obj)
                elif kind == "replica" and version == obj.version:
                    self.settle(obj)
                elif kind == "ready":
                    self.drain_handle_queue()
                elif kind == "tick":
                    self.tick(wrapped)
                    if t_s < end_s or self.pool.total_requests() > 0:
                        self.push(t_s + self.setup.tick_s, "tick")
        return SimResult(self.requests, self.shed, self.timeline, self.gpu_s / 3600, self.max_replicas,
                         self.decisions, self.oversubscription)  # fmt: skip


def simulate(
    arrivals: list[Arrival], profile: EngineProfile, setup: PolicySetup, end_s: float | None = None,
    cpu_hogs: int = 0, other_engines: int = 0,
) -> SimResult:
    """Play `arrivals` through a pool run by `setup`'s policy until `end_s` (default: the last arrival plus
    two minutes) and every admitted request has finished. The busy-host calibration phases: `cpu_hogs`
    processes outside the pool each spin on one of a modelled host's cores, `other_engines` engines outside it
    decode throughout."""
    run = _Run(arrivals, profile, setup, HostCpu(profile, cpu_hogs, other_engines))
    set_source = getattr(setup.policy, "set_shed_source", None)
    if set_source is not None:
        set_source(lambda: run.pool.last_shed_s)  # the policy hears of shedding as it does from the ingress
    last = arrivals[-1].t_s if arrivals else 0.0
    return run.run(end_s if end_s is not None else last + 120.0)
