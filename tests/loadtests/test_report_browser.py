"""The HTML report as an SRE sees it: opened in headless Chromium, every plot loads and has a size."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loadtests.metrics import RequestRecord
from loadtests.report import RunLog, build_report, write_run
from tests.loadtests.chromium import page_images


def _records(n: int, seed: int = 1) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tier = rng.choice(["free", "pro"])
        status = 429 if i % 17 == 0 else (503 if i % 23 == 0 else 200)
        itl = [rng.uniform(0.005, 0.02) for _ in range(15)]
        out.append(RequestRecord(due_s=i * 0.1, sent_s=i * 0.1 + 0.001, tier=tier, stream=True, topic="returns",
                                 turn=1, status=status, ttft_s=rng.uniform(0.02, 0.4), e2e_s=0.5, tpot_s=sum(itl) / 15,
                                 output_tokens=16, counting="usage", itl_s=itl))
    return out


def _write(out: Path, slo_file: Path | None = None, prometheus: str | None = None) -> int:
    spec = {"scenario": "steady", "host": "http://127.0.0.1:8000", "slo_file": slo_file and str(slo_file),
            "prometheus": prometheus}
    log = RunLog(spec=spec, start_epoch=1_700_000_000.0, duration_s=30.0, end_s=31.0,
                 target=[(t * 0.5, 10.0) for t in range(60)], scheduled=300, late=0, max_lateness_s=0.0)
    write_run(out, log, _records(300))
    return build_report(out)


def test_report_plots_render_in_headless_chromium(tmp_path: Path) -> None:
    assert _write(tmp_path) == 1  # 429s and 503s above 2 %
    images = page_images(tmp_path / "report.html")
    assert {i["src"] for i in images} == {"rates.png", "ttft.png", "errors.png"}
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images


def test_prometheus_plot_renders_when_its_series_are_missing(tmp_path: Path) -> None:
    # Nothing listens on port 9: the report says so and still draws the cluster panel.
    _write(tmp_path, prometheus="http://127.0.0.1:9")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prometheus_error"] and "cluster.png" in summary["plots"]
    images = page_images(tmp_path / "report.html")
    assert all(i["complete"] and i["width"] > 0 for i in images) and len(images) == 4


@pytest.mark.parametrize(("bound", "code"), [(1.0, 0), (0.05, 1)])
def test_the_exit_code_is_the_slo_verdict(tmp_path: Path, bound: float, code: int) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(f"error_rate_max: 0.5\ntiers:\n  pro: {{ttft_p99_s: {bound}}}\n  free: {{ttft_p99_s: {bound}}}\n")
    assert _write(tmp_path, slo_file=slo) == code
