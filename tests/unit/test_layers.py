"""The package layering in docs/architecture.md holds: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each layer may import of surge's own packages (see docs/architecture.md, "Layers").
ALLOWED = {
    "cluster/config": {"cluster.config"},
    "deployments": {"cluster.config", "cluster.env", "cluster.placement", "deployments"},
    "autoscaling": {"cluster.config", "cluster.env", "autoscaling", "deployments"},
}
OWN = ("cluster", "deployments", "autoscaling", "loadtests", "benchmarks")


def _surge_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in OWN}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in _surge_imports(path):
            if not any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED[layer]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
