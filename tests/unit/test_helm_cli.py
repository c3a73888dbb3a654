"""The chart under a Helm CLI too (the Go SDK the other chart tests use is Helm 4; SREs often run Helm 3): lint
passes, `helm template` renders exactly what the SDK renders, and a bad value is refused naming its field. Runs
when `$SURGE_HELM` or `helm` on PATH is a Helm binary (../shared/notes/helm.md says where to get a static one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.helm_render import CHART_DIR, KUBE_VERSION, NAMESPACE, RELEASE, VARIANTS, render_variant

HELM = os.environ.get("SURGE_HELM") or shutil.which("helm")
pytestmark = pytest.mark.skipif(HELM is None, reason="no Helm CLI ($SURGE_HELM or helm on PATH)")


def _helm(*args: str, variant: str = "default") -> subprocess.CompletedProcess[str]:
    values = [] if variant == "default" else ["-f", str(CHART_DIR / "ci" / f"{variant}-values.yaml")]
    command = [str(HELM), *args, *values]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cli_lints_every_variant_clean(variant: str) -> None:
    result = _helm("lint", "--strict", str(CHART_DIR), "--kube-version", KUBE_VERSION, variant=variant)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_cli_renders_what_the_sdk_renders(variant: str) -> None:
    args = ["template", RELEASE, str(CHART_DIR), "-n", NAMESPACE, "--kube-version", KUBE_VERSION]
    result = _helm(*args, variant=variant)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(rendered, key=_key) == sorted(render_variant(variant), key=_key)


def test_cli_refuses_a_bad_value_naming_it() -> None:
    bad = "surge.pools[0].name=main,surge.pools[0].model=/m,surge.pools[0].num_replicas=-1"
    result = _helm("lint", str(CHART_DIR), "--set", bad)
    assert result.returncode != 0
    # Helm 3.17 and older name it `surge.pools.0.num_replicas`; 3.18+ and 4 `/surge/pools/0/num_replicas`.
    assert "num_replicas" in result.stdout and ("surge.pools.0" in result.stdout or "/surge/pools/0" in result.stdout)
