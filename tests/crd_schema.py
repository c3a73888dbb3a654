"""Strict validation of a custom resource against its CRD's `openAPIV3Schema`, offline.

The API server prunes fields a structural schema does not declare; a chart that renders one has a bug that
nothing reports. This walker fails on them instead (unless `x-kubernetes-preserve-unknown-fields` says the
subtree is free-form), and checks on the way what the API server checks from the schema alone: types, enums,
required fields, int-or-string values, string patterns and lengths, numeric bounds, and the uniqueness of
`x-kubernetes-list-type: map` keys (e.g. two env entries with one name) and of `set` items. CEL rules
(`x-kubernetes-validations`) are not evaluated: the chart sets none of the fields that carry them.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cluster.config import PROJECT_ROOT

__all__ = ["CRDS_DIR", "crd_schemas", "strict_errors"]

# CI runs in a fresh clone with the shared material beside it: ../shared/crds relative to the project.
CRDS_DIR = PROJECT_ROOT.parent / "shared" / "crds"
_EMBEDDED = {"apiVersion", "kind", "metadata"}
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def crd_schemas(crds_dir: Path = CRDS_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """`(apiVersion, kind)` → the served version's openAPIV3Schema, for every CRD file in `crds_dir`."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        # The C loader: the RayService CRD is 1.5 MB of YAML (10 s with the pure-Python one on this machine).
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                api_version = f"{spec['group']}/{version['name']}"
                schemas[(api_version, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict_errors(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every way `obj` breaks `schema`, each as `path: what`; empty when it conforms."""
    if obj is None and schema.get("nullable"):
        return []
    if schema.get("x-kubernetes-int-or-string"):
        return [] if _is(obj, ("integer", "string")) else [f"{path or '/'}: want int or string, got {obj!r}"]
    errors = _type_errors(obj, schema, path)
    if errors:
        return errors
    if "enum" in schema and obj not in schema["enum"]:
        errors.append(f"{path or '/'}: {obj!r} is not one of {schema['enum']}")
    errors += _bound_errors(obj, schema, path or "/")
    for branch_key in ("anyOf", "oneOf"):
        branches = schema.get(branch_key)
        if branches and all(strict_errors(obj, branch, path) for branch in branches):
            errors.append(f"{path or '/'}: matches none of {branch_key}")
    for branch in schema.get("allOf", []):
        errors += strict_errors(obj, branch, path)
    if isinstance(obj, dict):
        errors += _object_errors(obj, schema, path)
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            errors += strict_errors(item, schema["items"], f"{path}[{index}]")
        errors += _duplicate_errors(obj, schema, path)
    return errors


def _is(obj: Any, types: tuple[str, ...]) -> bool:
    if isinstance(obj, bool):
        return "boolean" in types
    return any(isinstance(obj, _TYPES[t]) for t in types)


def _type_errors(obj: Any, schema: dict[str, Any], path: str) -> list[str]:
    wanted = schema.get("type")
    if wanted is None or _is(obj, (wanted,)):
        return []
    return [f"{path or '/'}: want {wanted}, got {type(obj).__name__} {obj!r}"]


def _bound_errors(obj: Any, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if isinstance(obj, str):
        if "pattern" in schema and not _regex(schema["pattern"]).search(obj):
            errors.append(f"{path}: {obj!r} does not match {schema['pattern']!r}")
        if len(obj) > schema.get("maxLength", len(obj)):
            errors.append(f"{path}: {obj!r} is longer than {schema['maxLength']}")
        if len(obj) < schema.get("minLength", 0):
            errors.append(f"{path}: {obj!r} is shorter than {schema['minLength']}")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        if "minimum" in schema and obj < schema["minimum"]:
            errors.append(f"{path}: {obj} is below the minimum {schema['minimum']}")
        if "maximum" in schema and obj > schema["maximum"]:
            errors.append(f"{path}: {obj} is above the maximum {schema['maximum']}")
    return errors


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    """A CRD's (Go RE2) pattern in Python: RE2 allows flag groups such as `^(?i)...` mid-pattern, Python only first."""
    flags = "".join(re.findall(r"\(\?([ims]+)\)", pattern))
    return re.compile((f"(?{flags})" if flags else "") + re.sub(r"\(\?[ims]+\)", "", pattern))


def _duplicate_errors(items: list[Any], schema: dict[str, Any], path: str) -> list[str]:
    """The API server rejects a list-map with two items of one key, and a set with a repeated item."""
    list_type = schema.get("x-kubernetes-list-type")
    if list_type not in ("map", "set"):
        return []
    keys: list[str] = schema.get("x-kubernetes-list-map-keys", [])
    defaults = {k: v.get("default") for k, v in schema["items"].get("properties", {}).items()}
    errors, seen = [], {}
    for index, item in enumerate(items):
        if list_type == "map" and isinstance(item, dict):
            identity = json.dumps([item.get(k, defaults.get(k)) for k in keys])
        else:
            identity = json.dumps(item, sort_keys=True)
        if identity in seen:
            errors.append(f"{path}[{index}]: duplicate of {path}[{seen[identity]}] ({', '.join(keys) or 'item'})")
        seen.setdefault(identity, index)
    return errors


def _object_errors(obj: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}/{key}: required field missing" for key in schema.get("required", []) if key not in obj]
    properties: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, value in obj.items():
        child = f"{path}/{key}"
        if key in properties:
            errors += strict_errors(value, properties[key], child)
        elif isinstance(extra, dict):
            errors += strict_errors(value, extra, child)
        elif properties and not _free_form(schema, key):
            errors.append(f"{child}: field not declared by the schema")
    return errors


def _free_form(schema: dict[str, Any], key: str) -> bool:
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties") is True:
        return True
    return bool(schema.get("x-kubernetes-embedded-resource")) and key in _EMBEDDED
