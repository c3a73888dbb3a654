"""The one typed surge configuration: inert pydantic models, the bottom layer (imports nothing of surge's
other packages). `surge.py` holds the whole config and the loader, `admission.py` the tiers, key store,
cache and shedding settings."""

from cluster.config.admission import (
    DEFAULT_KEY_STORE_DSN,
    AdmissionConfig,
    CacheConfig,
    ShedConfig,
    TierConfig,
    default_tiers,
    slos_by_priority,
)
from cluster.config.autoscaling import PoolAutoscalingConfig
from cluster.config.batch import BatchApiConfig, BatchRunnerConfig
from cluster.config.identity import ASYMMETRIC_ALGORITHMS, IssuerConfig, NotifyConfig, SmtpConfig, TokenConfig
from cluster.config.observability import MetricsConfig, ObservabilityConfig, TracingConfig
from cluster.config.paths import DEFAULT_CONFIG_PATH, PROJECT_ROOT
from cluster.config.surge import (
    BatchConfig,
    ConfigError,
    IngressConfig,
    LocalNodesConfig,
    PoolConfig,
    RayConfig,
    RequestLimitsConfig,
    RouteConfig,
    RoutingConfig,
    ServerConfig,
    SurgeConfig,
    load_config,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_KEY_STORE_DSN",
    "PROJECT_ROOT",
    "AdmissionConfig",
    "BatchApiConfig",
    "BatchConfig",
    "BatchRunnerConfig",
    "CacheConfig",
    "ConfigError",
    "IngressConfig",
    "IssuerConfig",
    "LocalNodesConfig",
    "MetricsConfig",
    "NotifyConfig",
    "ObservabilityConfig",
    "PoolAutoscalingConfig",
    "PoolConfig",
    "RayConfig",
    "RequestLimitsConfig",
    "RouteConfig",
    "RoutingConfig",
    "ServerConfig",
    "ShedConfig",
    "SmtpConfig",
    "SurgeConfig",
    "TierConfig",
    "TokenConfig",
    "TracingConfig",
    "default_tiers",
    "load_config",
    "slos_by_priority",
]
