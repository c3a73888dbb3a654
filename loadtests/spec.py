"""What one load-test run does: inert, typed, passed from the CLI to the Locust process as JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SPEC_ENV", "RunSpec", "TierShare", "UsageError", "resolve_keys"]

SPEC_ENV = "SURGE_LOADTEST_SPEC"
Scenario = Literal["steady", "promo-day", "replay"]


class UsageError(ValueError):
    """A run that cannot start as asked (exit code 2)."""


class TierShare(BaseModel):
    """A tier's share of the conversations and the priority its requests ask for (None: the tier's default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(gt=0)
    priority: int | None = Field(None, ge=1, le=5)


def _default_tiers() -> dict[str, TierShare]:
    return {
        "free": TierShare(weight=0.6, priority=4),
        "pro": TierShare(weight=0.3, priority=2),
        "enterprise": TierShare(weight=0.1, priority=1),
    }


class RunSpec(BaseModel):
    """One run: target, scenario, arrivals, request mix and where the report goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: Scenario
    host: str
    model: str = "surge-tiny"
    report_dir: str
    trace: str | None = None
    slo_file: str | None = None
    prometheus: str | None = None
    compress: float = Field(1.0, gt=0)  # profile seconds per run second
    rate_rps: float = Field(2.0, gt=0)  # steady rate, or promo-day's baseline rate
    rate_scale: float = Field(1.0, gt=0)  # multiplies a trace's rate (a promo-day multiple of real traffic)
    duration_s: float = Field(60.0, gt=0)  # steady scenario, run seconds
    process: Literal["poisson", "gamma"] = "poisson"
    cv: float = Field(1.0, gt=0)  # gamma arrivals: coefficient of variation of the gaps (> 1: bursts)
    tiers: dict[str, TierShare] = Field(default_factory=_default_tiers)
    keys: dict[str, str] = Field(default_factory=dict, repr=False)  # tier -> API key, resolved by the CLI
    stream_fraction: float = Field(0.9, ge=0, le=1)
    max_tokens: int = Field(64, ge=1)
    ignore_eos: bool = False  # every answer exactly max_tokens long, as benchmark clients ask (trace rows always do)
    max_turns: int | None = Field(None, ge=1)  # cut conversations short (1: first turns only, fixed prompt sizes)
    max_prompt_tokens: int = Field(640, ge=16)  # trace rows are clamped to the model's context
    max_output_tokens: int = Field(256, ge=1)
    users_per_rps: float = Field(4.0, gt=0)  # concurrency held ready per request/s of upcoming rate
    min_users: int = Field(4, ge=1)
    max_users: int = Field(256, ge=1)
    drain_s: float = Field(30.0, ge=0)  # after the last arrival, wait this long at most for in-flight requests
    seed: int = 0

    @classmethod
    def from_env(cls) -> RunSpec:
        raw = os.environ.get(SPEC_ENV)
        if not raw:
            raise UsageError(f"{SPEC_ENV} is not set: start runs with `python -m loadtests run`")
        return cls.model_validate_json(raw)


def _env_key(tier: str) -> str | None:
    return os.environ.get("SURGE_LOADTEST_KEY_" + tier.upper().replace("-", "_"))


def _file_keys(path: str | None) -> dict[str, str] | str:
    """A keys file is a YAML mapping tier -> key, or one bare key that every tier uses."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read keys file {path}: {exc.strerror}") from exc
    data = yaml.safe_load(text)
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if isinstance(data, str) and data.strip():
        return data.strip()
    raise UsageError(f"keys file {path} holds neither a key nor a tier -> key mapping")


def resolve_keys(tiers: list[str], keys_file: str | None) -> dict[str, str]:
    """One API key per tier: `SURGE_LOADTEST_KEY_<TIER>` wins over the keys file."""
    from_file = _file_keys(keys_file)
    keys: dict[str, str] = {}
    for tier in tiers:
        key = _env_key(tier) or (from_file if isinstance(from_file, str) else from_file.get(tier))
        if not key:
            env = "SURGE_LOADTEST_KEY_" + tier.upper().replace("-", "_")
            raise UsageError(f"no API key for tier '{tier}': set {env} or name it in --keys FILE")
        keys[tier] = key
    return keys
