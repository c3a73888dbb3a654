"""A real Prometheus scrapes the running app's Ray metrics port; traffic is read back with PromQL, and every
panel of the shipped Grafana dashboard runs against it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster.config import SurgeConfig
from cluster.serving import free_port
from deployments.observability.metrics import METRIC_NAMES
from tests.integration.conftest import Keys
from tests.prometheus_server import Prometheus, prometheus_server

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "surge" / "files" / "surge-dashboard.json"
_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def _chat(url: str, key: str, stream: bool, **extra: object) -> httpx.Response:
    body = {"model": "surge-tiny", "messages": [{"role": "user", "content": "observe me"}], "max_tokens": 8,
            "stream": stream, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=120)


def _traffic(url: str, keys: Keys) -> None:
    """Streamed and not, a cache miss then hit, rate-limited requests, an unknown model."""
    for i in range(6):
        assert _chat(url, keys["enterprise"], stream=i % 2 == 0).status_code == 200
    for _ in range(2):  # deterministic: the second is a cache hit
        assert _chat(url, keys["enterprise"], stream=False, temperature=0, seed=7).status_code == 200
    for _ in range(5):  # the few-rpm tier allows 3 a minute: the rest are rate-limited
        _chat(url, keys["few-rpm"], stream=False)
    unknown = httpx.post(f"{url}/v1/chat/completions", json={"model": "no-such", "messages": []},
                         headers={"Authorization": f"Bearer {keys['enterprise']}"}, timeout=30)
    assert unknown.status_code in (400, 404)


@pytest.fixture(scope="module")
def prometheus(surge_url: str, surge_config: SurgeConfig, api_keys: Keys) -> Iterator[Prometheus]:
    """Prometheus scraping the app's node; traffic in two rounds, so rates see an increase after the series
    first appear (Ray exports every few seconds; a series' first sample is not an increase)."""
    port = surge_config.observability.metrics.export_port
    with prometheus_server([f"127.0.0.1:{port}"], free_port()) as prom:
        _traffic(surge_url, api_keys)
        first = prom.wait_for('sum(ray_surge_requests_total{status="200"})')
        _traffic(surge_url, api_keys)
        prom.wait_for(f'sum(ray_surge_requests_total{{status="200"}}) >= {float(first[0]["value"][1]) + 8}')
        prom.wait_for("ray_vllm_num_requests_running")
        yield prom


def test_ttft_p99_is_read_back_per_tier(prometheus: Prometheus) -> None:
    expr = ("histogram_quantile(0.99, sum by (le, tier) "
            "(rate(ray_surge_time_to_first_token_seconds_bucket[5m])))")
    result = prometheus.wait_for(expr)
    by_tier = {r["metric"]["tier"]: float(r["value"][1]) for r in result}
    assert 0 < by_tier["enterprise"] < 30, by_tier


def test_requests_are_counted_by_status(prometheus: Prometheus) -> None:
    prometheus.wait_for('sum by (status) (ray_surge_requests_total{status=~"4.."})')
    result = prometheus.query("sum by (status) (ray_surge_requests_total)")
    statuses = {r["metric"]["status"]: float(r["value"][1]) for r in result}
    assert statuses["200"] >= 8
    assert set(statuses) - {"200"}, statuses


def test_rate_limited_requests_are_counted_by_tier(prometheus: Prometheus) -> None:
    result = prometheus.wait_for('sum by (tier) (ray_surge_rate_limited_total{tier="few-rpm"})')
    assert float(result[0]["value"][1]) >= 1


def test_cache_hits_and_misses_are_counted(prometheus: Prometheus) -> None:
    hits = prometheus.wait_for("sum(ray_surge_cache_hits_total)")
    misses = prometheus.wait_for("sum(ray_surge_cache_misses_total)")
    assert float(hits[0]["value"][1]) >= 1 and float(misses[0]["value"][1]) >= 1


def test_engine_metrics_come_from_vllm(prometheus: Prometheus) -> None:
    for expr in ("ray_vllm_num_requests_running", "ray_vllm_num_requests_waiting", "ray_vllm_kv_cache_usage_perc",
                 "sum(ray_vllm_generation_tokens_total) > 0", "ray_vllm_time_to_first_token_seconds_bucket"):
        assert prometheus.wait_for(expr), expr


def test_no_label_carries_a_key_or_a_request_id(prometheus: Prometheus, api_key: str) -> None:
    for series in prometheus.query('{__name__=~"ray_surge_.*"}'):
        values = " ".join(series["metric"].values())
        assert api_key not in values
        assert not re.search(r"chatcmpl-|[0-9a-f]{32}", values.replace(series["metric"].get("WorkerId", ""), ""))


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in _GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            queries.append((panel["title"], expr))
    return queries


def _declared() -> set[str]:
    """surge's own series as Ray exports them (a counter that never fired has no series yet, but is the app's)."""
    suffixes = ("", "_bucket", "_count", "_sum")
    return {f"ray_{name}{suffix}" for name in METRIC_NAMES for suffix in suffixes}


def test_every_dashboard_panel_queries_metrics_the_app_exports(prometheus: Prometheus) -> None:
    exported = prometheus.metric_names() | _declared()
    problems = []
    for title, expr in _panel_queries():
        try:
            prometheus.query(expr)
        except ValueError as exc:
            problems.append(f"{title}: {exc}")
        for name in set(re.findall(r"\b(ray_[a-z0-9_]+)", expr)):
            if name not in exported:
                problems.append(f"{title}: {name} is not exported")
    assert not problems, "\n".join(problems)
