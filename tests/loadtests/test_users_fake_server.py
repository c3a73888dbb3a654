"""The Locust users against a small local fake OpenAI server that streams 4 tokens per message at a known pace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loadtests.fake_openai import FakeOpenAI, fake_openai
from tests.loadtests.run_helpers import LoadRun, run_loadtest

KEYS = {"free": "sk-free", "pro": "sk-pro"}
TIERS = "free=0.5@4,pro=0.5@2"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with fake_openai(FakeOpenAI(ttft_s=0.05, chunk_gap_s=0.04, tokens_per_chunk=4)) as fake:
        yield fake


@pytest.fixture(scope="module")
def steady_run(server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    server.bodies.clear()
    out = tmp_path_factory.mktemp("steady")
    run = run_loadtest(
        out, "--scenario", "steady", "--host", server.url, "--rate", "4", "--duration", "8", "--tiers", TIERS,
        "--stream-fraction", "0.8", "--max-tokens", "21", "--seed", "3", keys=KEYS,
    )
    assert run.code == 0, run.stdout + run.stderr[-3000:]
    return run


def test_itl_comes_out_per_token_not_per_message(steady_run: LoadRun) -> None:
    streamed = [r for r in steady_run.records if r.stream and r.ok]
    assert streamed
    for record in streamed:
        assert record.counting == "usage"
        assert record.output_tokens == 21
        # 4 tokens a message: each message's gap is split over its 4 tokens.
        groups = [record.itl_s[i : i + 4] for i in range(0, 20, 4)]
        assert len(record.itl_s) == 20 and all(len(set(g)) == 1 for g in groups)
        # The server sleeps 40 ms between messages, so 20 tokens take >= 200 ms after the first.
        assert record.tpot_s == pytest.approx(sum(record.itl_s) / 20, rel=1e-3)  # itl_s rounded to µs
        # A lower bound with room for the event loop's timer slack (a CI run measured 9.8 ms): per token is ~10 ms,
        # per message would be 40 ms.
        assert record.tpot_s >= 0.0075
    for tier in steady_run.summary["tiers"].values():
        assert 0.0075 <= tier["itl_p50_s"] < 0.040  # a per-message ITL would be >= 40 ms


def test_ttft_is_the_first_token_not_the_response_headers(steady_run: LoadRun) -> None:
    ttfts = [r.ttft_s for r in steady_run.records if r.stream and r.ttft_s is not None]
    assert min(ttfts) >= 0.05


def test_streams_ask_for_continuous_usage_and_each_tier_sends_its_key_and_priority(
    steady_run: LoadRun, server: FakeOpenAI
) -> None:
    streamed = [b for b in server.bodies if b.get("stream")]
    assert streamed and all(
        b["stream_options"] == {"include_usage": True, "continuous_usage_stats": True} for b in streamed
    )
    assert {b.get("priority") for b in server.bodies} == {4, 2}
    assert {r.tier for r in steady_run.records} == {"free", "pro"}


def test_follow_ups_resend_the_conversation_with_the_answers(server: FakeOpenAI, steady_run: LoadRun) -> None:
    follow_ups = [b for b in server.bodies if sum(m["role"] == "user" for m in b["messages"]) > 1]  # type: ignore[index,union-attr]
    assert follow_ups
    messages = follow_ups[0]["messages"]
    assert messages[0]["role"] == "system"  # type: ignore[index]
    assert [m["role"] for m in messages[1:4]] == ["user", "assistant", "user"]  # type: ignore[index,union-attr]


def test_llm_rows_have_their_own_request_type_and_leave_http_rows_alone(steady_run: LoadRun) -> None:
    rows = steady_run.locust_rows()
    http = [r for r in rows if r["Type"] == "POST"]
    assert sum(int(r["Request Count"]) for r in http) == len(steady_run.records)
    names = {r["Name"] for r in rows if r["Type"] == "LLM"}
    assert {"TTFT free", "ITL free", "TPOT pro", "E2E pro", "output tok/s free"} <= names
    itl_events = sum(int(r["Request Count"]) for r in rows if r["Type"] == "LLM" and r["Name"].startswith("ITL"))
    assert itl_events == sum(len(r.itl_s) for r in steady_run.records)
    (total,) = [r for r in rows if r["Name"] == "Aggregated"]
    assert int(total["Request Count"]) == len(steady_run.records)  # HTTP requests only, not the LLM events


def test_achieved_rate_matches_the_schedule_when_the_generator_keeps_up(steady_run: LoadRun) -> None:
    rates = steady_run.summary["rates"]
    assert not rates["saturated"] and rates["warning"] is None
    assert rates["within_5pct"]
    assert "verdict: PASS" in steady_run.stdout.splitlines()[-1]


def test_rate_limited_requests_fail_the_error_slo_with_exit_1(server: FakeOpenAI, tmp_path: Path) -> None:
    server.rejected_keys = frozenset({"sk-pro"})
    try:
        run = run_loadtest(tmp_path, "--scenario", "steady", "--host", server.url, "--rate", "4", "--duration", "3",
                           "--tiers", TIERS, "--max-tokens", "8", keys=KEYS)
    finally:
        server.rejected_keys = frozenset()
    assert run.code == 1, run.stdout + run.stderr[-3000:]
    assert run.summary["requests"]["by_status"].get("429", 0) > 0
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "verdict: FAIL" and any(line.startswith("FAIL  error rate") for line in lines[-4:])
    assert any(line.startswith("report: ") and line.endswith("report.html") for line in lines[-5:])


def test_refusals_record_their_retry_after(server: FakeOpenAI, tmp_path: Path) -> None:
    server.rejected_keys, server.unavailable_keys = frozenset({"sk-free"}), frozenset({"sk-pro"})
    server.retry_after = "2"
    try:
        run = run_loadtest(tmp_path, "--scenario", "steady", "--host", server.url, "--rate", "4", "--duration", "3",
                           "--tiers", TIERS, "--max-tokens", "8", keys=KEYS)
    finally:
        server.rejected_keys, server.unavailable_keys, server.retry_after = frozenset(), frozenset(), None
    by_status = {status: [r for r in run.records if r.status == status] for status in (429, 503)}
    assert by_status[429] and by_status[503] and len(run.records) == len(by_status[429]) + len(by_status[503])
    assert {r.retry_after_s for r in run.records} == {2.0}
    refusals = run.summary["requests"]["refusals"]
    assert refusals["503"] == {"count": len(by_status[503]), "with_retry_after": len(by_status[503]),
                               "retry_after_min_s": 2.0, "retry_after_max_s": 2.0}  # fmt: skip
    assert refusals["429"]["with_retry_after"] == len(by_status[429])


def test_a_server_without_usage_per_chunk_still_gets_per_token_itl(tmp_path: Path) -> None:
    with fake_openai(FakeOpenAI(chunk_gap_s=0.04, tokens_per_chunk=4, usage_per_chunk=False)) as plain:
        run = run_loadtest(tmp_path, "--scenario", "steady", "--host", plain.url, "--rate", "3", "--duration", "3",
                           "--tiers", "free=1", "--stream-fraction", "1", "--max-tokens", "21", keys=KEYS)
    assert run.code == 0, run.stdout + run.stderr[-3000:]
    streamed = [r for r in run.records if r.ok]
    assert streamed and all(r.counting == "text" and r.output_tokens == 21 for r in streamed)
    assert 0.0099 <= run.summary["tiers"]["free"]["itl_p50_s"] < 0.040


def test_a_generator_without_free_users_warns_that_it_is_saturated(tmp_path: Path) -> None:
    with fake_openai(FakeOpenAI(ttft_s=1.0)) as slow:
        run = run_loadtest(tmp_path, "--scenario", "steady", "--host", slow.url, "--rate", "6", "--duration", "3",
                           "--tiers", "free=1", "--max-users", "2", "--max-tokens", "4", keys=KEYS)
    rates = run.summary["rates"]
    assert rates["saturated"] and rates["late_arrivals"] > 0 and rates["max_lateness_s"] > 0.1
    assert any(line.startswith("WARNING: generator saturated") for line in run.stdout.splitlines())
