"""The one typed surge configuration: inert pydantic models read from YAML with `SURGE_*` overrides.

Objects that act (the Serve app, the local cluster) are built from these models elsewhere.
Environment overrides use `__` between levels: `SURGE_SERVER__PORT=8001`, `SURGE_POOLS='[...]'` (JSON).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cluster.config.admission import AdmissionConfig
from cluster.config.autoscaling import PoolAutoscalingConfig
from cluster.config.batch import BatchApiConfig
from cluster.config.observability import ObservabilityConfig
from cluster.config.paths import DEFAULT_CONFIG_PATH, PROJECT_ROOT

__all__ = [
    "BatchConfig",
    "ConfigError",
    "IngressConfig",
    "LocalNodesConfig",
    "PoolConfig",
    "RayConfig",
    "RouteConfig",
    "RoutingConfig",
    "ServerConfig",
    "SurgeConfig",
    "config_from_mapping",
    "load_config",
]

_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class ConfigError(ValueError):
    """A configuration that cannot be served; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """Where the OpenAI API listens and which front door Serve uses."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # haproxy: Serve's throughput mode (HAProxy on `port`, each ingress replica serving HTTP itself).
    # standard: Ray Serve's own HTTP proxy on `port`.
    proxy: Literal["haproxy", "standard"] = "haproxy"
    # Which nodes run a front door: every node (clusters behind a load balancer) or the head only (a local
    # multi-node rehearsal, where all nodes share one machine and would fight over the port).
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    # Where HAProxy's stats page and Prometheus exporter listen (Ray binds them to every interface).
    haproxy_admin_host: str = "127.0.0.1"
    # How long a stopping ingress replica keeps serving so HAProxy can take it out of rotation;
    # Kubernetes rolling updates want Ray's 30 s, a local run wants a quick exit.
    ingress_drain_s: float = Field(30.0, ge=0)
    request_timeout_s: float = Field(300.0, gt=0)


class BatchConfig(_Strict):
    """Micro-batching of non-streamed requests on their way to a pool (one Ray call per batch)."""

    enabled: bool = True
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    max_concurrent_batches: int = Field(64, ge=1)


class RequestLimitsConfig(_Strict):
    """Bounds on what one HTTP request may carry, enforced by the ingress before its JSON is parsed."""

    # 8 MiB, like common API gateways; a 1024-token context needs a few KiB. Over it: 413, on Content-Length
    # or while a chunked body arrives.
    max_body_bytes: int = Field(8 << 20, ge=1024)
    # `POST /v1/files` uploads are bounded by `batch.max_file_bytes` plus this much multipart framing.
    upload_overhead_bytes: int = Field(1 << 20, ge=0)
    # The whole body must arrive within this long after the headers, or 408: a slow client cannot hold a
    # connection and its buffer forever (uvicorn and HAProxy bound only the gaps between reads, or nothing).
    body_timeout_s: float = Field(30.0, gt=0)
    # Chat messages per request (OpenAI's own limit is 2048); checked before the messages are validated.
    max_messages: int = Field(2048, ge=1)
    # Request headers; HAProxy's own limit (101 headers, 16 KiB buffer) usually answers first, with a 400.
    max_headers: int = Field(100, ge=8)
    max_header_bytes: int = Field(32 << 10, ge=1024)


class IngressConfig(_Strict):
    """The HTTP-facing deployment."""

    limits: RequestLimitsConfig = RequestLimitsConfig()
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(1000, ge=1)
    batching: BatchConfig = BatchConfig()
    # Items accepted by one POST /v1/batch/chat/completions.
    max_batch_items: int = Field(64, ge=1)


class PoolConfig(_Strict):
    """One model pool: a Serve deployment of identical engine replicas."""

    name: str = Field(pattern=_NAME_PATTERN)
    # A local path or a hub id; relative paths resolve against the project root.
    model: str
    # The id clients send as `model`; defaults to the pool name.
    served_model_name: str | None = None
    aliases: list[str] = Field(default_factory=list)
    engine: Literal["vllm"] = "vllm"
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    num_replicas: int = Field(1, ge=1)
    # CPUs of the replica actor itself, and of each tensor/pipeline-parallel engine worker.
    num_cpus: float = Field(1.0, ge=0)
    cpus_per_worker: float = Field(1.0, ge=0)
    # CPU engines on a local multi-node rehearsal: reserve the declared (fake) GPUs so replicas land on
    # GPU workers and spread as they would on a GPU cluster.
    reserve_gpus: bool = False
    # Spread replicas across nodes (Serve's max_replicas_per_node, for pools without placement groups).
    max_replicas_per_node: int | None = Field(None, ge=1)
    # Replica choice inside the pool: prefix-cache affinity with a load bound, or Serve's power of two.
    request_router: Literal["prefix", "power_of_two"] = "prefix"
    # CPU threads for the engine's compute (OMP); None keeps the platform's default.
    engine_threads: int | None = Field(None, ge=1)
    # Concurrent requests one replica accepts; measured engine capacity, not Serve's default of 5.
    max_ongoing_requests: int = Field(128, ge=1)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # Replica count decided by surge's policy between these bounds (num_replicas is the initial count).
    autoscaling: PoolAutoscalingConfig = PoolAutoscalingConfig()

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.name

    @property
    def model_names(self) -> list[str]:
        return [self.model_id, *self.aliases]

    def model_path(self) -> str:
        path = Path(self.model)
        if path.is_absolute() or not (PROJECT_ROOT / path).exists():
            return self.model
        return str(PROJECT_ROOT / path)


class LocalNodesConfig(_Strict):
    """A head plus worker raylets on this machine, workers declaring GPUs, to rehearse multi-node placement."""

    workers: int = Field(2, ge=0)
    head_cpus: int = Field(2, ge=1)
    worker_cpus: int = Field(4, ge=1)
    worker_gpus: int = Field(2, ge=0)


class RayConfig(_Strict):
    """How surge gets a Ray cluster: connect to `address`, or start a local one (multi-node if `local_nodes`)."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    local_nodes: LocalNodesConfig | None = None
    app_name: str = Field("surge", pattern=_NAME_PATTERN)


