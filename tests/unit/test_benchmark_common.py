"""The benchmark helpers that turn request timings into reported numbers."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from benchmarks._common import (
    LoadResult,
    RequestResult,
    final_line,
    format_table,
    goal_met,
    percentile,
    run_closed_loop,
    summarize,
    write_results,
)


def _ok(ttft_s: float, latency_s: float, tokens: int = 10) -> RequestResult:
    return RequestResult(ttft_s=ttft_s, latency_s=latency_s, output_tokens=tokens)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([3.0], 50) == 3.0
    assert percentile([3.0], 99) == 3.0


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_percentile_ignores_input_order() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0


def test_percentile_extremes_are_min_and_max() -> None:
    values = [4.0, 8.0, 1.0, 9.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 9.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_percentile_outside_0_to_100_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_summary_rates_use_the_wall_time() -> None:
    load = LoadResult(concurrency=2, wall_s=2.0, requests=[_ok(0.1, 1.0, 30), _ok(0.2, 1.0, 10)])
    summary = summarize(load)
    assert summary["requests_per_s"] == pytest.approx(1.0)
    assert summary["output_tok_s"] == pytest.approx(20.0)
    assert summary["output_tokens_mean"] == pytest.approx(20.0)


def test_summary_reports_latency_and_ttft_percentiles() -> None:
    load = LoadResult(1, 1.0, [_ok(0.1 * i, 1.0 * i) for i in range(1, 101)])
    summary = summarize(load)
    assert summary["ttft_p50_s"] == pytest.approx(5.05)
    assert summary["latency_p99_s"] == pytest.approx(99.01)


def test_summary_counts_failed_requests_but_leaves_them_out_of_the_numbers() -> None:
    failed = RequestResult(ttft_s=None, latency_s=9.0, output_tokens=0, error="HTTP 503: busy")
    summary = summarize(LoadResult(1, 1.0, [_ok(0.1, 0.5), failed]))
    assert summary["requests"] == 2
    assert summary["errors"] == 1
    assert summary["first_error"] == "HTTP 503: busy"
    assert summary["latency_p99_s"] == pytest.approx(0.5)
    assert summary["requests_per_s"] == pytest.approx(1.0)


def test_summary_of_only_failures_has_no_percentiles() -> None:
    failed = RequestResult(None, 1.0, 0, error="boom")
    summary = summarize(LoadResult(1, 1.0, [failed]))
    assert summary["ttft_p50_s"] is None
    assert summary["latency_p50_s"] is None
    assert summary["output_tokens_mean"] is None


async def test_closed_loop_sends_each_request_once_with_bounded_concurrency() -> None:
    seen: list[int] = []
    in_flight = peak = 0

    async def send(i: int) -> RequestResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.append(i)
        await asyncio.sleep(0)
        in_flight -= 1
        return _ok(0.0, 0.0)

    load = await run_closed_loop(send, num_requests=10, concurrency=3)
    assert sorted(seen) == list(range(10))
    assert peak == 3
    assert len(load.requests) == 10


async def test_closed_loop_records_a_raising_sender_as_an_error() -> None:
    async def send(i: int) -> RequestResult:
        raise RuntimeError("connection refused")

    load = await run_closed_loop(send, num_requests=2, concurrency=1)
    assert [r.error for r in load.requests] == ["RuntimeError('connection refused')"] * 2


def test_final_line_has_the_convention_format() -> None:
    assert final_line("overhead", "ttft_p50", 0.8123, "<=", 1.0) == "overhead: ttft_p50 ratio=0.812 goal<=1.0"


def test_final_line_shows_a_missing_measurement_as_nan() -> None:
    assert final_line("x", "m", math.nan, ">=", 1.5) == "x: m ratio=nan goal>=1.5"


def test_goal_met_follows_the_operator() -> None:
    assert goal_met(1.0, "<=", 1.0)
    assert not goal_met(1.01, "<=", 1.0)
    assert goal_met(1.6, ">=", 1.5)
    assert not goal_met(1.5, ">", 1.5)


def test_goal_is_never_met_without_a_measurement() -> None:
    assert not goal_met(math.nan, "<=", 1.0)
    assert not goal_met(math.nan, ">=", 1.0)


def test_results_file_is_named_after_the_benchmark_and_has_no_nan(tmp_path: Path) -> None:
    path = write_results("demo", {"ratio": math.nan, "levels": [{"p50": 1.5}]}, directory=tmp_path)
    assert path == tmp_path / "demo.json"
    assert json.loads(path.read_text()) == {"ratio": None, "levels": [{"p50": 1.5}]}


def test_table_aligns_columns_and_shows_missing_values_as_dash() -> None:
    table = format_table(["target", "ms"], [["surge", 12.345], ["vllm", None]])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].endswith("12.35")
    assert lines[3].endswith("-")


def test_format_table_without_rows_shows_the_headers() -> None:
    from benchmarks._common import format_table

    assert format_table(["a", "bb"], []).splitlines()[0].split() == ["a", "bb"]


def test_p50_p99_scales_seconds_to_the_unit_and_names_keys_after_it() -> None:
    from benchmarks._common import p50_p99

    assert p50_p99([0.001] * 10, "us") == {"p50_us": pytest.approx(1000.0), "p99_us": pytest.approx(1000.0)}
    assert p50_p99([0.002] * 10, "ms") == {"p50_ms": pytest.approx(2.0), "p99_ms": pytest.approx(2.0)}
    assert p50_p99([], "ms") == {"p50_ms": None, "p99_ms": None}
