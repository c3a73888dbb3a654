"""A measured fidelity run (benchmarks/simulator_fidelity.py) and its phases replayed in the simulator: the
requests as sent, with the token counts the server reported, on one fixed replica (autoscaling/fidelity.py
calibrates on them, autoscaling/busy_host.py fits the busy-host delay)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.serve.config import AutoscalingConfig

from autoscaling.host_calibration import HostSamples, Window
from autoscaling.profiles import EngineProfile
from autoscaling.simulator import PolicySetup, SimResult, simulate
from autoscaling.traces import Arrival, TierMix

__all__ = ["BusyPhase", "Measured", "MeasuredRequest", "as_arrivals", "fixed_pool", "label_ttfts", "percentile",
           "sim_tpot", "sim_ttfts"]  # fmt: skip

# One tier: the measured run has admission off, so every request has the same priority in the engine.
_TIER = TierMix("all", 1.0, 3, 1.0)


@dataclass(frozen=True, slots=True)
class MeasuredRequest:
    t_s: float  # when it was sent, from the start of its schedule
    ttft_s: float | None
    latency_s: float
    tokens: int
    prompt_tokens: int
    label: str = "trace"

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.tokens - 1)


@dataclass(frozen=True)
class BusyPhase:
    """A busy-host calibration phase: its requests, played beside `hogs` CPU hogs or `other_engines` engines of
    another pool decoding throughout."""

    hogs: int
    requests: list[MeasuredRequest]
    other_engines: int = 0

    @property
    def name(self) -> str:
        return f"engines{self.other_engines + 1}" if self.other_engines else f"hogs{self.hogs}"


@dataclass(frozen=True)
class Measured:
    calibration: list[MeasuredRequest]
    trace: list[MeasuredRequest]
    replicas: list[tuple[float, int]]  # (s since the trace started, serving replicas)
    decisions: list[dict[str, Any]]  # the policy's decisions, t_s since the trace started
    client_cpu_cores: float
    host: HostSamples | None = None  # the cluster's CPU by process (runs before the host model: None)
    calibration_origin_unix_s: float = 0.0
    trace_origin_unix_s: float = 0.0
    calibration_client_cpu_s: float = 0.0  # the calibration's trace player's own CPU (it runs on the same host)
    busy: list[BusyPhase] = field(default_factory=list)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Measured:
        labels = raw["calibration"]["labels"]
        return cls(
            calibration=[_request(r, label) for r, label in zip(raw["calibration"]["records"], labels, strict=True)
                         if r["error"] is None],
            trace=[_request(r) for r in raw["trace"]["records"] if r["error"] is None],
            replicas=[(float(t), int(n)) for t, n in raw["replicas_timeline"]],
            decisions=list(raw["decisions"]), client_cpu_cores=float(raw["trace"]["client_cpu_cores"]),
            host=HostSamples(raw["host_cpu"]) if "host_cpu" in raw else None,
            calibration_origin_unix_s=float(raw["calibration"]["start_unix_s"]),
            trace_origin_unix_s=float(raw["trace"]["start_unix_s"]),
            calibration_client_cpu_s=float(raw["calibration"].get("client_cpu_cores", 0.0))
            * float(raw["calibration"].get("wall_s", 0.0)),
            busy=[_busy_phase(p) for p in raw.get("busy_host", [])],
        )  # fmt: skip

    def labelled(self, label: str) -> list[MeasuredRequest]:
        return [r for r in self.calibration if r.label == label]

    def ttft_points(self) -> list[tuple[float, float]]:
        return [(r.t_s, r.ttft_s) for r in self.trace if r.ttft_s is not None]

    def second_replica_s(self) -> float | None:
        """When the measured pool first served on more than one replica."""
        return next((t for t, n in self.replicas if n > 1), None)

    def window(self, requests: Sequence[MeasuredRequest]) -> Window:
        """From the first request's send to the last one's end, in wall time (calibration requests)."""
        origin = self.calibration_origin_unix_s
        return Window(origin + min(r.t_s for r in requests), origin + max(r.t_s + r.latency_s for r in requests),
                      len(requests))  # fmt: skip

    def first_scale_up_s(self) -> float | None:
        ups = [float(d["t_s"]) for d in self.decisions if int(d["replicas"]) > int(d["from"])]
        return min(ups, default=None)


def _busy_phase(raw: dict[str, Any]) -> BusyPhase:
    records = zip(raw["records"], raw["labels"], strict=True)
    requests = [_request(r, label) for r, label in records if r["error"] is None]
    if "other" in raw:  # the requests sent while the other engine's streams still ran (the simulation's condition)
        until_s = _other_streams_end_s(raw)
        requests = [r for r in requests if r.t_s < until_s]
    return BusyPhase(int(raw["hogs"]), sorted(requests, key=lambda r: r.t_s), int(raw.get("other_engines", 0)))


def _other_streams_end_s(raw: dict[str, Any]) -> float:
    """When the other engine's last stream ended, in the phase's clock (runs 7 and 8: at 4.5 s, before the
    second repeat of the phase)."""
    other = raw["other"]
    offset_s = float(raw["start_unix_s"]) - float(other["start_unix_s"])
    return max(float(r["sent_s"]) + float(r["latency_s"]) for r in other["records"] if r["error"] is None) - offset_s


def _request(record: dict[str, Any], label: str = "trace") -> MeasuredRequest:
    return MeasuredRequest(float(record["sent_s"]), record["ttft_s"], float(record["latency_s"]),
                           int(record["tokens"]), int(record["prompt_tokens"] or 0), label)  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fixed_pool(replicas: int = 1) -> PolicySetup:
    config = AutoscalingConfig(min_replicas=replicas, max_replicas=replicas, initial_replicas=replicas,
                               upscale_delay_s=0, downscale_delay_s=0)  # fmt: skip
    return PolicySetup("fixed", lambda ctx: (replicas, {}), config, surge_admission=False)


def as_arrivals(requests: Sequence[MeasuredRequest]) -> list[Arrival]:
    return sorted((Arrival(r.t_s, r.prompt_tokens, max(1, r.tokens), _TIER) for r in requests),
                  key=lambda a: a.t_s)  # fmt: skip


def sim_ttfts(result: SimResult) -> list[float]:
    return [r.first_token_s - r.arrival.t_s for r in result.requests if r.first_token_s is not None]


def label_ttfts(profile: EngineProfile, requests: Sequence[MeasuredRequest]) -> dict[str, tuple[float, float]]:
    """A phase's requests simulated together on one replica, as they ran: (measured, simulated) mean TTFT by
    label."""
    ordered = sorted(requests, key=lambda r: r.t_s)
    simulated: dict[str, list[float]] = {r.label: [] for r in ordered}
    for request in simulate(as_arrivals(ordered), profile, fixed_pool(), end_s=0.0).requests:
        if request.first_token_s is not None:  # seq: the index of its arrival, in the order of `ordered`
            simulated[ordered[request.seq].label].append(request.first_token_s - request.arrival.t_s)
    return {label: (statistics.mean(r.ttft_s or 0.0 for r in ordered if r.label == label),
                    statistics.mean(ttfts or [math.nan])) for label, ttfts in simulated.items()}  # fmt: skip


def sim_tpot(request: Any) -> float | None:
    if request.first_token_s is None or request.done_s is None or request.generated < 2:
        return None
    return float((request.done_s - request.first_token_s) / (request.generated - 1))
