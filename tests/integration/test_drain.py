"""Graceful drain through the session app's HTTP API (HAProxy in front of the ingress): redeploying the main pool
with a new config, and scaling it in, while streams run truncates none of them. Each redeploy also replaces the
ingress replica (its config changed), so the same streams check the ingress's drain behind HAProxy. The app is
put back to the session's config afterwards."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve
from ray._private import state as ray_state

from cluster.config import SurgeConfig
from deployments.admission import open_store
from deployments.app import build_app
from tests.chaos_load import BoundedLoad, Outcome, Tally
from tests.integration.conftest import Keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# Fewer than the session's fixed shedding limit on `main` (TEST_SHED: 8 queued), so none is refused.
STREAMS = 6
_BOUND_S = 900.0  # generous: an engine starts in tens of seconds here, minutes on a loaded machine


def _body(i: int, stream: bool) -> dict[str, Any]:
    # Distinct prefixes spread the streams over the replicas; ignore_eos keeps each one running to max_tokens.
    messages = [{"role": "system", "content": f"Desk number {i}."}, {"role": "user", "content": "tell me a story"}]
    return {"model": "surge-tiny", "messages": messages, "max_tokens": 256, "ignore_eos": True, "stream": stream}


def _main_replicas() -> set[str]:
    actors = ray_state.actors(actor_state_name="ALIVE").values()
    return {a["Name"].rsplit("#", 1)[-1] for a in actors if a["ActorClassName"] == "ServeReplica:surge:pool-main"}


def _deploy(config: SurgeConfig) -> None:
    target = serve.RunTarget(build_app(config), name=config.ray.app_name, route_prefix="/")
    serve.run_many([target], wait_for_applications_running=False)


def _desks(client: httpx.Client) -> dict[int, str]:
    """Which replica each of 16 prefixes goes to (prefix affinity keeps them there while the pool is not busy)."""
    answers = {i: client.post("/v1/chat/completions", json={**_body(i, False), "max_tokens": 1}) for i in range(16)}
    return {i: r.headers.get("X-Surge-Replica", "") for i, r in answers.items() if r.status_code == 200}


def _serving(client: httpx.Client) -> set[str]:
    return set(_desks(client).values())


def _spread_desks(client: httpx.Client) -> list[int]:
    """STREAMS prefixes taken in turn from each replica's, so every replica serves some of the streams."""
    by_replica: dict[str, list[int]] = {}
    for desk, replica in _desks(client).items():
        by_replica.setdefault(replica, []).append(desk)
    turns = [desk for group in zip(*by_replica.values(), strict=False) for desk in group]
    return (turns * STREAMS)[:STREAMS]


def _wait_settled(client: httpx.Client, replicas: int, app: str) -> set[str]:
    """Until the app is RUNNING and exactly `replicas` live main replicas all answer; returns their ids."""
    deadline = time.monotonic() + _BOUND_S
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        assert status is None or status.status != "DEPLOY_FAILED", status.message
        alive = _main_replicas()
        if status is not None and status.status == "RUNNING" and len(alive) == replicas and _serving(client) == alive:
            return alive
        time.sleep(1)
    raise TimeoutError(f"the main pool did not settle at {replicas} serving replicas within {_BOUND_S:g} s")


def _with_main(config: SurgeConfig, **update: Any) -> SurgeConfig:
    main = config.pools[0]
    assert main.name == "main"
    return config.model_copy(update={"pools": [main.model_copy(update=update), *config.pools[1:]]})


class _Probe:
    """Short non-streamed requests sent one after another while a redeploy runs: how new work is answered."""

    def __init__(self, client: httpx.Client) -> None:
        self._client, self._stop, self.statuses = client, threading.Event(), Counter[int]()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = {**_body(0, False), "max_tokens": 2}
                self.statuses[self._client.post("/v1/chat/completions", json=body).status_code] += 1
            except httpx.HTTPError:
                self.statuses[0] += 1
            time.sleep(0.2)


@pytest.fixture(scope="module")
def drain(surge_url: str, surge_config: SurgeConfig, api_keys: Keys) -> Iterator[tuple[httpx.Client, str]]:
    async def create() -> str:
        async with await open_store(api_keys.dsn) as store:
            return (await store.create_key("drain", "enterprise"))[1]

    key = asyncio.run(create())
    with httpx.Client(base_url=surge_url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        try:
            yield client, key
        finally:
            _deploy(surge_config)  # the session's own config again, for the tests after this module
            _wait_settled(client, 1, surge_config.ray.app_name)


def _streams_through(client: httpx.Client, url: str, key: str, redeploy: SurgeConfig, replicas: int) -> list[Outcome]:
    """Open STREAMS streams, redeploy once every one has its first token, and wait for them and the redeploy."""
    before = _main_replicas()
    desks = _spread_desks(client)
    load = BoundedLoad(url, key, STREAMS, STREAMS, lambda i, stream: _body(desks[i], stream), stream_every=1,
                       timeout_s=600, id_prefix="drain").start()  # fmt: skip
    deadline = time.monotonic() + _BOUND_S
    while load.first_tokens < STREAMS:
        assert time.monotonic() < deadline and load.completed == 0, f"the streams did not all start: {load.outcomes}"
        time.sleep(0.05)
    with _Probe(client) as probe:
        _deploy(redeploy)
        outcomes = load.join()
        after = _wait_settled(client, replicas, redeploy.ray.app_name)
    stopped = before - after
    on_stopped = sum(o.replica in stopped for o in outcomes)
    print(Tally("drain", outcomes, None, {"replicas_before": len(before), "stopped": len(stopped),
                                          "streams_on_stopped": on_stopped,
                                          "new_requests_meanwhile": dict(probe.statuses)}).line())  # fmt: skip
    assert on_stopped > 0, "no stream ran on a replica that was stopped: the test checked nothing"
    assert all(o.ok for o in outcomes), Counter((o.status, o.error_code, o.broken, o.deltas) for o in outcomes)
    return outcomes


def test_redeploying_the_pool_with_a_new_config_truncates_no_stream(
    drain: tuple[httpx.Client, str], surge_url: str, surge_config: SurgeConfig
) -> None:
    client, key = drain
    _wait_settled(client, 1, surge_config.ray.app_name)
    new_engine = {**surge_config.pools[0].engine_args, "stream_interval": 2}
    # The one replica is replaced by two of the new config: the old one must finish its streams.
    _streams_through(client, surge_url, key, _with_main(surge_config, num_replicas=2, engine_args=new_engine), 2)


def test_scaling_the_pool_in_truncates_no_stream(
    drain: tuple[httpx.Client, str], surge_url: str, surge_config: SurgeConfig
) -> None:
    client, key = drain
    new_engine = {**surge_config.pools[0].engine_args, "stream_interval": 2}
    _wait_settled(client, 2, surge_config.ray.app_name)
    # The same replica config with one replica fewer: Serve stops one that is serving streams.
    _streams_through(client, surge_url, key, _with_main(surge_config, num_replicas=1, engine_args=new_engine), 1)
