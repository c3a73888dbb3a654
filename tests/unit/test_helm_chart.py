"""The Helm chart lints, renders and validates for every CI variant: built-in kinds with kubernetes-validate
(strict), the RayService and Prometheus Operator objects against the upstream CRDs (strict), and the
RayService's serveConfigV2 is the surge config the app builds from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cluster.config import SurgeConfig
from cluster.config.mapping import config_from_mapping
from tests.crd_schema import CRDS_DIR, crd_schemas, strict_errors
from tests.helm_render import (
    CHART_DIR,
    KUBE_VERSION,
    VARIANTS,
    containers,
    find_kind,
    lint_problems,
    rayservice,
    render_variant,
    serve_config,
    variant_values,
)

CUSTOM = {"ray.io/v1", "monitoring.coreos.com/v1"}


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    if not CRDS_DIR.is_dir():
        pytest.skip(f"upstream CRDs not found at {CRDS_DIR} (the shared/ checkout beside the project)")
    return crd_schemas()


@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_lints_clean(variant: str) -> None:
    assert lint_problems(variant_values(variant)) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_builtin_kinds_pass_kubernetes_validate_strict(variant: str) -> None:
    builtin = [o for o in render_variant(variant) if o["apiVersion"] not in CUSTOM]
    assert {o["kind"] for o in builtin} >= {"ServiceAccount", "ConfigMap"}
    for obj in builtin:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_kubernetes_validate_strict_rejects_an_undeclared_field() -> None:
    (policy,) = find_kind(render_variant("default"), "NetworkPolicy")
    policy["spec"]["ingres"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="ingres"):
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_resources_conform_strictly_to_the_upstream_crds(variant: str, crds: dict[Any, Any]) -> None:
    custom = [o for o in render_variant(variant) if o["apiVersion"] in CUSTOM]
    assert "RayService" in {o["kind"] for o in custom}
    for obj in custom:
        schema = crds[(obj["apiVersion"], obj["kind"])]
        assert strict_errors(obj, schema) == [], f"{obj['kind']} {obj['metadata']['name']}"


def test_strict_crd_validation_rejects_an_undeclared_field(crds: dict[Any, Any]) -> None:
    service = rayservice("default")
    schema = crds[("ray.io/v1", "RayService")]
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["replicas"] = 1
    service["spec"]["upgradeStrategy"]["type"] = 3
    assert set(strict_errors(service, schema)) == {
        "/spec/rayClusterConfig/headGroupSpec/replicas: field not declared by the schema",
        "/spec/upgradeStrategy/type: want string, got int 3",
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_is_the_surge_values_block_and_parses_as_the_app_parses_it(variant: str) -> None:
    serve = serve_config(variant)
    (application,) = serve["applications"]
    assert application["import_path"] == "deployments.app:app_builder"
    config = config_from_mapping(application["args"]["config"], "serveConfigV2")
    assert isinstance(config, SurgeConfig)
    wanted_pools = variant_values(variant).get("surge", {}).get("pools")
    if wanted_pools:
        assert [p.name for p in config.pools] == [p["name"] for p in wanted_pools]
    assert serve["http_options"] == {"host": config.server.host, "port": config.server.port}
    assert application["name"] == config.ray.app_name


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_names_exactly_the_deployments_the_app_builds(variant: str) -> None:
    from ray.serve.deployment import Application

    from deployments.app import build_app

    (application,) = serve_config(variant)["applications"]
    config = config_from_mapping(application["args"]["config"], "serveConfigV2")
    built: set[str] = set()

    def walk(app: Application) -> None:
        deployment = app._bound_deployment
        built.add(deployment.name)
        for arg in [*deployment.init_args, *deployment.init_kwargs.values()]:
            for value in arg.values() if isinstance(arg, dict) else [arg]:
                if isinstance(value, Application):
                    walk(value)

    walk(build_app(config, platform="cuda"))  # binding only: no Ray, no engine
    assert {d["name"] for d in application["deployments"]} == built


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_declares_only_what_ray_serve_knows(variant: str) -> None:
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    serve = serve_config(variant)
    ServeDeploySchema.model_validate(serve)  # what the dashboard's PUT /api/serve/applications/ parses
    # Serve's schema ignores unknown keys: an option it does not declare would silently never take effect.
    assert set(serve) <= set(ServeDeploySchema.model_fields)
    for application in serve["applications"]:
        assert set(application) <= set(ServeApplicationSchema.model_fields)
        for deployment in application["deployments"]:
            assert set(deployment) <= set(DeploymentSchema.model_fields), deployment["name"]


def test_deployment_overrides_reach_serve_config() -> None:
    (application,) = serve_config("multi-pool-tp4")["applications"]
    deployments = {d["name"]: d for d in application["deployments"]}
    assert deployments["pool-big"]["health_check_timeout_s"] == 120
    assert deployments["pool-big"]["graceful_shutdown_timeout_s"] == 600
    assert "health_check_timeout_s" not in deployments["pool-small"]
    assert deployments["ingress"] == {"name": "ingress"}


def test_every_template_renders_in_some_variant() -> None:
    from tests.helm_render import render

    # Every template's objects go through the validations above in at least one CI variant.
    rendered: set[str] = set()
    for variant in VARIANTS:
        manifests = render(variant_values(variant))
        for path, text in manifests.items():
            if path.endswith(".yaml") and any(yaml.safe_load_all(text)):
                rendered.add(Path(path).name)
    from_files = {"prometheusrule.yaml": "surge-rules.yaml", "grafana-dashboard.yaml": "surge-dashboard.json"}
    templates = {
        p.name for p in (CHART_DIR / "templates").glob("*.yaml")
        if p.name not in from_files or (CHART_DIR / "files" / from_files[p.name]).is_file()
    }  # fmt: skip
    assert len(templates) >= 10
    assert templates - rendered == set()


def test_extra_env_replaces_the_charts_entry_of_that_name() -> None:
    # `env` is a list-map in the CRD: a name listed twice would be refused by the API server.
    for container in containers(rayservice("multi-pool-tp4")):
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names)), container["name"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "45"
        assert env["NCCL_DEBUG"] == "WARN"
        assert ("SURGE_CONFIG" in env) == (container["name"] == "ray-head")


def _exposes_admin(variant: str) -> bool:
    return bool(variant_values(variant).get("haproxy", {}).get("exposeAdmin"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_ray_container_gets_the_front_door_mode_the_config_asks_for(variant: str) -> None:
    service = rayservice(variant)
    proxy = config_from_mapping(serve_config(variant)["applications"][0]["args"]["config"]).server.proxy
    exposed = _exposes_admin(variant) and proxy == "haproxy"
    for container in containers(service):
        env = {e["name"]: e.get("value") for e in container["env"]}
        haproxy = env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
        assert haproxy == (proxy == "haproxy"), container["name"]
        if haproxy:
            assert env["SURGE_HAPROXY_ADMIN_HOST"] == ("0.0.0.0" if exposed else "127.0.0.1")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 8080
        assert bool({"haproxy-stats", "haproxy-metrics"} & set(ports)) == exposed


def test_haproxy_admin_listeners_are_exposed_only_when_asked() -> None:
    from tests.helm_render import objects, render

    (service,) = find_kind(objects(render({"haproxy": {"exposeAdmin": True}})), "RayService")
    for container in containers(service):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SURGE_HAPROXY_ADMIN_HOST"] == "0.0.0.0"
        assert {"haproxy-stats", "haproxy-metrics"} <= {p["name"] for p in container["ports"]}
    (monitor,) = find_kind(render_variant("multi-pool-tp4"), "PodMonitor")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "haproxy-metrics"]
    # Without HAProxy (Serve's standard proxy) there is nothing to expose.
    (standard,) = find_kind(render_variant("monitoring-off"), "RayService")
    assert all("haproxy-metrics" not in {p["name"] for p in c["ports"]} for c in containers(standard))


def test_metrics_port_is_the_configs_export_port() -> None:
    from tests.helm_render import objects, render

    objs = objects(render({"surge": {"observability": {"metrics": {"export_port": 9090}}}}))
    (service,) = find_kind(objs, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == "9090"
    for container in containers(service):
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    (policy,) = find_kind(objs, "NetworkPolicy")
    assert any({"port": 9090, "protocol": "TCP"} in rule.get("ports", []) for rule in policy["spec"]["ingress"])


def test_gpu_worker_groups_take_their_gpus_and_tp_pools_their_own_group() -> None:
    groups = {g["groupName"]: g for g in rayservice("multi-pool-tp4")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu-tp4", "gpu-small"}
    limits = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"] for name, g in groups.items()}
    assert limits["gpu-tp4"]["nvidia.com/gpu"] == 4
    assert limits["gpu-small"]["nvidia.com/gpu"] == 1
    assert groups["gpu-tp4"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert (groups["gpu-tp4"]["minReplicas"], groups["gpu-tp4"]["maxReplicas"]) == (1, 4)


def test_autoscaling_on_by_default_and_off_pins_each_group() -> None:
    on = rayservice("default")["spec"]["rayClusterConfig"]
    assert on["enableInTreeAutoscaling"] is True
    assert on["autoscalerOptions"]["upscalingMode"] == "Default"
    off = rayservice("autoscaling-off")["spec"]["rayClusterConfig"]
    assert off["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in off
    (group,) = off["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3


def test_upgrades_build_a_new_cluster_behind_the_serve_service() -> None:
    spec = rayservice("default")["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    # The old cluster outlives the switch by the longest a request may run, so no stream in flight is cut.
    timeout_s = config_from_mapping(yaml.safe_load(spec["serveConfigV2"])["applications"][0]["args"]["config"])
    assert spec["rayClusterDeletionDelaySeconds"] == math.ceil(timeout_s.server.request_timeout_s)
    assert spec["serveService"]["metadata"]["name"] == "surge-serve"
    assert spec["serveService"]["spec"]["ports"][0]["targetPort"] == 8000


def test_postgres_dsn_comes_from_the_secret_never_the_values() -> None:
    for container in containers(rayservice("postgres")):
        (dsn,) = [e for e in container["env"] if e["name"] == "SURGE_ADMISSION__KEY_STORE_DSN"]
        assert dsn == {
            "name": "SURGE_ADMISSION__KEY_STORE_DSN",
            "valueFrom": {"secretKeyRef": {"name": "surge-postgres", "key": "dsn"}},
        }
    assert "postgresql://" not in yaml.safe_dump(render_variant("postgres"))
    (ingress,) = find_kind(render_variant("postgres"), "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "surge-serve"


def test_network_policy_lets_the_operator_probe_serve_when_serving_is_restricted() -> None:
    (policy,) = find_kind(render_variant("postgres"), "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    (operator,) = [r for r in rules if r.get("from") and {"port": 8265, "protocol": "TCP"} in r.get("ports", [])]
    assert {"port": 8000, "protocol": "TCP"} in operator["ports"]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    (serving,) = [r for r in rules if r.get("ports") == [{"port": 8000, "protocol": "TCP"}]]
    assert serving["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


def test_rules_and_dashboard_follow_the_files_in_the_chart() -> None:
    objs = render_variant("default")
    has_rules = (CHART_DIR / "files" / "surge-rules.yaml").is_file()
    has_dashboard = (CHART_DIR / "files" / "surge-dashboard.json").is_file()
    assert bool(find_kind(objs, "PrometheusRule")) == has_rules
    assert any(o["metadata"]["name"] == "surge-dashboard" for o in find_kind(objs, "ConfigMap")) == has_dashboard


def test_monitoring_off_renders_no_monitoring_objects() -> None:
    kinds = {o["kind"] for o in render_variant("monitoring-off")}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget"}
    assert "PodMonitor" in {o["kind"] for o in render_variant("default")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_pinned(variant: str) -> None:
    for container in containers(rayservice(variant)):
        name, _, tag = container["image"].rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), container["image"]


def test_the_old_clusters_deletion_delay_follows_the_request_timeout_unless_set() -> None:
    from tests.helm_render import objects, render

    def delay(values: dict[str, Any]) -> Any:
        (service,) = find_kind(objects(render(values)), "RayService")
        return service["spec"]["rayClusterDeletionDelaySeconds"]

    pools = [{"name": "main", "model": "/m"}]
    assert delay({"surge": {"server": {"request_timeout_s": 90.5}, "pools": pools}}) == 91
    assert delay({"rayClusterDeletionDelaySeconds": 45}) == 45
    assert delay({"rayClusterDeletionDelaySeconds": 0}) == 0


def _batch_files_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(claim, mount path) of the `batch-files` volume in each Ray container."""
    cluster = service["spec"]["rayClusterConfig"]
    found = []
    for pod in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        spec = pod["template"]["spec"]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
        for container in spec["containers"]:
            for mount in container["volumeMounts"]:
                if mount["name"] == "batch-files":
                    found.append((claims["batch-files"], mount["mountPath"]))
    return found


