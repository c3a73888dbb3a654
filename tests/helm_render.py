"""Lint and render the Helm chart offline with the Helm SDK (helm-python-sdk), for the chart's tests."""

from __future__ import annotations

import copy
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from cluster.config import PROJECT_ROOT

__all__ = [
    "CHART_DIR",
    "KUBE_VERSION",
    "VARIANTS",
    "chart_copy",
    "lint_problems",
    "objects",
    "render",
    "render_variant",
    "variant_values",
]

CHART_DIR = PROJECT_ROOT / "helm" / "surge"
KUBE_VERSION = "1.31.0"
# Every CI variant (helm/surge/ci/*.yaml, as chart-testing would run them) plus the chart's defaults.
VARIANTS = ["default", *sorted(p.name.removesuffix("-values.yaml") for p in (CHART_DIR / "ci").glob("*.yaml"))]
RELEASE = "surge"
NAMESPACE = "llm"


def variant_values(variant: str) -> dict[str, Any]:
    """The values a variant passes on top of values.yaml, read as `helm -f` reads them."""
    if variant == "default":
        return {}
    return helm.values_from_yaml((CHART_DIR / "ci" / f"{variant}-values.yaml").read_text())


def lint_problems(values: dict[str, Any], chart_dir: Path = CHART_DIR) -> list[str]:
    """`helm lint --strict` findings of warning level and above (info, e.g. "icon is recommended", ignored)."""
    report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + list(report["errors"])


def render(values: dict[str, Any], chart_dir: Path = CHART_DIR) -> dict[str, str]:
    """`helm template`: template path → rendered text (raises HelmValuesError / HelmRenderError)."""
    with helm.Chart.load(chart_dir) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered manifests (NOTES.txt and empty documents left out)."""
    found = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


@cache
def _rendered(variant: str) -> list[dict[str, Any]]:
    return objects(render(variant_values(variant)))


def render_variant(variant: str) -> list[dict[str, Any]]:
    """The objects a variant renders (a fresh copy each call: tests may change them)."""
    return copy.deepcopy(_rendered(variant))



def find_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [o for o in objs if o["kind"] == kind]


def rayservice(variant: str) -> dict[str, Any]:
    """A variant's one RayService."""
    (service,) = find_kind(render_variant(variant), "RayService")
    return service


def serve_config(variant: str) -> dict[str, Any]:
    """A variant's rendered `serveConfigV2`, parsed."""
    return dict(yaml.safe_load(rayservice(variant)["spec"]["serveConfigV2"]))


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a RayService's head and worker groups."""
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for pod in pods for c in pod["template"]["spec"]["containers"]]

def chart_copy(tmp_path: Path, files: dict[str, str]) -> Path:
    """A copy of the chart with `files/` holding exactly `files` (name → text)."""
    chart = tmp_path / "surge"
    shutil.copytree(CHART_DIR, chart, ignore=shutil.ignore_patterns("files"))
    (chart / "files").mkdir()
    for name, text in files.items():
        (chart / "files" / name).write_text(text)
    return chart