class RouteConfig(_Strict):
    """What a client's `model` resolves to: weighted pools (a canary split) and a smaller fallback pool."""

    model: str
    pools: dict[str, float] = Field(min_length=1)
    fallback: str | None = None
    # Spill to the fallback once this many requests wait on the primary pool (0: only when it fails).
    queue_threshold: int = Field(0, ge=0)

    @property
    def primary(self) -> str:
        """The pool with the largest weight: the model's main version (shedding and /v1/models read it)."""
        return max(self.pools, key=lambda pool: self.pools[pool])

    @field_validator("pools")
    @classmethod
    def _positive_weights(cls, pools: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in pools.values()) or not sum(pools.values()) > 0:
            raise ValueError("weights must be >= 0 and add up to more than 0")
        return pools


class RoutingConfig(_Strict):
    """The traffic router: routes beyond each pool's own names, circuit breakers, retries."""

    routes: list[RouteConfig] = Field(default_factory=list)
    breaker_failures: int = Field(5, ge=1)
    breaker_open_s: float = Field(10.0, ge=0)
    max_attempts: int = Field(3, ge=1)
    # One attempt's wait for a pool's first token (or whole answer); past it the attempt fails over.
    attempt_timeout_s: float = Field(60.0, gt=0)
    backoff_base_s: float = Field(0.05, ge=0)
    backoff_cap_s: float = Field(1.0, ge=0)
    # The ingress routes on a snapshot of the router's table, refreshed this often (no per-request hop).
    snapshot_interval_s: float = Field(0.25, gt=0)
    # Ask the router deployment on every request instead (one more Ray call per request); kept to measure
    # the snapshot design against it (benchmarks/overhead.py).
    decide_per_request: bool = False
    # How long the ingress waits for the router's answer before deciding on its last snapshot (the router
    # may be restarting): the router is a control plane and must not stall the data path.
    router_timeout_s: float = Field(1.0, gt=0)


class SurgeConfig(BaseSettings):
    """The whole configuration; one instance builds the Serve app."""

    model_config = SettingsConfigDict(
        env_prefix="SURGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    ingress: IngressConfig = IngressConfig()
    ray: RayConfig = RayConfig()
    routing: RoutingConfig = RoutingConfig()
    admission: AdmissionConfig = AdmissionConfig()
    batch: BatchApiConfig = BatchApiConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    pools: list[PoolConfig] = Field(min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: `SURGE_*` overrides what the YAML file (passed as init values) says.
        return env_settings, init_settings

    @field_validator("pools")
    @classmethod
    def _unique_pool_names(cls, pools: list[PoolConfig]) -> list[PoolConfig]:
        _ensure_unique([p.name for p in pools], "pool name")
        return pools

    @model_validator(mode="after")
    def _unique_model_names(self) -> SurgeConfig:
        _ensure_unique([n for p in self.pools for n in p.model_names], "model name or alias")
        _ensure_unique([r.model for r in self.routing.routes], "route model")
        return self

    @model_validator(mode="after")
    def _routes_name_known_pools(self) -> SurgeConfig:
        names = {p.name for p in self.pools}
        for route in self.routing.routes:
            unknown = [n for n in [*route.pools, route.fallback] if n is not None and n not in names]
            if unknown:
                raise ValueError(f"route {route.model!r} names unknown pool(s) {unknown}")
        return self

    def route_table(self) -> dict[str, RouteConfig]:
        """Every model id clients may send: each pool's own names, then explicit routes (which win)."""
        table = {name: RouteConfig(model=name, pools={p.name: 1.0}) for p in self.pools for name in p.model_names}
        return table | {route.model: route for route in self.routing.routes}

    def pool(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)


def _ensure_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


def load_config(path: str | Path | None = None) -> SurgeConfig:
    """Read the YAML file (default `$SURGE_CONFIG` or configs/local.yaml), apply `SURGE_*`, validate."""
    path = Path(path or os.environ.get("SURGE_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    return config_from_mapping(data, str(path))


def config_from_mapping(data: Mapping[str, Any], source: str = "inline config") -> SurgeConfig:
    """Validate `data` as the whole config (with `SURGE_*` overrides, as for a file); errors name `source`.
    RayService `serveConfigV2` hands the app the Helm chart's `surge:` block this way (see mapping.py)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return SurgeConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration:\n{_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)
