"""Where the project and its default configuration live."""

from pathlib import Path

__all__ = ["DEFAULT_CONFIG_PATH", "PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "configs" / "local.yaml"
