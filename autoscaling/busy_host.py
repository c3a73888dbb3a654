"""The serving path's wait for a core on an oversubscribed host (`busy_host_delay_s`, autoscaling/sim_host.py),
fitted on a measured run's busy-host phases (autoscaling/fidelity.py's docstring: beside a second real engine
where measured, the CPU-hog phases then checks)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

from autoscaling.measured_run import BusyPhase, Measured, MeasuredRequest, as_arrivals, fixed_pool, percentile, sim_tpot
from autoscaling.profiles import EngineProfile
from autoscaling.simulator import simulate

__all__ = ["fit_busy_host_delay"]

_BUSY_DELAY_GRID_S = [i * 0.0025 for i in range(201)]  # 0 to 0.5 s per unit of oversubscription


def _busy_sim(profile: EngineProfile, phase: BusyPhase) -> dict[str, float]:
    """A busy-host phase simulated beside its hogs or other engines: its probes' (the one-token requests') mean
    TTFT and the host's oversubscription when they were sent, its streams' median TPOT."""
    requests = phase.requests
    result = simulate(as_arrivals(requests), profile, fixed_pool(), end_s=0.0, cpu_hogs=phase.hogs,
                      other_engines=phase.other_engines)  # fmt: skip
    probe = [not r.label.endswith("-batch") for r in requests]
    by_seq = {r.seq: r for r in result.requests}  # seq: the index of its arrival, in the order of `requests`
    ttfts = [r.first_token_s - r.arrival.t_s for i, r in by_seq.items() if probe[i] and r.first_token_s]
    tpots = [t for i, r in by_seq.items() if not probe[i] and (t := sim_tpot(r))]
    over = [o for i, (_, o) in enumerate(result.oversubscription) if probe[i]]
    return {"probe_ttft_mean_s": statistics.mean(ttfts or [math.nan]), "oversubscription": statistics.mean(over),
            "stream_tpot_p50_s": percentile(tpots, 0.5)}  # fmt: skip


def _busy_measured(requests: Sequence[MeasuredRequest]) -> dict[str, float]:
    probes = [r.ttft_s for r in requests if not r.label.endswith("-batch") and r.ttft_s is not None]
    tpots = [t for r in requests if r.label.endswith("-batch") and (t := r.tpot_s) is not None]
    return {"probe_ttft_mean_s": statistics.mean(probes or [math.nan]), "stream_tpot_p50_s": percentile(tpots, 0.5)}


def fit_busy_host_delay(profile: EngineProfile, measured: Measured) -> tuple[EngineProfile, dict[str, Any]]:
    """`busy_host_delay_s` fitted on the busy-host phases (module docstring); off without them or a host model."""
    phases = [p for p in measured.busy if p.requests]
    if not phases or profile.host_cores <= 0:
        return profile, {"measured": False}
    # Fitted beside a second engine, the trace's condition, where measured; the hog phases are then checks.
    fit_on = [p for p in phases if p.other_engines] or phases
    want = {p.name: _busy_measured(p.requests)["probe_ttft_mean_s"] for p in fit_on}

    def error(delay_s: float) -> float:
        candidate = dataclasses.replace(profile, busy_host_delay_s=delay_s)
        return sum(((_busy_sim(candidate, p)["probe_ttft_mean_s"] - want[p.name]) / want[p.name]) ** 2
                   for p in fit_on)  # fmt: skip

    errors = {d: error(d) for d in _BUSY_DELAY_GRID_S}
    fitted = dataclasses.replace(profile, busy_host_delay_s=min(errors, key=lambda d: errors[d]))
    quiet = [r.ttft_s for r in measured.calibration if r.label in ("prefill-short", "prefill-long") and r.ttft_s]
    return fitted, {
        "measured": True, "busy_host_delay_s": fitted.busy_host_delay_s, "fitted_on": [p.name for p in fit_on],
        "quiet_probe_ttft_mean_s": statistics.mean(quiet or [math.nan]),
        "phases": {p.name: {"measured": _busy_measured(p.requests), "simulated": _busy_sim(fitted, p),
                            "simulated_without": _busy_sim(profile, p)} for p in phases},
    }  # fmt: skip
