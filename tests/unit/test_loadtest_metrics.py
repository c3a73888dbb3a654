"""Token-accurate stream timings, SLO verdicts, goodput and the CLI's usage errors (no Locust, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.cli import main, parse_tiers
from loadtests.metrics import Chunk, RequestRecord, retry_after_s, stream_timing
from loadtests.slo import SloFile, TierSlo, evaluate, goodput_rps, load_slo
from loadtests.spec import UsageError, resolve_keys


def _four_per_chunk(gap_s: float, chunks: int) -> list[Chunk]:
    """First token alone at 0.1 s, then 4 tokens per message every `gap_s` (surge's stream_interval 4)."""
    return [Chunk(0.1, 1, 3)] + [Chunk(0.1 + gap_s * i, 1 + 4 * i, 12) for i in range(1, chunks + 1)]


def test_itl_is_per_token_when_messages_carry_several_tokens() -> None:
    timing = stream_timing(_four_per_chunk(0.08, 5))
    assert timing.ttft_s == pytest.approx(0.1)
    assert timing.output_tokens == 21
    assert timing.itl_s == pytest.approx([0.02] * 20)
    assert timing.tpot_s == pytest.approx(0.02)
    assert timing.counting == "usage"


def test_messages_without_new_tokens_do_not_count() -> None:
    chunks = [Chunk(0.05, 0, 0), *_four_per_chunk(0.08, 2), Chunk(0.5, 9, 0)]
    timing = stream_timing(chunks)
    assert timing.ttft_s == pytest.approx(0.1)
    assert len(timing.itl_s) == 8


def test_without_usage_per_chunk_the_final_count_is_spread_by_text() -> None:
    chunks = [Chunk(0.1, None, 4), Chunk(0.2, None, 16), Chunk(0.3, None, 16)]
    timing = stream_timing(chunks, final_tokens=9)
    assert timing.counting == "text"
    assert timing.output_tokens == 9
    assert timing.itl_s == pytest.approx([0.1 / 4] * 8)


def _record(tier: str = "pro", ttft_s: float = 0.1, itl_s: float = 0.01, status: int = 200) -> RequestRecord:
    return RequestRecord(due_s=0, sent_s=0, tier=tier, stream=True, topic="t", turn=1, status=status,
                         ttft_s=ttft_s, e2e_s=1.0, tpot_s=itl_s, output_tokens=10, itl_s=[itl_s] * 9)


def test_every_slo_holds_on_fast_requests() -> None:
    slo = SloFile(tiers={"pro": TierSlo(ttft_p50_s=0.2, ttft_p99_s=0.5, itl_p99_s=0.05)}, goodput_min_rps=1.0)
    verdicts = evaluate([_record() for _ in range(20)], slo, window_s=10)
    assert [v.ok for v in verdicts] == [True] * 5


def test_a_slow_tail_fails_its_p99_only() -> None:
    records = [_record() for _ in range(90)] + [_record(ttft_s=2.0) for _ in range(10)]
    slo = SloFile(tiers={"pro": TierSlo(ttft_p50_s=0.2, ttft_p99_s=0.5)})
    by_name = {v.name: v.ok for v in evaluate(records, slo, window_s=10)}
    assert by_name == {"error rate": True, "pro TTFT p50 (s)": True, "pro TTFT p99 (s)": False}


def test_error_rate_of_two_percent_fails() -> None:
    records = [_record() for _ in range(98)] + [_record(status=429), _record(status=503)]
    assert not evaluate(records, SloFile(), window_s=10)[0].ok


def test_a_tier_that_sent_nothing_does_not_pass() -> None:
    verdicts = evaluate([_record("pro")], SloFile(tiers={"free": TierSlo(ttft_p99_s=1)}), window_s=1)
    assert verdicts[-1].measured is None and not verdicts[-1].ok


def test_goodput_counts_only_requests_within_their_tier_bounds() -> None:
    slo = SloFile(tiers={"pro": TierSlo(ttft_p99_s=0.5, itl_p99_s=0.05)})
    records = [_record(), _record(ttft_s=0.9), _record(itl_s=0.2), _record(status=429)]
    assert goodput_rps(records, slo, window_s=2) == pytest.approx(0.5)


def test_a_bad_slo_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("tiers: {pro: {ttft_p99: 1}}\n")
    with pytest.raises(UsageError):
        load_slo(path)


def test_keys_come_from_the_environment_before_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("free: sk-free\npro: sk-pro\n")
    monkeypatch.setenv("SURGE_LOADTEST_KEY_PRO", "sk-env")
    assert resolve_keys(["free", "pro"], str(keys)) == {"free": "sk-free", "pro": "sk-env"}


def test_one_bare_key_serves_every_tier(tmp_path: Path) -> None:
    keys = tmp_path / "dev-api-key"
    keys.write_text("sk-dev\n")
    assert resolve_keys(["free", "enterprise"], str(keys)) == {"free": "sk-dev", "enterprise": "sk-dev"}


def test_tier_mix_reads_weights_and_priorities() -> None:
    tiers = parse_tiers("free=0.7@4,enterprise=0.3")
    assert (tiers["free"].weight, tiers["free"].priority, tiers["enterprise"].priority) == (0.7, 4, None)


@pytest.mark.parametrize(
    "args",
    [
        ["--scenario", "replay"],  # no trace
        ["--scenario", "steady", "--tiers", "gold=1"],  # no key for the tier
        ["--scenario", "steady", "--slo", "/nonexistent/slo.yaml"],
        ["--scenario", "steady", "--host", "127.0.0.1:8000"],  # not a URL
    ],
)
def test_usage_errors_exit_2_before_anything_runs(args: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for tier in ("FREE", "PRO", "ENTERPRISE"):
        monkeypatch.setenv(f"SURGE_LOADTEST_KEY_{tier}", "k")
    assert main(["run", "--host", "http://127.0.0.1:9", "--report", str(tmp_path), *args]) == 2
    assert not (tmp_path / "locust_stats.csv").exists()


def test_an_unknown_scenario_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--scenario", "nope", "--host", "http://127.0.0.1:9", "--report", str(tmp_path)])
    assert exc.value.code == 2


def test_retry_after_reads_delay_seconds() -> None:
    assert retry_after_s("1") == 1.0 and retry_after_s(" 2.5 ") == 2.5


def test_retry_after_reads_an_http_date_from_now() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now_s=1445412480.0) == 10.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now_s=1445412500.0) == 0.0  # already past


def test_retry_after_absent_or_unreadable_is_none() -> None:
    assert [retry_after_s(v) for v in (None, "", "soon", "nan", "Wed, 21 Oct 2015 07:28:10")] == [None] * 5


def test_a_record_without_retry_after_still_loads() -> None:
    data = _record(status=503).to_json()
    del data["retry_after_s"]  # requests.jsonl written before the field
    assert RequestRecord.from_json(data).retry_after_s is None
