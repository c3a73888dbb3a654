"""Calibrating the simulator against a real run, part by part (benchmarks/simulator_fidelity.py measures).

An engine profile measured alone (`python -m autoscaling.profile`) misses what the serving cluster adds on a
small shared host, so `calibrate` measures each of those parts through the cluster, in the same run:

* the decode step by batch size, from the streams' time per output token (prompts of the trace's median
  size: a step reads every sequence's context): on 2 cores the serving processes (HAProxy, ingress, replica,
  Ray's loops) take CPU from the engine for every token they forward;
* the idle overhead outside the engine: TTFT of single requests at idle beyond the engine's prefill and step;
* the prefill per prompt token and the per-request work the serving path does one request at a time (the
  ingress's and the replica's event loops), fitted together so the simulated bursts of simultaneous requests,
  the batches of 64 and 128 simultaneous streams and the short and long prompts sent while a batch decodes
  reach their first token as the measured ones did (the short-against-long estimate of the prefill alone rests
  on ten probes: in two runs it came out at 3-6x what the large batches showed);
* the cold start as the cluster sees it: from the policy's scale-up decision to the new replica serving, which
  adds Ray's actor start and a slower engine load (it shares the cores with the serving replica) to the
  engine's construction alone;
* the host model (autoscaling/sim_host.py, constants from autoscaling/host_calibration.py): the cluster's idle
  CPU (the load generator's process included), an engine's cores while it runs, the serving path's CPU per
  request by the batch it joins (the load generator's players' CPU per request added) and the processes it is
  spread over, and the CPU a start needs, so the simulated engines slow down when the serving path and a
  starting replica take the host's cores;
* the serving path's wait for a core on an oversubscribed host (`busy_host_delay_s`): every calibration phase
  above runs one engine on a host with cores to spare, and the trace's second engine leaves none. The
  second-engine phase plays the prefill phase's probes while 16 streams decode beside a second real engine
  (a second fixed calibration replica) decoding 16 streams of its own, the trace's condition once its second
  replica serves; the delay per unit of oversubscription beyond 1 is fitted so the simulated probes (the other
  engine simulated as a consumer of an engine's cores, so the engine's slower steps and prefills are the host
  model's) reach their first token when the measured ones did. The phases beside one and two CPU-hog processes
  are simulated with it as checks (a hog never sleeps and forwards no tokens: beside two the engine starves, a
  regime the model does not describe); a run without the second-engine phase fits on them.

`compare` then simulates the measured trace with the calibrated profile and with the engine profile alone (plus
its idle overhead: the model before calibration) and lines each part up with the measurement.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autoscaling.busy_host import fit_busy_host_delay
from autoscaling.measured_run import (
    Measured,
    MeasuredRequest,
    as_arrivals,
    label_ttfts,
    percentile,
    sim_tpot,
    sim_ttfts,
)
from autoscaling.profiles import EngineProfile
from autoscaling.simulator import PolicySetup, SimResult, simulate

__all__ = ["Calibration", "calibrate", "compare"]

_SERVICE_GRID_S = [i * 0.001 for i in range(31)]  # 0 to 30 ms per request
_PREFILL_FACTORS = [0.25 + 0.125 * i for i in range(23)]  # the engine's prefill alone, x 0.25 to 3


@dataclass(frozen=True)
class Calibration:
    profile: EngineProfile  # the engine profile with every part measured through the cluster
    engine_only: EngineProfile  # the engine profile alone plus its idle overhead (the uncalibrated model)
    parts: dict[str, Any]


def _cluster_steps(measured: Measured) -> list[tuple[int, float]]:
    batches = sorted({int(r.label[5:]) for r in measured.calibration if r.label.startswith("batch")})
    steps = []
    for batch in batches:
        tpots = [t for r in measured.labelled(f"batch{batch}") if (t := r.tpot_s) is not None]
        if tpots:
            steps.append((batch, statistics.median(tpots)))
    return steps


def _prefill_s_per_token(measured: Measured) -> float | None:
    """The prefill of a prompt token through the cluster while a batch decodes: the TTFT difference of the
    prefill phase's long- and short-prompt requests over their prompt tokens' difference."""
    short, long = measured.labelled("prefill-short"), measured.labelled("prefill-long")
    ttfts = [[r.ttft_s for r in group if r.ttft_s is not None] for group in (short, long)]
    if not ttfts[0] or not ttfts[1]:
        return None
    extra_tokens = statistics.mean(r.prompt_tokens for r in long) - statistics.mean(r.prompt_tokens for r in short)
    extra_s = statistics.mean(ttfts[1]) - statistics.mean(ttfts[0])
    return max(0.0, extra_s / extra_tokens) if extra_tokens > 0 else None


def _idle_overhead_s(profile: EngineProfile, singles: Sequence[MeasuredRequest]) -> float:
    """Median idle TTFT beyond the engine's prefill and first step: HTTP, HAProxy, ingress, Serve hops."""
    extra = [r.ttft_s - profile.prefill_s(r.prompt_tokens) - profile.step_s(1) for r in singles
             if r.ttft_s is not None]  # fmt: skip
    return max(0.0, statistics.median(extra)) if extra else 0.0


