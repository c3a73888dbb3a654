"""The report's cluster panels read Prometheus' query_range API and tolerate series a cluster does not export."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from cluster.serving import free_port
from loadtests.prom import fetch_panels, parse_matrix

START = 1_700_000_000.0


@pytest.fixture
def prometheus() -> Iterator[tuple[str, list[str]]]:
    """A Prometheus HTTP API that knows only vLLM's KV-cache gauge (two replicas' series)."""
    asked: list[str] = []

    async def query_range(request: web.Request) -> web.Response:
        query = request.query["query"]
        asked.append(query)
        result = []
        if query == "avg(vllm:kv_cache_usage_perc)":  # the fallback name: the first is missing
            result = [{"metric": {}, "values": [[START + 5, "0.25"], [START + 10, "0.5"], [START + 15, "NaN"]]}]
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})

    app = web.Application()
    app.router.add_get("/api/v1/query_range", query_range)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def test_present_series_are_read_and_missing_ones_named(prometheus: tuple[str, list[str]]) -> None:
    url, asked = prometheus
    panels, error = fetch_panels(url, START, START + 20)
    assert error is None
    assert panels["kv_cache_usage"].points == [(5.0, 0.25), (10.0, 0.5)]  # NaN is no sample
    assert panels["kv_cache_usage"].missing == ["avg(ray_vllm_kv_cache_usage_perc)"]
    assert panels["replicas"].points == [] and len(panels["replicas"].missing) == 2
    assert asked.count("avg(vllm:kv_cache_usage_perc)") == 1


def test_an_unreachable_prometheus_is_reported_not_raised() -> None:
    _, error = fetch_panels("http://127.0.0.1:9", START, START + 20)
    assert error and "could not be read" in error


def test_a_failed_query_has_no_points() -> None:
    assert parse_matrix({"status": "error", "error": "bad query"}, START) == []
