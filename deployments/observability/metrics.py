"""surge's own metrics, through Ray's metrics system (`ray.util.metrics`), named in vLLM's style.

Ray exports every metric with a `ray_` prefix at each node's metrics export port, so
`surge_time_to_first_token_seconds` is scraped as `ray_surge_time_to_first_token_seconds`. Labels are bounded:
configured model/route names, pool names, tier names, priorities 1-5 and HTTP status codes; never a key, tenant,
prompt or request id. Tag dicts are built once per label combination and reused (Ray validates them per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = [
    "ADMISSION_BUCKETS_S",
    "BREAKER_STATES",
    "E2E_BUCKETS_S",
    "ITL_BUCKETS_S",
    "METRIC_NAMES",
    "TTFT_BUCKETS_S",
    "Instrument",
    "InstrumentFactory",
    "SurgeMetrics",
    "ray_instruments",
]

TTFT_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)
E2E_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ADMISSION_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# surge_breaker_state's values, in the order a breaker degrades.
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

_LATENCY_TAGS = ("model", "pool", "tier", "priority")

# name -> (kind, description, tag keys, histogram boundaries)
_SPECS: dict[str, tuple[str, str, tuple[str, ...], Sequence[float]]] = {
    "surge_time_to_first_token_seconds": (
        "histogram", "Time to first token as the client sees it at the ingress.", _LATENCY_TAGS, TTFT_BUCKETS_S),
    "surge_inter_token_latency_seconds": (
        "histogram", "Mean time per output token after the first, one sample per request.", _LATENCY_TAGS,
        ITL_BUCKETS_S),
    "surge_e2e_request_latency_seconds": (
        "histogram", "Request start to last byte at the ingress.", _LATENCY_TAGS, E2E_BUCKETS_S),
    "surge_admission_latency_seconds": (
        "histogram", "Request start until it may be dispatched (auth, limits, quota, cache lookup).", ("tier",),
        ADMISSION_BUCKETS_S),
    "surge_requests_total": ("counter", "Requests answered, by HTTP status.", ("model", "pool", "tier", "status"), ()),
    "surge_rate_limited_total": ("counter", "Requests refused by a per-minute limit (429).", ("tier",), ()),
    "surge_quota_exhausted_total": ("counter", "Requests refused by the daily token quota (429).", ("tier",), ()),
    "surge_shed_total": ("counter", "Requests shed on overload (503).", ("pool", "priority"), ()),
    "surge_fallback_total": ("counter", "Requests served by a fallback pool.", ("model", "pool"), ()),
    "surge_cache_hits_total": ("counter", "Response cache hits.", ("model",), ()),
    "surge_cache_misses_total": ("counter", "Response cache misses (cacheable requests only).", ("model",), ()),
    "surge_retries_total": ("counter", "Dispatch attempts after the first, by the pool retried on.", ("pool",), ()),
    "surge_in_flight_requests": ("gauge", "Requests admitted and not yet finished, per ingress replica.", ("pool",),
                                 ()),
    "surge_breaker_state": ("gauge", "Circuit breaker per pool: 0 closed, 1 half-open, 2 open.", ("pool",), ()),
}
METRIC_NAMES = tuple(_SPECS)


class Instrument(Protocol):
    """What surge calls on a metric: one of the three, depending on its kind."""

    def record(self, value: float, tags: dict[str, str]) -> None: ...


InstrumentFactory = Callable[[str, str, str, tuple[str, ...], Sequence[float]], Instrument]


class _RayInstrument:
    __slots__ = ("_record",)

    def __init__(self, record: Callable[..., Any]) -> None:
        self._record = record

    def record(self, value: float, tags: dict[str, str]) -> None:
        self._record(value, tags=tags)


def ray_instruments(kind: str, name: str, description: str, tag_keys: tuple[str, ...],
                    boundaries: Sequence[float]) -> Instrument:
    """The real instruments: Ray's metrics, exported by the node's metrics agent."""
    from ray.util import metrics

    if kind == "histogram":
        return _RayInstrument(metrics.Histogram(name, description, list(boundaries), tag_keys).observe)
    if kind == "counter":
        return _RayInstrument(metrics.Counter(name, description, tag_keys).inc)
    return _RayInstrument(metrics.Gauge(name, description, tag_keys).set)


class SurgeMetrics:
    """The ingress's instruments with cached tag sets; every method is a few dict lookups and Ray calls."""

    def __init__(self, factory: InstrumentFactory = ray_instruments) -> None:
        self._instruments = {name: factory(kind, name, desc, tags, bounds)
                             for name, (kind, desc, tags, bounds) in _SPECS.items()}
        self._tags: dict[tuple[str, ...], dict[str, str]] = {}

    def _bound(self, name: str, *values: str) -> dict[str, str]:
        key = (name, *values)
        tags = self._tags.get(key)
        if tags is None:
            tags = self._tags[key] = dict(zip(_SPECS[name][2], values, strict=True))
        return tags

    def _record(self, name: str, value: float, *labels: str) -> None:
        self._instruments[name].record(value, self._bound(name, *labels))

    def request(self, model: str, pool: str, tier: str, priority: str, status: str,
                ttft_s: float | None, itl_s: float | None, e2e_s: float) -> None:
        """One finished request's latencies (successful ones) and its status count."""
        self._record("surge_requests_total", 1, model, pool, tier, status)
        if ttft_s is not None:
            self._record("surge_time_to_first_token_seconds", ttft_s, model, pool, tier, priority)
            self._record("surge_e2e_request_latency_seconds", e2e_s, model, pool, tier, priority)
        if itl_s is not None:
            self._record("surge_inter_token_latency_seconds", itl_s, model, pool, tier, priority)

    def admission(self, tier: str, seconds: float) -> None:
        self._record("surge_admission_latency_seconds", seconds, tier)

    def refusal(self, code: str, tier: str, pool: str, priority: str) -> None:
        """Counts the refusals operators watch: rate limits, quota, shedding."""
        if code == "rate_limit_exceeded":
            self._record("surge_rate_limited_total", 1, tier)
        elif code == "insufficient_quota":
            self._record("surge_quota_exhausted_total", 1, tier)
        elif code == "overloaded":
            self._record("surge_shed_total", 1, pool, priority)

    def cache(self, model: str, hit: bool) -> None:
        self._record("surge_cache_hits_total" if hit else "surge_cache_misses_total", 1, model)

    def fallback(self, model: str, pool: str) -> None:
        self._record("surge_fallback_total", 1, model, pool)

    def retry(self, pool: str) -> None:
        self._record("surge_retries_total", 1, pool)

    def pools(self, in_flight: dict[str, int], breakers: dict[str, str]) -> None:
        """Gauges sampled off the hot path: admitted requests and breaker state per pool."""
        for pool, count in in_flight.items():
            self._record("surge_in_flight_requests", float(count), pool)
        for pool, status in breakers.items():
            self._record("surge_breaker_state", BREAKER_STATES.get(status.lower(), 2.0), pool)