def test_batch_files_claim_is_mounted_at_files_dir_in_every_ray_container() -> None:
    objs = render_variant("postgres")
    (claim,) = find_kind(objs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "surge-batch-files"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-rwx"
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    keep = {"helm.sh/resource-policy": "keep", "backup.example.com/schedule": "daily"}
    assert claim["metadata"]["annotations"] == keep
    (service,) = find_kind(objs, "RayService")
    config = config_from_mapping(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])
    assert config.batch.files_dir == "/data/surge/batch-files"
    # The head and every worker: the ingress and the batch runner may land on any Ray pod.
    wanted = [("surge-batch-files", config.batch.files_dir)] * len(containers(service))
    assert _batch_files_mounts(service) == wanted


def test_an_existing_batch_files_claim_is_mounted_and_none_created() -> None:
    objs = render_variant("multi-pool-tp4")
    assert not find_kind(objs, "PersistentVolumeClaim")
    (service,) = find_kind(objs, "RayService")
    mounts = _batch_files_mounts(service)
    assert mounts == [("surge-batch-files-rwx", "/var/lib/surge/batch-files")] * len(containers(service))


def test_no_batch_files_volume_without_the_batch_api_or_with_the_volume_off() -> None:
    from tests.helm_render import objects, render

    for values in ({"surge": {"batch": {"enabled": False}}}, {"batchFiles": {"enabled": False}}):
        objs = objects(render(values))
        assert not find_kind(objs, "PersistentVolumeClaim"), values
        (service,) = find_kind(objs, "RayService")
        assert _batch_files_mounts(service) == [], values
    (claim,) = find_kind(render_variant("default"), "PersistentVolumeClaim")
    assert "storageClassName" not in claim["spec"]  # null: the cluster's default class
