"""The shipped Prometheus rules are valid and every alert is unit-tested with promtool (Debian's prometheus)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