def _fit_error(profile: EngineProfile, phases: Sequence[Sequence[MeasuredRequest]]) -> float:
    """Squared relative error of every label's simulated mean TTFT, each phase simulated on its own."""
    error = 0.0
    for phase in phases:
        for want, got in label_ttfts(profile, phase).values():
            error += ((got - want) / max(want, 1e-9)) ** 2 if not math.isnan(got) else math.inf
    return error


def _fit_phases(measured: Measured) -> list[list[MeasuredRequest]]:
    """The phases of simultaneous arrivals, the bursts and the batches of 64 streams and more (as many at once
    as the trace runs; a fit on the 6-request bursts alone queued 128 at once 3x too long), and the prefill
    phase (its prompts, short and long, sent while a batch decodes)."""
    batches = [f"batch{b}" for b in sorted({int(r.label[5:]) for r in measured.calibration
                                            if r.label.startswith("batch")}) if b >= 64]  # fmt: skip
    prefill = [r for r in measured.calibration if r.label.startswith("prefill-")]
    return [g for g in [measured.labelled("burst"), *(measured.labelled(b) for b in batches), prefill] if g]


def _fit_prefill_and_serial(profile: EngineProfile, engine: EngineProfile, measured: Measured,
                            phase_estimate_s: float | None) -> EngineProfile:  # fmt: skip
    """The prefill per prompt token and the serving path's serial work per request, fitted together so the
    fit phases' simulated TTFTs are the measured ones (the idle overhead recomputed for each prefill). The
    prefill candidates: the engine's alone, scaled by `_PREFILL_FACTORS`, and the prefill phase's own estimate
    (short against long prompts): that estimate alone rests on ten probes, and in runs 6 and 7 it came out at
    4-6x the prefill that the batches of 64 and 128 prompts showed."""
    phases = _fit_phases(measured)
    if not phases:
        return profile
    singles = measured.labelled("single")
    candidates = {engine.prefill_s_per_token * f for f in _PREFILL_FACTORS} | {phase_estimate_s or 0.0}
    best: tuple[float, EngineProfile] = (math.inf, profile)
    for per_token_s in sorted(candidates):
        with_prefill = dataclasses.replace(profile, prefill_s_per_token=per_token_s)
        with_prefill = dataclasses.replace(with_prefill, request_overhead_s=_idle_overhead_s(with_prefill, singles))
        for serial_s in _SERVICE_GRID_S:
            candidate = dataclasses.replace(with_prefill, serial_s_per_request=serial_s)
            error = _fit_error(candidate, phases)
            if error < best[0]:
                best = (error, candidate)
    return best[1]


