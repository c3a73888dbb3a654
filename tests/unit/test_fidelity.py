"""Calibrating the simulator against a measured run: each part the engine profile alone misses."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoscaling.busy_host import fit_busy_host_delay
from autoscaling.fidelity import calibrate
from autoscaling.measured_run import BusyPhase, Measured, MeasuredRequest, as_arrivals
from autoscaling.profiles import EngineProfile
from autoscaling.simulator import simulate
from autoscaling.traces import DEFAULT_TIERS, Arrival
from tests.unit.test_sim_host import fixed

ENGINE = EngineProfile(
    name="engine", decode_step_s=[(1, 0.01), (16, 0.02)], prefill_s_per_token=0.0, prefill_base_s=0.005,
    max_num_seqs=64, max_ongoing_requests=64, cold_start_s=40.0,
)  # fmt: skip


def burst_ttfts(profile: EngineProfile, size: int = 6) -> list[float]:
    arrivals = [Arrival(0.0, 10, 2, DEFAULT_TIERS[0]) for _ in range(size)]
    result = simulate(arrivals, profile, fixed(1), end_s=0.0)
    return sorted(r.first_token_s - r.arrival.t_s for r in result.requests if r.first_token_s is not None)


def measured(bursts: list[float], batch_tpot_s: float = 0.03, decisions: list[dict[str, Any]] | None = None,
             replicas: list[tuple[float, int]] | None = None) -> Measured:  # fmt: skip
    singles = [MeasuredRequest(float(i), 0.05, 0.05, 1, 10, "single") for i in range(5)]
    burst = [MeasuredRequest(20.0, t, t, 2, 10, "burst") for t in bursts]
    batch = [MeasuredRequest(30.0, 0.05, 0.05 + 47 * batch_tpot_s, 48, 10, "batch16") for _ in range(16)]
    return Measured(singles + burst + batch, [], replicas or [(0.0, 1)], decisions or [], 0.0)


def test_simultaneous_arrivals_queue_for_the_serving_paths_one_at_a_time_work() -> None:
    spread = burst_ttfts(dataclasses.replace(ENGINE, serial_s_per_request=0.01))
    together = burst_ttfts(ENGINE)
    assert spread[-1] - spread[0] > together[-1] - together[0] + 0.04


def test_the_serial_work_is_fitted_so_simulated_bursts_queue_as_measured_ones() -> None:
    truth = dataclasses.replace(ENGINE, serial_s_per_request=0.008, request_overhead_s=0.04)
    cal = calibrate(ENGINE, measured(burst_ttfts(truth)), 64)
    assert abs(cal.profile.serial_s_per_request - 0.008) <= 0.002


def test_decode_steps_come_from_the_streams_through_the_cluster() -> None:
    cal = calibrate(ENGINE, measured(burst_ttfts(ENGINE), batch_tpot_s=0.03), 64)
    assert dict(cal.profile.decode_step_s)[16] == 0.03
    assert cal.engine_only.decode_step_s == ENGINE.decode_step_s


def test_the_cold_start_runs_from_the_scale_up_decision_to_the_second_replica_serving() -> None:
    ups = [{"t_s": 10.0, "from": 1, "replicas": 2}]
    cal = calibrate(ENGINE, measured(burst_ttfts(ENGINE), decisions=ups, replicas=[(0.0, 1), (75.0, 2)]), 64)
    assert cal.profile.cold_start_s == 65.0
    assert cal.engine_only.cold_start_s == ENGINE.cold_start_s


def test_the_idle_overhead_is_what_the_engine_does_not_explain() -> None:
    cal = calibrate(ENGINE, measured(burst_ttfts(ENGINE)), 64)
    # singles: TTFT 0.05 s = prefill base 0.005 + one step 0.01 (engine alone) + overhead
    assert abs(cal.engine_only.request_overhead_s - 0.035) < 1e-9


def test_the_prefill_per_token_is_fitted_on_short_and_long_prompts_sent_while_a_batch_decodes() -> None:
    # The measured cluster: steps of 0.03 s (its batch16 streams), singles at 0.05 s, 0.1 ms a prompt token.
    truth = dataclasses.replace(ENGINE, decode_step_s=[(16, 0.03)], prefill_s_per_token=0.0001,
                                request_overhead_s=0.014)  # fmt: skip
    probes = [MeasuredRequest(40.0 + i, 0.05, 0.05, 1, 10, "prefill-short") for i in range(3)]
    probes += [MeasuredRequest(40.5 + i, 0.07, 0.07, 1, 210, "prefill-long") for i in range(3)]
    base = measured(burst_ttfts(truth))
    cal = calibrate(ENGINE, dataclasses.replace(base, calibration=base.calibration + probes), 64)
    assert abs(cal.profile.prefill_s_per_token - 0.0001) < 1e-12
    assert cal.parts["prefill_s_per_token"]["prefill_phase_estimate"] == cal.profile.prefill_s_per_token
    assert calibrate(ENGINE, base, 64).profile.prefill_s_per_token == ENGINE.prefill_s_per_token


def test_serving_cpu_by_batch_that_rises_with_the_batch_is_pooled_by_requests() -> None:
    from autoscaling.fidelity import _not_rising

    # one request's phase came out cheaper than four requests' (noise beside the idle subtracted)
    pooled = _not_rising([(1, 0.002, 1), (4, 0.022, 4), (16, 0.011, 16), (128, 0.010, 128)])
    assert [b for b, _ in pooled] == [1, 4, 16, 128]
    assert all(abs(c - want) < 1e-12 for (_, c), want in zip(pooled, [0.018, 0.018, 0.011, 0.010], strict=True))


HOSTED = dataclasses.replace(ENGINE, host_cores=2.0, engine_cores=1.5, idle_cores=0.2)


def busy_phase(profile: EngineProfile, hogs: int, other_engines: int = 0) -> list[MeasuredRequest]:
    """16 streams and one-token probes beside `hogs` CPU hogs or `other_engines` decoding engines, their TTFTs
    as `profile` simulates them."""
    requests = [MeasuredRequest(0.0, None, 0.0, 200, 20, "busy-batch") for _ in range(16)]
    requests += [MeasuredRequest(0.3 + 0.15 * i, None, 0.0, 1, 10, "busy-short") for i in range(6)]
    result = simulate(as_arrivals(requests), profile, fixed(1), end_s=0.0, cpu_hogs=hogs,
                      other_engines=other_engines)  # fmt: skip
    ttfts = {r.seq: r.first_token_s - r.arrival.t_s for r in result.requests if r.first_token_s is not None}
    return [dataclasses.replace(r, ttft_s=ttfts[i]) for i, r in enumerate(requests)]


def test_the_busy_host_delay_is_fitted_so_probes_beside_cpu_hogs_reach_their_first_token_as_measured() -> None:
    truth = dataclasses.replace(HOSTED, busy_host_delay_s=0.1)
    phases = [BusyPhase(1, busy_phase(truth, 1)), BusyPhase(2, busy_phase(truth, 2))]
    run = dataclasses.replace(measured([0.05]), busy=phases)
    fitted, parts = fit_busy_host_delay(HOSTED, run)
    assert abs(fitted.busy_host_delay_s - 0.1) <= 0.0025
    assert parts["phases"]["hogs2"]["simulated"]["oversubscription"] > 1.0


def test_beside_a_second_engine_the_delay_is_fitted_there_and_the_hog_phases_are_checks() -> None:
    truth = dataclasses.replace(HOSTED, busy_host_delay_s=0.1)
    hogs = BusyPhase(1, busy_phase(dataclasses.replace(HOSTED, busy_host_delay_s=0.3), 1))
    engines = BusyPhase(0, busy_phase(truth, 0, other_engines=1), other_engines=1)
    fitted, parts = fit_busy_host_delay(HOSTED, dataclasses.replace(measured([0.05]), busy=[hogs, engines]))
    assert abs(fitted.busy_host_delay_s - 0.1) <= 0.01  # one phase: its probes land between discrete steps
    assert parts["fitted_on"] == ["engines2"]
    assert parts["phases"]["engines2"]["simulated"]["oversubscription"] > 1.0
    assert set(parts["phases"]) == {"hogs1", "engines2"}


def test_without_a_modelled_host_the_busy_host_phases_change_nothing() -> None:
    run = dataclasses.replace(measured([0.05]), busy=[BusyPhase(1, busy_phase(HOSTED, 1))])
    assert fit_busy_host_delay(ENGINE, run) == (ENGINE, {"measured": False})


def test_a_second_engine_phase_keeps_only_the_requests_sent_while_the_other_engines_streams_ran() -> None:
    from autoscaling.measured_run import _busy_phase

    def record(sent_s: float, latency_s: float) -> dict[str, Any]:
        return {"sent_s": sent_s, "ttft_s": 0.05, "latency_s": latency_s, "tokens": 1, "prompt_tokens": 10,
                "error": None}  # fmt: skip

    # The other engine's player started 2 s before the phase's; its streams ended at 6.5 s of its clock.
    other = {"start_unix_s": 100.0, "records": [record(0.0, 6.5), record(0.0, 6.0)]}
    raw = {"hogs": 0, "other_engines": 1, "start_unix_s": 102.0, "labels": ["engines2-short"] * 3,
           "records": [record(1.0, 0.05), record(4.4, 0.05), record(5.8, 0.05)], "other": other}  # fmt: skip
    phase = _busy_phase(raw)
    assert [r.t_s for r in phase.requests] == [1.0, 4.4]
    assert phase.name == "engines2"
