"""The load-test scenarios as pure plans: rates, arrival processes and tick sequences (no Locust imported)."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pytest

from cluster.config import PROJECT_ROOT
from loadtests.arrivals import Arrival, ArrivalProcess, ArrivalSchedule, generate_arrivals, poisson_rate_bounds
from loadtests.profiles import PromoDay, PromoDayPlan, RateTrace, ReplayPlan, SteadyPlan, load_trace
from loadtests.spec import RunSpec, UsageError

AZURE_TRACE = PROJECT_ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def _spec(**fields: object) -> RunSpec:
    base = {"scenario": "steady", "host": "http://127.0.0.1:1", "report_dir": "/tmp/x"}
    return RunSpec.model_validate({**base, **fields})


def _ticks(plan: SteadyPlan | PromoDayPlan, until_s: float, step_s: float = 1.0) -> list[tuple[int, float] | None]:
    return [plan.tick_at(i * step_s, arrivals_left=1, in_flight=0) for i in range(int(until_s / step_s))]


def test_poisson_stream_rate_is_within_its_confidence_bound() -> None:
    times = generate_arrivals(lambda t: 7.0, 300, ArrivalProcess("poisson"), seed=11)
    low, high = poisson_rate_bounds(len(times), 300)
    assert low <= 7.0 <= high
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, abs=0.1)


def test_gamma_bursts_keep_the_mean_rate_and_are_burstier_than_poisson() -> None:
    counts = [len(generate_arrivals(lambda t: 5.0, 200, ArrivalProcess("gamma", cv=3.0), seed=s)) for s in range(20)]
    assert statistics.mean(counts) == pytest.approx(1000, rel=0.05)
    times = generate_arrivals(lambda t: 5.0, 400, ArrivalProcess("gamma", cv=3.0), seed=3)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.stdev(gaps) / statistics.mean(gaps) > 2.0


def test_arrivals_follow_a_changing_rate_without_lag() -> None:
    times = generate_arrivals(lambda t: 2.0 if t < 50 else 20.0, 100, ArrivalProcess(), seed=5)
    before, after = sum(t < 50 for t in times), sum(t >= 50 for t in times)
    assert after / before == pytest.approx(10, rel=0.25)
    assert sum(50 <= t < 51 for t in times) > 5  # the jump is there in the first second


def test_promo_day_ramps_to_ten_times_within_sixty_seconds_then_decays() -> None:
    day = PromoDay(base_rps=2.0)
    flash = day.baseline_s + day.countdown_s
    assert day.rate(10) == 2.0
    assert day.rate(flash - 1) == pytest.approx(2.0 * day.countdown_x, rel=0.01)
    assert day.rate(flash + 60) == pytest.approx(20.0)
    assert day.rate(flash + 60 + day.plateau_s / 2) == 20.0
    assert day.rate(day.duration_s - 1) == pytest.approx(2.0, rel=0.01)
    assert day.rate(day.duration_s) == 0.0


def test_compression_plays_the_day_in_minutes_at_its_real_rates() -> None:
    plan = PromoDayPlan(_spec(scenario="promo-day", rate_rps=1.0, compress=60))
    assert plan.duration_s == pytest.approx(plan.day.duration_s / 60)
    flash_run_s = (plan.day.baseline_s + plan.day.countdown_s + 60) / 60
    assert plan.rate_rps(flash_run_s + 0.5) == pytest.approx(10.0)


def test_promo_day_ticks_hold_users_for_the_flash_sale_before_it_starts() -> None:
    plan = PromoDayPlan(_spec(scenario="promo-day", rate_rps=1.0, compress=60, users_per_rps=3, max_users=100))
    ticks = _ticks(plan, plan.duration_s)
    users = [t[0] for t in ticks if t is not None]
    assert users == sorted(users)  # never fewer: stopping a user would kill its request
    flash_start_s = (plan.day.baseline_s + plan.day.countdown_s) / 60
    assert users[int(flash_start_s) - 2] >= 30  # 10 req/s x 3 users per req/s, ready ahead
    assert users[0] == 4  # the baseline: min_users


def test_steady_ticks_are_constant_then_stop_when_drained() -> None:
    plan = SteadyPlan(_spec(rate_rps=3, duration_s=10, users_per_rps=2))
    assert set(_ticks(plan, 10)) == {(6, 10.0)}
    assert plan.tick_at(10.5, arrivals_left=0, in_flight=0) is None


def test_a_run_waits_for_requests_in_flight_but_not_past_its_drain_time() -> None:
    plan = SteadyPlan(_spec(duration_s=10, drain_s=30))
    assert plan.tick_at(12, arrivals_left=0, in_flight=3) is not None
    assert plan.tick_at(12, arrivals_left=2, in_flight=0) is not None  # late arrivals still to send
    assert plan.tick_at(41, arrivals_left=0, in_flight=3) is None


def test_rate_trace_replays_its_rows_compressed(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("t_s,rps\n0,1\n600,4\n1200,2\n")
    plan = ReplayPlan(_spec(scenario="replay", trace=str(path), compress=60, rate_scale=2))
    assert plan.duration_s == pytest.approx(1800 / 60)
    assert [plan.rate_rps(t) for t in (1, 11, 21, 31)] == [2, 8, 4, 0]
    assert isinstance(load_trace(path), RateTrace)


def test_azure_trace_rows_size_each_request_and_thin_with_compression() -> None:
    rows = load_trace(AZURE_TRACE)
    lines = AZURE_TRACE.read_text().splitlines()
    assert isinstance(rows, list) and len(rows) == len(lines) - 1  # every row but the header
    assert (rows[0].prompt_tokens, rows[0].max_tokens) == tuple(int(v) for v in lines[1].split(",")[1:])
    assert rows[0].t_s == 0 and rows[-1].t_s == pytest.approx(3502, abs=5)
    plan = ReplayPlan(_spec(scenario="replay", trace=str(AZURE_TRACE), compress=60, max_prompt_tokens=640))
    arrivals = plan.arrivals()
    low, high = poisson_rate_bounds(len(arrivals), 1.0)
    assert low <= len(rows) / 60 <= high  # rows kept 1 in 60: the real rate, a day in 1/60 of the time
    assert plan.duration_s == pytest.approx(rows[-1].t_s / 60, abs=0.1)
    assert max(a.prompt_tokens or 0 for a in arrivals) == 640
    assert all(a.max_tokens for a in arrivals)


def test_replay_without_a_trace_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        ReplayPlan(_spec(scenario="replay"))


def test_schedule_counts_arrivals_claimed_late() -> None:
    schedule = ArrivalSchedule([Arrival(1.0), Arrival(2.0), Arrival(3.0)], late_after_s=0.1)
    assert schedule.claim(0.5) == Arrival(1.0)
    assert schedule.claim(2.5) == Arrival(2.0)
    assert (schedule.late, schedule.max_lateness_s) == (1, 0.5)
    schedule.claim(3.0)
    assert schedule.claim(9.0) is None


def test_the_pure_modules_do_not_import_locust() -> None:
    """Locust's import monkey-patches the process with gevent, which Ray (in the same pytest session) cannot bear."""
    import subprocess
    import sys

    code = (
        "import sys, loadtests.profiles, loadtests.arrivals, loadtests.report, loadtests.slo, loadtests.cli\n"
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'locust imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
