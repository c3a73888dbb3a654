"""`make run`'s banner says where its Prometheus metrics are scraped: loopback, Ray's metrics export port."""

from __future__ import annotations

from cluster.config import SurgeConfig, load_config
from cluster.run import _banner


def _config(**observability: object) -> SurgeConfig:
    config = load_config()
    metrics = config.observability.metrics.model_copy(update=observability)
    return config.model_copy(update={"observability": config.observability.model_copy(update={"metrics": metrics})})


def test_the_banner_prints_the_loopback_scrape_address() -> None:
    banner = _banner("http://127.0.0.1:8000", _config(export_port=18080), "")
    assert "Prometheus metrics" in banner and "http://127.0.0.1:18080/metrics" in banner


def test_no_scrape_address_when_metrics_are_off() -> None:
    assert "/metrics" not in _banner("http://127.0.0.1:8000", _config(enabled=False, export_port=18080), "")


def test_no_scrape_address_when_ray_picks_the_port() -> None:
    assert "/metrics" not in _banner("http://127.0.0.1:8000", _config(export_port=None), "")
