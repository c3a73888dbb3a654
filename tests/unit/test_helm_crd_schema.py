"""The strict CRD walker (tests/crd_schema.py) fails on what the API server would prune or refuse in the chart's
rendered custom resources: each check proven on a rendered object broken in one place."""

from __future__ import annotations

from typing import Any

import pytest

from tests.crd_schema import CRDS_DIR, crd_schemas, strict_errors
from tests.helm_render import render_variant

# The variant that renders every custom kind: RayService, PodMonitor, ServiceMonitor, PrometheusRule.
VARIANT = "multi-pool-tp4"


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    if not CRDS_DIR.is_dir():
        pytest.skip(f"upstream CRDs not found at {CRDS_DIR} (the shared/ checkout beside the project)")
    return crd_schemas()


def _rendered(kind: str) -> dict[str, Any]:
    (obj,) = [o for o in render_variant(VARIANT) if o["kind"] == kind]
    return obj


def _errors(obj: dict[str, Any], crds: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    return strict_errors(obj, crds[(obj["apiVersion"], obj["kind"])])


def _head(service: dict[str, Any]) -> dict[str, Any]:
    pod = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


@pytest.mark.parametrize("kind", ["RayService", "PodMonitor", "ServiceMonitor", "PrometheusRule"])
def test_every_custom_kind_renders_conforming(kind: str, crds: dict[Any, Any]) -> None:
    assert _errors(_rendered(kind), crds) == []


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("RayService", ["spec"]),
        ("RayService", ["spec", "rayClusterConfig", "autoscalerOptions"]),
        ("PodMonitor", ["spec", "podMetricsEndpoints", 0]),
        ("ServiceMonitor", ["spec", "endpoints", 0]),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0]),
    ],
)
def test_an_undeclared_field_fails_in_every_custom_kind(kind: str, where: list[Any], crds: dict[Any, Any]) -> None:
    obj = _rendered(kind)
    parent = obj
    for step in where:
        parent = parent[step]
    parent["scrapeIntervl"] = "15s"
    path = "".join(f"[{s}]" if isinstance(s, int) else f"/{s}" for s in where)
    assert _errors(obj, crds) == [f"{path}/scrapeIntervl: field not declared by the schema"]


def test_an_undeclared_field_of_a_pod_template_container_fails(crds: dict[Any, Any]) -> None:
    service = _rendered("RayService")
    _head(service)["imagePullPolcy"] = "Always"
    (error,) = _errors(service, crds)
    assert error.endswith("/template/spec/containers[0]/imagePullPolcy: field not declared by the schema")


def test_a_string_breaking_its_pattern_fails(crds: dict[Any, Any]) -> None:
    monitor = _rendered("PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    (error,) = _errors(monitor, crds)
    assert error.startswith("/spec/podMetricsEndpoints[0]/interval: '15 seconds' does not match")


def test_go_flag_groups_in_a_pattern_keep_their_meaning(crds: dict[Any, Any]) -> None:
    # `^(?i)(abort|warn)?$`: RE2 takes the flag mid-pattern; Python needs it moved to the front.
    rule = _rendered("PrometheusRule")
    rule["spec"]["groups"][0]["partial_response_strategy"] = "ABORT"
    assert _errors(rule, crds) == []
    rule["spec"]["groups"][0]["partial_response_strategy"] = "drop"
    assert len(_errors(rule, crds)) == 1


def test_numbers_and_strings_out_of_bounds_fail(crds: dict[Any, Any]) -> None:
    service = _rendered("RayService")
    service["spec"]["rayClusterDeletionDelaySeconds"] = -1
    assert _errors(service, crds) == ["/spec/rayClusterDeletionDelaySeconds: -1 is below the minimum 0"]
    monitor = _rendered("PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["portNumber"] = 70000
    assert _errors(monitor, crds) == ["/spec/podMetricsEndpoints[0]/portNumber: 70000 is above the maximum 65535"]
    rule = _rendered("PrometheusRule")
    rule["spec"]["groups"][0]["name"] = ""
    assert _errors(rule, crds) == ["/spec/groups[0]/name: '' is shorter than 1"]


def test_a_list_map_key_given_twice_fails(crds: dict[Any, Any]) -> None:
    service = _rendered("RayService")
    head = _head(service)
    head["env"].append({"name": head["env"][0]["name"], "value": "again"})
    # A key field left out counts at its default: `protocol` is TCP whether written or not.
    head["ports"].append({"name": "again", "containerPort": head["ports"][0]["containerPort"]})
    errors = _errors(service, crds)
    assert len(errors) == 2
    assert any("/env[" in e and "duplicate of" in e and "(name)" in e for e in errors)
    assert any("/ports[" in e and "(containerPort, protocol)" in e for e in errors)


def test_a_missing_required_field_and_a_wrong_type_fail(crds: dict[Any, Any]) -> None:
    rule = _rendered("PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert _errors(rule, crds) == ["/spec/groups[0]/rules[0]/expr: required field missing"]
    service = _rendered("RayService")
    service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "true"
    (error,) = _errors(service, crds)
    assert error == "/spec/rayClusterConfig/enableInTreeAutoscaling: want boolean, got str 'true'"


def test_only_a_preserve_unknown_fields_subtree_takes_any_field() -> None:
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    assert strict_errors({"spec": {"a": "x", "b": 1}}, schema) == ["/spec/b: field not declared by the schema"]
    schema["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"] = True
    assert strict_errors({"spec": {"a": "x", "b": 1}}, schema) == []
