"""Engine profiles for the simulator: how long prefill and one decode step take, by batch size, plus limits.

`local-vllm-cpu` is measured on this machine by `python -m autoscaling.profile` (autoscaling/profiles/).
The GPU profiles are built from published measurements, cited beside each number; where a number is derived
rather than measured, the comment says how.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["GPU_PROFILES", "PROFILE_DIR", "EngineProfile", "load_profile", "profile_from_dict"]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class EngineProfile:
    """One replica's engine: decode step time by batch size (interpolated), prefill cost, limits, cold start."""

    name: str
    # (batch size, seconds per decode step for the whole batch), sorted by batch size.
    decode_step_s: list[tuple[int, float]]
    prefill_s_per_token: float
    prefill_base_s: float
    max_num_seqs: int  # the engine's batch limit; more wait inside the engine
    max_ongoing_requests: int  # Serve's per-replica limit; more wait at the handle
    cold_start_s: float
    gpus_per_replica: float = 1.0
    # Time a request spends before reaching the engine (HTTP, ingress, Serve hops), measured at idle.
    request_overhead_s: float = 0.0
    # Of that, the work the serving path does one request at a time (the ingress's and the replica's event
    # loops on a shared host): simultaneous arrivals queue for it. 0 for the GPU profiles (many ingress
    # replicas on their own CPUs); fitted on bursts in the local cluster (autoscaling/fidelity.py).
    serial_s_per_request: float = 0.0
    # The host model (autoscaling/sim_host.py): replicas and the serving path sharing one host's CPUs, as in the
    # local profile (2 cores for every engine, HAProxy, the ingress, the routers and Ray). All 0 for the GPU
    # profiles: each replica has its device and the serving path CPUs the engines do not use, so the host is
    # not the bottleneck and is not modelled. Measured by `python -m autoscaling.profile` (host_cores, the cold
    # start's CPU) and through the cluster by benchmarks/simulator_fidelity.py (autoscaling/fidelity.py).
    host_cores: float = 0.0  # 0: the host is not modelled
    idle_cores: float = 0.0  # the cluster's own CPU with nothing to serve (Ray's daemons, the Serve controller)
    engine_cores: float = 0.0  # cores an engine takes while it has sequences running
    serving_cpu_s_per_request: float = 0.0  # CPU of a request's way through the serving path (its tokens included)
    # The same by the batch the request joins (batch size, CPU s), interpolated; when measured it replaces the
    # mean: the replica forwards each engine step's outputs at once, so a request in a large batch costs less.
    serving_cpu_s_by_batch: list[tuple[int, float]] = field(default_factory=list)
    light_processes: int = 1  # the processes idle_cores and the serving path's CPU are spread over
    cold_start_cpu_s: float = 0.0  # CPU a starting replica needs until it serves (0: cold_start_s of wall time)
    cold_start_cores: float = 0.0  # the cores a start takes while it has them (cold_start_cpu_s / its wall alone)
    # The serving path's extra delay on a request's way to its first token per unit of the host's
    # oversubscription beyond 1 (every consumer's CPU demand / host_cores - 1): its processes' wake-ups wait for a
    # core when every core is busy. Measured beside a second engine decoding (autoscaling/busy_host.py).
    busy_host_delay_s: float = 0.0
    source: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    def step_s(self, batch: int) -> float:
        """Seconds of one decode step for `batch` running sequences (linear between measured points)."""
        return _by_batch(self.decode_step_s, batch, extrapolate=True)

    def serving_cpu_s(self, batch: int) -> float:
        """The serving path's CPU for a request joining a batch of `batch` (the mean if not measured by batch;
        held at the last measured point beyond it: a cost per request does not fall below zero)."""
        if not self.serving_cpu_s_by_batch:
            return self.serving_cpu_s_per_request
        return _by_batch(self.serving_cpu_s_by_batch, batch, extrapolate=False)

    def prefill_s(self, tokens: int) -> float:
        return self.prefill_base_s + tokens * self.prefill_s_per_token if tokens else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _by_batch(points: list[tuple[int, float]], batch: int, extrapolate: bool) -> float:
    """Linear between measured (batch, value) points; beyond the last, the last segment's slope or held."""
    sizes = [b for b, _ in points]
    if batch <= sizes[0] or len(points) == 1:
        return points[0][1] if batch <= sizes[0] else points[-1][1]
    if batch >= sizes[-1]:
        (b0, t0), (b1, t1) = points[-2], points[-1]
        return t1 + (batch - b1) * (t1 - t0) / max(1, b1 - b0) if extrapolate else t1
    i = bisect.bisect_left(sizes, batch)
    (b0, t0), (b1, t1) = points[i - 1], points[i]
    return t0 + (batch - b0) * (t1 - t0) / (b1 - b0)


