"""A surge config passed as a mapping instead of a file: RayService `serveConfigV2` hands the app the Helm
chart's `surge:` values block inline (`args: {config: {...}}`), so a changed config is a changed Serve config
that KubeRay rolls out, and no ConfigMap has to be mounted on every Ray node."""

from cluster.config.surge import config_from_mapping

__all__ = ["config_from_mapping"]
