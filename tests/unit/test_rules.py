"""The shipped Prometheus rules are valid and every alert is unit-tested with promtool (Debian's prometheus)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_server import ensure_prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "surge" / "files" / "surge-rules.yaml"
RULE_TESTS = Path(__file__).parent / "rules" / "surge-rules.test.yaml"


def _alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_accepts_the_rules() -> None:
    _, promtool = ensure_prometheus()
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    _, promtool = ensure_prometheus()
    result = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert _alerts() - tested == set()


def test_the_seed_slos_have_alerts() -> None:
    assert {"SurgeTTFTP99AboveSLO", "SurgeE2EP99AboveSLO", "SurgeErrorRateHigh", "SurgeGPUUnderutilized",
            "SurgeShedding", "SurgeQuotaExhaustion", "SurgeBreakerOpen", "SurgeNoReadyReplica"} <= _alerts()


def _rendered_rules(source: str) -> dict[str, Any]:
    from tests.helm_render import objects, render

    values = {"monitoring": {"prometheusRule": {"gpuUtilizationSource": source}}}
    rule = next(o for o in objects(render(values)) if o["kind"] == "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def _gpu_ratio_test(expected_source: str, value: float) -> dict[str, Any]:
    """Both sources scraped, Ray's busy and DCGM's idle: the chosen one is what the ratio (and alert) read."""
    return {"name": f"GPU utilisation read from {expected_source}", "interval": "1m",
            "input_series": [{"series": 'ray_node_gpus_utilization{GpuIndex="0"}', "values": "90x60"},
                             {"series": 'DCGM_FI_DEV_GPU_UTIL{gpu="0"}', "values": "10x60"}],
            "promql_expr_test": [{"expr": "surge:gpu_utilization:ratio", "eval_time": "10m", "exp_samples": [
                {"labels": f'surge:gpu_utilization:ratio{{source="{expected_source}"}}', "value": value}]}]}


@pytest.mark.parametrize(("source", "expected", "value"), [("auto", "ray", 0.9), ("ray", "ray", 0.9),
                                                           ("dcgm", "dcgm", 0.1)])
def test_the_chart_selects_the_gpu_utilisation_source(tmp_path: Path, source: str, expected: str,
                                                      value: float) -> None:
    _, promtool = ensure_prometheus()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rendered_rules(source)))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [_gpu_ratio_test(expected, value)]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