def calibrate(engine: EngineProfile, measured: Measured, max_ongoing_requests: int) -> Calibration:
    """Every part of the profile measured through the cluster (see the module's docstring)."""
    engine = dataclasses.replace(engine, max_ongoing_requests=max_ongoing_requests)
    singles = measured.labelled("single")
    engine_only = dataclasses.replace(engine, request_overhead_s=_idle_overhead_s(engine, singles))
    steps = _cluster_steps(measured) or engine.decode_step_s
    prefill_s = _prefill_s_per_token(measured)
    per_token_s = engine.prefill_s_per_token if prefill_s is None else prefill_s
    profile = dataclasses.replace(engine, decode_step_s=steps, prefill_s_per_token=per_token_s)
    profile = dataclasses.replace(profile, request_overhead_s=_idle_overhead_s(profile, singles))
    up_s, ready_s = measured.first_scale_up_s(), measured.second_replica_s()
    if up_s is not None and ready_s is not None and ready_s > up_s:
        profile = dataclasses.replace(profile, cold_start_s=ready_s - up_s)
    profile, host_parts = _host_model(profile, engine, measured)
    profile = _fit_prefill_and_serial(profile, engine, measured, prefill_s)
    profile, busy_parts = fit_busy_host_delay(profile, measured)
    parts = {
        "decode_step_s": {"engine_alone": engine.decode_step_s, "in_cluster": profile.decode_step_s},
        "prefill_s_per_token": {"engine_alone": engine.prefill_s_per_token, "prefill_phase_estimate": prefill_s,
                                "in_cluster": profile.prefill_s_per_token},
        "idle_overhead_s": {"against_engine_alone": engine_only.request_overhead_s,
                            "against_cluster_steps": profile.request_overhead_s},
        "serial_s_per_request": profile.serial_s_per_request,
        "cold_start_s": {"engine_alone": engine.cold_start_s, "in_cluster": profile.cold_start_s,
                         "scale_up_decision_s": up_s, "second_replica_serving_s": ready_s},
        "host": host_parts,
        "busy_host": busy_parts,
    }  # fmt: skip
    return Calibration(profile, engine_only, parts)


def _host_model(profile: EngineProfile, engine: EngineProfile,
                measured: Measured) -> tuple[EngineProfile, dict[str, Any]]:  # fmt: skip
    """The host model's constants measured in the run (autoscaling/host_calibration.py); off without samples."""
    host = measured.host
    if host is None or engine.host_cores <= 0:
        return profile, {"modelled": False}
    labels = sorted({r.label for r in measured.calibration})
    serving_s = host.serving_cpu_s_per_request([measured.window(measured.labelled(x)) for x in labels])
    # The load generator's players share the host's cores: their CPU per request counts with the serving path's.
    client_s = measured.calibration_client_cpu_s / max(1, len(measured.calibration))
    batches = sorted((int(x[5:]), measured.window(measured.labelled(x))) for x in labels if x.startswith("batch"))
    # By batch from the batch phases (each short, so the idle subtracted from it is small beside its CPU).
    by_batch = _not_rising([(b, host.serving_cpu_s_per_request([w]) + client_s, w.requests) for b, w in batches])
    engine_cores = host.engine_cores([w for b, w in batches if b >= 16])
    processes = host.light_processes(measured.window(measured.calibration))
    up_s, ready_s = measured.first_scale_up_s(), measured.second_replica_s()
    cold_cpu_s = 0.0
    if up_s is not None and ready_s is not None and ready_s > up_s:
        origin = measured.trace_origin_unix_s
        cold_cpu_s = host.cold_start_cpu_s(origin + up_s, origin + ready_s)
    profile = dataclasses.replace(
        profile, host_cores=host.cores, idle_cores=host.light_idle_cores(), engine_cores=engine_cores,
        light_processes=processes,
        serving_cpu_s_per_request=serving_s + client_s, serving_cpu_s_by_batch=by_batch,
        cold_start_cpu_s=cold_cpu_s or engine.cold_start_cpu_s, cold_start_cores=engine.cold_start_cores,
    )  # fmt: skip
    return profile, {"modelled": True, "host_cores": host.cores, "idle_cores": profile.idle_cores,
                     "engine_cores": engine_cores, "serving_cpu_s_per_request": serving_s,
                     "client_cpu_s_per_request": client_s, "serving_cpu_s_by_batch": by_batch,
                     "light_processes": processes,
                     "cold_start_cpu_s": {"engine_alone": engine.cold_start_cpu_s, "in_cluster": cold_cpu_s},
                     "cold_start_cores_engine_alone": engine.cold_start_cores}  # fmt: skip


def _not_rising(points: Sequence[tuple[int, float, int]]) -> list[tuple[int, float]]:
    """(batch, cost) with neighbours that rise with the batch pooled, weighted by their requests (pool adjacent
    violators): a request's serving CPU falls with the batch it shares steps with, and a phase of one or four
    requests is noise beside the idle subtracted from it (one came out at 1.6 ms, the next at 23 ms)."""
    blocks: list[list[float]] = []  # [cost, weight, number of points]
    for _, cost, weight in points:
        blocks.append([cost, float(max(1, weight)), 1])
        while len(blocks) > 1 and blocks[-1][0] > blocks[-2][0]:
            (c1, w1, n1), (c0, w0, n0) = blocks.pop(), blocks.pop()
            blocks.append([(c0 * w0 + c1 * w1) / (w0 + w1), w0 + w1, n0 + n1])
    costs = [c for c, _, n in blocks for _ in range(int(n))]
    return [(b, c) for (b, _, _), c in zip(points, costs, strict=True)]


