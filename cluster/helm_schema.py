"""Writes the Helm chart's values.schema.json: the chart's own values, and its `surge:` block from the pydantic
config (`SurgeConfig.model_json_schema()`), so `helm lint` rejects a bad value, naming it, as the app would.

`python -m cluster.helm_schema` regenerates helm/surge/values.schema.json (`--check` fails on drift instead);
tests/unit/test_helm_values.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cluster.config import PROJECT_ROOT, SurgeConfig

__all__ = ["SCHEMA_PATH", "chart_schema", "render_schema"]

SCHEMA_PATH = PROJECT_ROOT / "helm" / "surge" / "values.schema.json"
_K8S_QUANTITY = {"anyOf": [{"type": "string"}, {"type": "number"}]}
_OBJECT: dict[str, Any] = {"type": "object"}
_LIST: dict[str, Any] = {"type": "array"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, closed: bool = True) -> dict[str, Any]:
    """An object schema; closed objects reject undeclared keys (a typo fails `helm lint`)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    if required:
        schema["required"] = required
    return schema


def _int(minimum: int = 0, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _named_list(*required: str) -> dict[str, Any]:
    """A list of Kubernetes objects (EnvVar, Volume, VolumeMount) that must carry `required` strings."""
    keys = {key: _string(minLength=1) for key in required}
    return {"type": "array", "items": {"type": "object", "properties": keys, "required": list(required)}}


def _serve_options() -> dict[str, Any]:
    """A `deployments` entry of serveConfigV2 minus its name: the options Ray Serve's own schema declares (Serve
    ignores an unknown one silently, so a typo would never take effect)."""
    from ray.serve.schema import DeploymentSchema  # imports Ray: only when the schema is generated

    # Closed, each option open: a typo fails naming the deployment; Serve checks the option's value itself.
    return _obj({name: {} for name in DeploymentSchema.model_fields if name != "name"})


def _monitor() -> dict[str, Any]:
    return _obj({"enabled": {"type": "boolean"}, "interval": _string(pattern=r"^[0-9]+(ms|s|m|h)$"), "labels": _OBJECT})


def _worker_group() -> dict[str, Any]:
    return _obj(
        {
            "enabled": {"type": "boolean"},
            "gpusPerNode": _int(0),
            "pools": {"type": "array", "items": _string()},
            "replicas": _int(0),
            "minReplicas": _int(0),
            "maxReplicas": _int(0),
            "idleTimeoutSeconds": _int(0),
            "rayStartParams": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
            "resources": _resources(),
            "nodeSelector": {"type": "object", "additionalProperties": _string()},
            "tolerations": _LIST,
            "affinity": _OBJECT,
        },
        required=["enabled", "gpusPerNode", "replicas", "minReplicas", "maxReplicas"],
    )


def _resources() -> dict[str, Any]:
    quantities = {"type": "object", "additionalProperties": _K8S_QUANTITY}
    return _obj({"requests": quantities, "limits": quantities})


def _chart_properties() -> dict[str, Any]:
    """Every chart value outside `surge:` (values.yaml documents each)."""
    return {**_pod_properties(), **_cluster_properties(), **_service_properties(), **_monitoring_properties()}


def _pod_properties() -> dict[str, Any]:
    """Names, the image and what every Ray pod shares."""
    return {
        "nameOverride": _string(),
        "fullnameOverride": _string(maxLength=40),
        "image": _obj(
            {
                "repository": _string(minLength=1),
                # Pinned: a tag must be given, and never `latest`.
                "tag": {"type": "string", "minLength": 1, "not": {"const": "latest"}},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
            required=["repository", "tag"],
        ),
        "imagePullSecrets": _LIST,
        "rayVersion": _string(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$"),
        "serviceAccount": _obj({"create": {"type": "boolean"}, "name": _string(), "annotations": _OBJECT}),
        "commonLabels": _OBJECT,
        "podAnnotations": _OBJECT,
        "podSecurityContext": _OBJECT,
        "containerSecurityContext": _OBJECT,
        # Kubernetes objects, open to every field of theirs, but named: the chart merges them by name.
        "extraEnv": _named_list("name"),
        "extraVolumes": _named_list("name"),
        "extraVolumeMounts": _named_list("name", "mountPath"),
        "shmSize": _K8S_QUANTITY,
    }


def _cluster_properties() -> dict[str, Any]:
    """The head, the worker groups, autoscaling and upgrades."""
    return {
        "head": _obj(
            {
                "rayStartParams": {"type": "object"},
                "resources": _resources(),
                "nodeSelector": _OBJECT,
                "tolerations": _LIST,
                "affinity": _OBJECT,
            }
        ),
        "workerGroups": {
            "type": "object",
            "propertyNames": {"pattern": r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"},
            "additionalProperties": _worker_group(),
        },
        "autoscaling": _obj(
            {
                "enabled": {"type": "boolean"},
                "version": {"enum": ["v1", "v2"]},
                "upscalingMode": {"enum": ["Conservative", "Default", "Aggressive"]},
                "idleTimeoutSeconds": _int(0),
                "resources": _resources(),
            }
        ),
        # NewClusterWithIncrementalUpgrade needs Gateway API options the chart does not render.
        "upgradeStrategy": _obj({"type": {"enum": ["NewCluster", "None"]}}),
        # null: the surge config's server.request_timeout_s.
        "rayClusterDeletionDelaySeconds": {"type": ["integer", "null"], "minimum": 0},
        "deploymentOverrides": {"type": "object", "additionalProperties": _serve_options()},
    }


def _service_properties() -> dict[str, Any]:
    """How traffic reaches the pods: Service, Ingress, the key store's Secret, HAProxy, network policy."""
    port = _int(1, 65535)
    return {
        "service": _obj(
            {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": port, "annotations": _OBJECT}
        ),
        "ingress": _obj(
            {
                "enabled": {"type": "boolean"},
                "className": _string(),
                "annotations": _OBJECT,
                "hosts": _LIST,
                "tls": _LIST,
            }
        ),
        "postgres": _obj(
            {"enabled": {"type": "boolean"}, "existingSecret": _string(), "secretKey": _string(minLength=1)}
        ),
        "batchFiles": _batch_files(),
        "haproxy": _obj(
            {
                "wrapperPath": _string(minLength=1),
                "binaryPath": _string(minLength=1),
                "statsPort": port,
                "metricsPort": port,
                "exposeAdmin": {"type": "boolean"},
            }
        ),
        "networkPolicy": _obj(
            {"enabled": {"type": "boolean"}, "servingFrom": _LIST, "metricsFrom": _LIST, "operatorFrom": _LIST}
        ),
        "podDisruptionBudget": _obj({"enabled": {"type": "boolean"}, "maxUnavailable": _int(0)}),
    }


def _batch_files() -> dict[str, Any]:
    """The Batch API's files volume: an existing claim, or one the chart creates."""
    modes = {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}
    return _obj(
        {
            "enabled": {"type": "boolean"},
            "existingClaim": _string(),
            # null: the cluster's default StorageClass; "": none (a pre-bound volume).
            "storageClassName": {"type": ["string", "null"]},
            "size": _K8S_QUANTITY,
            "accessModes": {"type": "array", "items": modes, "minItems": 1, "uniqueItems": True},
            "keepOnUninstall": {"type": "boolean"},
            "annotations": _OBJECT,
        }
    )


def _monitoring_properties() -> dict[str, Any]:
    """The Prometheus Operator / Grafana objects (the metrics port is the surge config's)."""
    return {
        "monitoring": _obj(
            {
                "enabled": {"type": "boolean"},
                "podMonitor": _monitor(),
                "serviceMonitor": _monitor(),
                "prometheusRule": _obj({"enabled": {"type": "boolean"}, "labels": _OBJECT,
                                        "gpuUtilizationSource": {"enum": ["auto", "ray", "dcgm"]}}),
                "grafanaDashboard": _obj({"enabled": {"type": "boolean"}, "labels": _OBJECT}),
            }
        ),
    }


def chart_schema() -> dict[str, Any]:
    """The whole values schema; pydantic's `$defs` sit at the top, where its `#/$defs/...` references point."""
    surge = SurgeConfig.model_json_schema()
    defs = surge.pop("$defs", {})
    properties = {**_chart_properties(), "surge": surge}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "surge Helm chart values",
        "description": "Generated by `python -m cluster.helm_schema`; `surge` is cluster.config.SurgeConfig.",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "surge"],
        "properties": properties,
        "$defs": defs,
    }


def render_schema() -> str:
    """values.schema.json's exact text."""
    return json.dumps(chart_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.helm_schema", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    parser.add_argument("--path", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    text = render_schema()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run `python -m cluster.helm_schema`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
