"""The cluster's own view of a run, read from Prometheus: replicas, KV-cache use, engine queues.

Each panel tries its candidate queries in order and the report names the series that were missing instead of
failing, since a cluster may not export all of them (a GPU-less one has no GPU series, an older one other names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import requests

__all__ = ["PANELS", "PromSeries", "fetch_panels", "parse_matrix"]

# panel -> candidate PromQL queries, best first: the names surge exports through Ray (docs/observability.md: Ray
# prefixes `ray_` and turns vLLM's `vllm:` into `vllm_`), then vLLM's own names for a cluster scraping vLLM directly.
PANELS: dict[str, tuple[str, ...]] = {
    "replicas": (
        'sum(ray_serve_deployment_replica_healthy{deployment=~"pool-.+"})',
        "sum(ray_serve_deployment_replica_healthy)",
    ),
    "kv_cache_usage": ("avg(ray_vllm_kv_cache_usage_perc)", "avg(vllm:kv_cache_usage_perc)"),
    "requests_running": ("sum(ray_vllm_num_requests_running)", "sum(vllm:num_requests_running)"),
    "requests_waiting": ("sum(ray_vllm_num_requests_waiting)", "sum(vllm:num_requests_waiting)"),
}


@dataclass
class PromSeries:
    """One panel's points as (seconds since the run started, value); `query` None when nothing answered."""

    panel: str
    query: str | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def parse_matrix(body: dict[str, object], start_epoch: float) -> list[tuple[float, float]]:
    """Points of a `query_range` answer, summed over its series (the queries aggregate already)."""
    data = body.get("data")
    if body.get("status") != "success" or not isinstance(data, dict):
        return []
    sums: dict[float, float] = {}
    for series in data.get("result") or []:
        for ts, value in series.get("values") or []:
            try:
                v = float(value)
            except ValueError:
                continue
            if v == v:  # NaN: no sample
                sums[float(ts) - start_epoch] = sums.get(float(ts) - start_epoch, 0.0) + v
    return sorted(sums.items())


def _query(url: str, query: str, start: float, end: float, step_s: float) -> dict[str, object]:
    params: dict[str, str | float] = {"query": query, "start": start, "end": end, "step": step_s}
    resp = requests.get(f"{url.rstrip('/')}/api/v1/query_range", params=params, timeout=10)
    resp.raise_for_status()
    body: dict[str, object] = resp.json()
    return body


def fetch_panels(url: str, start_epoch: float, end_epoch: float) -> tuple[dict[str, PromSeries], str | None]:
    """Every panel's series over the run, and an error message when Prometheus could not be read at all."""
    step_s = max(round((end_epoch - start_epoch) / 200, 1), 1.0)
    out: dict[str, PromSeries] = {}
    for panel, candidates in PANELS.items():
        series = PromSeries(panel)
        for query in candidates:
            try:
                points = parse_matrix(_query(url, query, start_epoch, end_epoch, step_s), start_epoch)
            except (requests.RequestException, ValueError) as exc:
                return out, f"Prometheus at {url} could not be read: {exc}"
            if points:
                series.query, series.points = query, points
                break
            series.missing.append(query)
        out[panel] = series
    return out, None
