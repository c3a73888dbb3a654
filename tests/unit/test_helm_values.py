"""The chart's values: a schema generated from the pydantic config (no drift), bad values rejected with the
field named (the `surge:` block's as the app rejects them), every value documented, helpers prefixed,
monitoring objects built from files/ when present."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from cluster.config import ConfigError, SurgeConfig
from cluster.config.mapping import config_from_mapping
from cluster.helm_schema import SCHEMA_PATH, chart_schema, main, render_schema
from tests.crd_schema import CRDS_DIR, crd_schemas, strict_errors
from tests.helm_render import CHART_DIR, chart_copy, lint_problems, objects, render

POOL = {"name": "main", "model": "/models/main"}
TIER = {"rpm": 1, "tpm": 1, "daily_token_quota": 1, "max_tokens_cap": 1, "default_priority": 5, "max_priority": 4}
# The keys whose children are Kubernetes or engine data rather than chart settings of their own.
FREE_FORM = {
    "resources", "nodeSelector", "annotations", "labels", "rayStartParams", "engine_args", "podSecurityContext",
    "containerSecurityContext", "matchLabels", "requests", "limits", "capabilities", "seccompProfile",
}  # fmt: skip


def _rejection(values: dict[str, Any]) -> str:
    """The message `helm template` fails with for `values`."""
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as failure:
        render(values)
    return str(failure.value)


def test_values_schema_is_generated_from_the_config_without_drift() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), "stale: run `python -m cluster.helm_schema`"
    assert main(["--check"]) == 0


def test_drift_check_fails_on_a_stale_schema(tmp_path: Path) -> None:
    stale = tmp_path / "values.schema.json"
    stale.write_text(render_schema().replace('"minimum": 1', '"minimum": 0', 1))
    assert main(["--check", "--path", str(stale)]) == 1


def test_surge_block_schema_is_the_pydantic_schema() -> None:
    schema = chart_schema()
    pydantic = SurgeConfig.model_json_schema()
    defs = pydantic.pop("$defs")
    assert schema["properties"]["surge"] == pydantic
    assert schema["$defs"] == defs


def test_default_surge_block_is_a_valid_config() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    config = config_from_mapping(values["surge"], "values.yaml surge")
    assert config.server.host == "0.0.0.0"
    assert config.server.proxy == "haproxy"


def test_negative_pool_replicas_are_rejected_naming_the_field() -> None:
    values = {"surge": {"pools": [{**POOL, "num_replicas": -1}]}}
    assert "/surge/pools/0/num_replicas" in _rejection(values)
    assert any("/surge/pools/0/num_replicas': minimum" in p for p in lint_problems(values))


def test_negative_worker_replicas_are_rejected_naming_the_field() -> None:
    values = {"workerGroups": {"gpu": {"replicas": -2}}}
    assert "/workerGroups/gpu/replicas': minimum: got -2, want 0" in _rejection(values)
    assert lint_problems(values)


def test_unknown_tier_field_is_rejected_naming_it() -> None:
    values = {"surge": {"admission": {"tiers": {"free": {**TIER, "rpd": 5}}}}}
    assert "/surge/admission/tiers/free': additional properties 'rpd' not allowed" in _rejection(values)
    assert any("'rpd' not allowed" in p for p in lint_problems(values))


def test_unknown_chart_value_is_rejected() -> None:
    assert "additional properties 'gpuPerNode' not allowed" in _rejection({"workerGroups": {"gpu": {"gpuPerNode": 2}}})


def test_tensor_parallel_size_must_divide_the_gpus_of_each_node_hosting_it() -> None:
    values = {"workerGroups": {"gpu": {"gpusPerNode": 4}}, "surge": {"pools": [{**POOL, "tensor_parallel_size": 3}]}}
    message = _rejection(values)
    assert 'workerGroups.gpu: pool "main" has tensor_parallel_size 3' in message
    assert "does not divide the group's gpusPerNode 4" in message


def test_a_group_only_checks_the_pools_it_hosts() -> None:
    values = {
        "workerGroups": {"gpu": {"gpusPerNode": 1, "pools": ["small"]}, "big": {**_group(8), "pools": ["main"]}},
        "surge": {"pools": [{**POOL, "tensor_parallel_size": 8}, {"name": "small", "model": "/m"}]},
    }
    assert render(values)
    values["workerGroups"]["gpu"]["pools"] = ["nope"]
    assert 'workerGroups.gpu.pools: "nope" is not a pool in surge.pools' in _rejection(values)


def _group(gpus: int) -> dict[str, Any]:
    return {"enabled": True, "gpusPerNode": gpus, "replicas": 1, "minReplicas": 1, "maxReplicas": 2}


def test_latest_image_tag_is_rejected() -> None:
    assert "/image/tag" in _rejection({"image": {"tag": "latest"}})


def test_postgres_without_a_secret_fails_with_a_clear_message() -> None:
    assert "postgres.existingSecret must name the Secret" in _rejection({"postgres": {"enabled": True}})


def test_several_ingress_replicas_need_a_shared_key_store() -> None:
    message = _rejection({"surge": {"ingress": {"num_replicas": 2}, "pools": [POOL]}})
    assert "more than one ingress replica needs postgres.enabled" in message


# Bad `surge:` blocks, each with the field both the chart's schema and the app's config parser must name.
APP_ALIKE = [
    ({"pools": [{**POOL, "num_replicas": -1}]}, "pools/0/num_replicas"),
    ({"pools": [{**POOL, "tensor_parallel_size": 0}]}, "pools/0/tensor_parallel_size"),
    ({"pools": [{**POOL, "modle": "/m"}]}, "pools/0"),
    ({"pools": [POOL], "admission": {"tiers": {"free": {**TIER, "rpd": 5}}}}, "admission/tiers/free"),
    ({"pools": [POOL], "server": {"proxy": "nginx"}}, "server/proxy"),
    ({"pools": [POOL], "server": {"port": "eighty"}}, "server/port"),
]


@pytest.mark.parametrize(("surge", "field"), APP_ALIKE, ids=[field for _, field in APP_ALIKE])
def test_a_bad_surge_value_is_rejected_by_the_chart_as_by_the_app(surge: dict[str, Any], field: str) -> None:
    assert f"at '/surge/{field}'" in _rejection({"surge": surge})
    assert any(f"/surge/{field}'" in problem for problem in lint_problems({"surge": surge}))
    with pytest.raises(ConfigError) as failure:
        config_from_mapping(surge, "surge")
    assert field.replace("/", ".") in str(failure.value)


def test_an_unknown_serve_option_in_deployment_overrides_is_rejected_naming_it() -> None:
    message = _rejection({"deploymentOverrides": {"ingress": {"health_check_timeout": 60}}})
    assert "at '/deploymentOverrides/ingress': additional properties 'health_check_timeout' not allowed" in message
    assert "additional properties 'name' not allowed" in _rejection({"deploymentOverrides": {"ingress": {"name": "x"}}})


def test_overrides_of_a_deployment_the_app_does_not_build_are_rejected() -> None:
    message = _rejection({"deploymentOverrides": {"pool-mian": {"num_replicas": 2}}})
    assert "deploymentOverrides.pool-mian: the app builds no such deployment" in message
    assert "pool-main" in message


def test_listeners_sharing_a_port_are_rejected() -> None:
    message = _rejection({"haproxy": {"metricsPort": 8080}})
    assert "port 8080 is both surge.observability.metrics.export_port and haproxy.metricsPort" in message
    message = _rejection({"surge": {"server": {"port": 8265}, "pools": [POOL]}})
    assert "port 8265 is both Ray's dashboard and surge.server.port" in message


def test_extra_volumes_may_not_take_the_charts_own_names_or_paths() -> None:
    assert 'extraVolumes: "dshm" is a volume of the chart\'s own' in _rejection(
        {"extraVolumes": [{"name": "dshm", "emptyDir": {}}]}
    )
    assert "extraVolumeMounts: /etc/surge is a mount path of the chart's own" in _rejection(
        {"extraVolumeMounts": [{"name": "models", "mountPath": "/etc/surge"}]}
    )


def test_extra_env_needs_a_name_once() -> None:
    twice = [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HUB_OFFLINE", "value": "0"}]
    assert "extraEnv: HF_HUB_OFFLINE is listed twice" in _rejection({"extraEnv": twice})
    assert "at '/extraEnv/0': missing property 'name'" in _rejection({"extraEnv": [{"value": "1"}]})


def _undocumented(text: str) -> list[str]:
    """Keys of a values file without a `# --` comment right above (helm-docs' convention)."""
    undocumented, documented, inside_list, free_below = [], False, None, None
    for number, line in enumerate(text.splitlines(), 1):
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            documented = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if free_below is not None and indent <= free_below:
            free_below = None
        if inside_list is not None and indent <= inside_list and not stripped.startswith("- "):
            inside_list = None
        key = re.match(r"^([A-Za-z0-9_.\-/]+):", stripped)
        # A section (`key:` with its values below) is documented by its entries; leaves and free-form maps need a doc.
        section = key is not None and not stripped.split(":", 1)[1].strip() and key.group(1) not in FREE_FORM
        if key and not section and inside_list is None and free_below is None and not documented:
            undocumented.append(f"line {number}: {key.group(1)}")
        if stripped.startswith("- ") and inside_list is None:
            inside_list = indent
        if key and key.group(1) in FREE_FORM and free_below is None:
            free_below = indent
        documented = False
    return undocumented


def test_every_value_is_documented() -> None:
    assert _undocumented((CHART_DIR / "values.yaml").read_text()) == []


def test_an_undocumented_value_is_found() -> None:
    text = "image:\n  # -- Tag.\n  tag: x\n  pullPolicy: Always\nresources:\n  limits: {}\n"
    assert _undocumented(text) == ["line 4: pullPolicy", "line 5: resources"]


def test_every_helper_is_prefixed_with_the_chart_name() -> None:
    names = re.findall(r'define "([^"]+)"', (CHART_DIR / "templates" / "_helpers.tpl").read_text())
    assert names and all(n.startswith("surge.") for n in names)
    used = set(re.findall(r'include "([^"]+)"', "".join(p.read_text() for p in (CHART_DIR / "templates").iterdir())))
    assert used <= set(names)


RULES = """groups:
  - name: surge-slo
    rules:
      - alert: SurgeHighErrorRate
        expr: sum(rate(surge_requests_total{code=~"5.."}[5m])) / sum(rate(surge_requests_total[5m])) > 0.02
        for: 5m
        labels: {severity: page}
        annotations:
          summary: 'error rate {{ $value | humanizePercentage }} above 2 %'
"""


def test_rules_and_dashboard_render_from_files_when_present(tmp_path: Path) -> None:
    dashboard = json.dumps({"title": "surge", "panels": []})
    chart = chart_copy(tmp_path, {"surge-rules.yaml": RULES, "surge-dashboard.json": dashboard})
    objs = {o["kind"]: o for o in objects(render({}, chart))}
    assert objs["PrometheusRule"]["spec"] == yaml.safe_load(RULES)
    (config_map,) = [o for o in objects(render({}, chart)) if o["metadata"]["name"].endswith("-dashboard")]
    assert json.loads(config_map["data"]["surge-dashboard.json"]) == json.loads(dashboard)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    if CRDS_DIR.is_dir():
        schema = crd_schemas()[("monitoring.coreos.com/v1", "PrometheusRule")]
        assert strict_errors(objs["PrometheusRule"], schema) == []
    assert lint_problems({}, chart) == []


def test_nothing_renders_from_files_that_are_absent(tmp_path: Path) -> None:
    objs = objects(render({}, chart_copy(tmp_path, {})))
    assert "PrometheusRule" not in {o["kind"] for o in objs}
    assert not [o for o in objs if o["metadata"]["name"].endswith("-dashboard")]


def test_rules_file_without_groups_fails_clearly(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, {"surge-rules.yaml": "rules: []\n"})
    with pytest.raises(helm.HelmRenderError, match="top-level `groups:` list"):
        render({}, chart)


def test_app_version_is_the_project_release_and_the_image_tags_carry_it() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = re.search(r'^version = "([^"]+)"', (CHART_DIR.parents[1] / "pyproject.toml").read_text(), re.M)
    assert project and chart["appVersion"] == project.group(1)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    cpu = yaml.safe_load((CHART_DIR / "ci" / "minimal-cpu-values.yaml").read_text())
    for tag in (values["image"]["tag"], cpu["image"]["tag"]):
        assert tag.startswith(f"{chart['appVersion']}-"), tag


def test_a_pool_no_gpu_group_hosts_is_rejected() -> None:
    values = {
        "workerGroups": {"gpu": {"gpusPerNode": 1, "pools": ["main"]}},
        "surge": {"pools": [POOL, {"name": "orphan", "model": "/m"}]},
    }
    assert '"orphan" is in no enabled GPU worker group\'s pools' in _rejection(values)


def test_ray_start_parameters_the_chart_sets_are_refused() -> None:
    message = _rejection({"head": {"rayStartParams": {"metrics-export-port": "9000"}}})
    assert "head.rayStartParams.metrics-export-port: the chart sets it from surge.observability" in message
    message = _rejection({"workerGroups": {"gpu": {"rayStartParams": {"labels": "a=b"}}}})
    assert "workerGroups.gpu.rayStartParams.labels: KubeRay refuses it" in message


def test_a_serve_host_other_than_every_interface_is_refused() -> None:
    # The app's own default (127.0.0.1, for a laptop) would leave the pods unreachable.
    message = _rejection({"surge": {"server": {"host": "127.0.0.1"}, "pools": [POOL]}})
    assert "surge.server.host is 127.0.0.1: in a pod Serve must listen on every interface" in message


def test_a_relative_batch_files_dir_is_refused_with_the_volume() -> None:
    message = _rejection({"surge": {"batch": {"files_dir": ".cache/surge-files"}}})
    assert 'surge.batch.files_dir is ".cache/surge-files": with batchFiles.enabled it is the volume' in message
    assert "must be absolute" in message
    # Without the chart's volume the app resolves it against its project root, as on a laptop.
    assert render({"batchFiles": {"enabled": False}, "surge": {"batch": {"files_dir": ".cache/surge-files"}}})


def test_a_batch_files_dir_colliding_with_another_mount_is_refused() -> None:
    message = _rejection({"surge": {"batch": {"files_dir": "/tmp/ray/files"}}})
    assert "surge.batch.files_dir /tmp/ray/files collides with the mount /tmp/ray (the chart's Ray logs)" in message
    mounts = [{"name": "models", "mountPath": "/models"}]
    for files_dir in ("/models", "/models/batch/", "/"):
        message = _rejection({"extraVolumeMounts": mounts, "surge": {"batch": {"files_dir": files_dir}}})
        assert "collides with the mount" in message, files_dir
    assert 'collides with the mount /models (extraVolumeMounts "models")' in _rejection(
        {"extraVolumeMounts": mounts, "surge": {"batch": {"files_dir": "/models/batch"}}}
    )
    assert render({"extraVolumeMounts": mounts, "surge": {"batch": {"files_dir": "/models-batch"}}})


def test_a_batch_files_dir_over_the_images_own_directories_is_refused() -> None:
    message = _rejection({"surge": {"batch": {"files_dir": "/opt"}}})
    assert "surge.batch.files_dir /opt would hide the image's /opt/surge" in message


def test_batch_files_volume_values_are_checked() -> None:
    assert 'extraVolumes: "batch-files" is a volume of the chart\'s own' in _rejection(
        {"extraVolumes": [{"name": "batch-files", "emptyDir": {}}]}
    )
    assert "/batchFiles/accessModes/0" in _rejection({"batchFiles": {"accessModes": ["ReadWriteSometimes"]}})
    assert "additional properties 'storageClass' not allowed" in _rejection({"batchFiles": {"storageClass": "nfs"}})
