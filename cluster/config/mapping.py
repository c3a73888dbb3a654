"""A surge config passed as a mapping instead of a file: RayService `serveConfigV2` hands the app the Helm
chart's `surge:` values block inline (`args: {config: {...}}`), so a changed config is a changed Serve config
that KubeRay rolls out, and no ConfigMap has to be mounted on every Ray node."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from cluster.config.surge import ConfigError, SurgeConfig, _describe

__all__ = ["config_from_mapping"]


def config_from_mapping(data: Mapping[str, Any], source: str = "inline config") -> SurgeConfig:
    """Validate `data` as the whole config (with `SURGE_*` overrides, as for a file); errors name `source`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(data).__name__}")
    try:
        return SurgeConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration:\n{_describe(exc)}") from None