def profile_from_dict(data: dict[str, object]) -> EngineProfile:
    """A profile from its JSON object (as `EngineProfile.to_json` writes it)."""
    data = dict(data)
    for legacy in ("shared_host", "replica_cores"):  # replaced by the host model (profiles written before it)
        data.pop(legacy, None)
    steps = [(int(b), float(t)) for b, t in data.pop("decode_step_s")]  # type: ignore[attr-defined]
    serving = [(int(b), float(c)) for b, c in data.pop("serving_cpu_s_by_batch", [])]  # type: ignore[attr-defined]
    data["serving_cpu_s_by_batch"] = sorted(serving)
    return EngineProfile(decode_step_s=sorted(steps), **data)  # type: ignore[arg-type]


def load_profile(name_or_path: str) -> EngineProfile:
    """A GPU profile by name, a JSON file, or a measured profile's name in autoscaling/profiles/."""
    if name_or_path in GPU_PROFILES:
        return GPU_PROFILES[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        path = PROFILE_DIR / f"{name_or_path}.json"
    return profile_from_dict(json.loads(path.read_text()))


# Llama-3.1-8B-Instruct, BF16, vLLM, one GPU per replica.
_H100_SOURCE = (
    "InferenceBench concurrency sweep, Llama-3.1-8B-Instruct fp16 on one H100-80GB-HBM3, vLLM 0.21.0 "
    "(https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/): TPOT p50 6.48 ms at concurrency 1, "
    "6.59 ms at 4, 10.94 ms at 16, 46.91 ms at 64; TTFT p50 13.98 ms at concurrency 1"
)
_A100_SOURCE = (
    "vLLM throughput-latency sweep on one A100 40GB, Llama-3.1-8B-Instruct BF16, vLLM 0.23.0, 1024 in / 128 out "
    "(https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on): ~75 tok/s at concurrency 1 (13.3 ms per "
    "token), 6.6x the throughput at concurrency 8 with almost no latency cost (so ~16 ms per step at 8)"
)
_COLD_START_NOTE = (
    "assumed, not measured: pulling nothing (image cached), loading ~16 GB of weights and capturing CUDA graphs "
    "is one to several minutes for 7B-70B models; 120 s is the low end for an 8B model on a fresh GPU node"
)
_PREFILL_NOTE = (
    "derived: ~2 x 8e9 FLOPs per prompt token; at ~50% of the GPU's dense BF16 peak (989 TFLOPs H100 SXM, 312 "
    "TFLOPs A100) that is ~0.03 ms (H100) and ~0.1 ms (A100) per token"
)

GPU_PROFILES: dict[str, EngineProfile] = {
    "h100-llama3.1-8b": EngineProfile(
        name="h100-llama3.1-8b",
        # Step = TPOT at that concurrency; 64's TPOT includes prefill interference, so it bounds from above.
        decode_step_s=[(1, 0.00648), (4, 0.00659), (16, 0.01094), (64, 0.04691)],
        prefill_s_per_token=0.00003,
        prefill_base_s=0.008,
        max_num_seqs=64,
        max_ongoing_requests=64,
        cold_start_s=120.0,
        source=_H100_SOURCE,
        notes={"cold_start_s": _COLD_START_NOTE, "prefill_s_per_token": _PREFILL_NOTE},
    ),
    "a100-llama3.1-8b": EngineProfile(
        name="a100-llama3.1-8b",
        # 1 and 8 from the source; 64 extrapolated from the H100 curve's shape (step x ~7 from 8 to 64).
        decode_step_s=[(1, 0.0133), (8, 0.0161), (64, 0.11)],
        prefill_s_per_token=0.0001,
        prefill_base_s=0.015,
        max_num_seqs=64,
        max_ongoing_requests=64,
        cold_start_s=150.0,
        source=_A100_SOURCE,
        notes={
            "cold_start_s": _COLD_START_NOTE,
            "prefill_s_per_token": _PREFILL_NOTE,
            "decode_step_s[64]": "extrapolated, not measured",
        },
    ),
}