def _summary(ttfts: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(ttfts, 0.5), "p90": percentile(ttfts, 0.9), "p99": percentile(ttfts, 0.99)}


def _phase_ttfts(requests: Sequence[tuple[float, float]], split_s: float | None) -> dict[str, dict[str, float]]:
    if split_s is None:
        return {"all": _summary([v for _, v in requests])}
    return {"one_replica": _summary([v for t, v in requests if t < split_s]),
            "after_second_replica": _summary([v for t, v in requests if t >= split_s])}  # fmt: skip


def _calibration_check(profile: EngineProfile, measured: Measured) -> dict[str, Any]:
    """The calibration phases simulated on one replica against their measurement (the fit's own residue);
    a phase's labels ("prefill-batch", "prefill-short", ...) are simulated together, as they ran."""
    out: dict[str, Any] = {}
    for phase in sorted({r.label.split("-")[0] for r in measured.calibration}):
        reqs = [r for r in measured.calibration if r.label.split("-")[0] == phase]
        for label, (want, got) in label_ttfts(profile, reqs).items():
            out[label] = {"measured_ttft_mean_s": want, "simulated_ttft_mean_s": got}
    return out


def compare(cal: Calibration, measured: Measured, make_setup: Callable[[], PolicySetup]) -> dict[str, Any]:
    """Simulate the measured trace (its requests as sent, its sizes as served) with the calibrated profile and
    with the engine profile alone; the ratios and the parts, lined up."""
    arrivals = as_arrivals(measured.trace)
    calibrated, alone = simulate(arrivals, cal.profile, make_setup()), simulate(arrivals, cal.engine_only, make_setup())
    # The same calibration with the host's CPU not modelled: what the host model adds.
    no_host = simulate(arrivals, dataclasses.replace(cal.profile, host_cores=0.0), make_setup())
    measured_ttfts = [v for _, v in measured.ttft_points()]
    split = measured.second_replica_s()

    def points(result: SimResult) -> list[tuple[float, float]]:
        return [(r.arrival.t_s, r.first_token_s - r.arrival.t_s) for r in result.requests if r.first_token_s]

    p90 = percentile(measured_ttfts, 0.9)
    return {
        "requests": len(measured.trace), "client_cpu_cores": measured.client_cpu_cores,
        "measured_ttft_s": _summary(measured_ttfts), "simulated_ttft_s": _summary(sim_ttfts(calibrated)),
        "simulated_engine_alone_ttft_s": _summary(sim_ttfts(alone)),
        "ratio": percentile(sim_ttfts(calibrated), 0.9) / p90,
        "ratio_engine_alone": percentile(sim_ttfts(alone), 0.9) / p90,
        "ratio_without_host_model": percentile(sim_ttfts(no_host), 0.9) / p90,
        "second_replica_serving_s": {"measured": split, "simulated": _second_replica_s(calibrated)},
        "ttft_by_phase": {"measured": _phase_ttfts(measured.ttft_points(), split),
                          "simulated": _phase_ttfts(points(calibrated), split),
                          "simulated_engine_alone": _phase_ttfts(points(alone), split)},
        "tpot_p50_s": {"measured": percentile([t for r in measured.trace if (t := r.tpot_s)], 0.5),
                       "simulated": percentile([t for r in calibrated.requests if (t := sim_tpot(r))], 0.5)},
        "measured_max_replicas": max((n for _, n in measured.replicas), default=0),
        "simulated_max_replicas": max((p["replicas"] for p in calibrated.timeline), default=0),
        "simulated_decisions": calibrated.decisions[:10], "measured_decisions": measured.decisions[:10],
        "parts": cal.parts, "calibration_check": _calibration_check(cal.profile, measured),
        "profile_calibrated": dataclasses.asdict(cal.profile),
        "_timeline_calibrated": calibrated.timeline, "_timeline_engine_only": alone.timeline,
        "_points_calibrated": points(calibrated),
    }  # fmt: skip


def _second_replica_s(result: SimResult) -> float | None:
    """When the simulated pool first served on two replicas (the timeline's 5 s resolution)."""
    return next((float(p["t_s"]) for p in result.timeline if p["replicas"] > 1), None)
