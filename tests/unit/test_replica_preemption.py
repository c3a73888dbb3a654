"""Batch lines give a replica's engine up the moment an interactive request arrives (ModelReplica with a fake engine
that streams until it is aborted, as vLLM's does: a final "abort" chunk, or an end with no chunk)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cluster.config import load_config
from deployments.engines.base import Engine, EngineStats, GenerationChunk, GenerationRequest, SamplingSpec, TextPrompt
from deployments.errors import ServiceUnavailable
from deployments.model_replica import ModelReplica

BATCH_PRIORITY = 10


class StreamingEngine(Engine):
    """One token per tick until max_tokens or an abort; `silent_abort` ends an aborted stream without a chunk."""

    max_model_len = 512

    def __init__(self, silent_abort: bool = False) -> None:
        self.silent_abort = silent_abort
        self.running: dict[str, asyncio.Event] = {}
        self.aborts: list[str] = []

    def tokenize(self, prompt: object) -> list[int]:
        return [1, 2, 3]

    async def generate(
        self, request_id: str, token_ids: list[int], sampling: SamplingSpec, priority: int
    ) -> AsyncIterator[GenerationChunk]:
        aborted = self.running[request_id] = asyncio.Event()
        for n in range(1, (sampling.max_tokens or 1) + 1):
            await asyncio.sleep(0.001)
            if aborted.is_set():
                if not self.silent_abort:
                    yield GenerationChunk("", len(token_ids), n - 1, "abort")
                return
            yield GenerationChunk("x", len(token_ids), n, "length" if n == sampling.max_tokens else None)

    async def abort(self, request_id: str) -> None:
        self.aborts.append(request_id)
        if request_id in self.running:
            self.running[request_id].set()

    def stats(self) -> EngineStats:
        return EngineStats()

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _request(name: str, priority: int, tokens: int) -> GenerationRequest:
    return GenerationRequest(name, TextPrompt(name), SamplingSpec(max_tokens=tokens), priority)


async def _replica(engine: StreamingEngine) -> ModelReplica:
    replica = ModelReplica.__new__(ModelReplica)
    await replica.__init__(load_config().pools[0], lambda _pool: engine)  # type: ignore[misc]  # as Serve does
    return replica


async def _started(engine: StreamingEngine, name: str) -> None:
    while name not in engine.running:  # the engine has the line: it is running
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("silent_abort", [False, True])
async def test_an_interactive_request_preempts_running_batch_lines(silent_abort: bool) -> None:
    engine = StreamingEngine(silent_abort)
    replica = await _replica(engine)
    lines = [asyncio.create_task(replica.complete(_request(f"line-{i}", BATCH_PRIORITY, 400))) for i in range(3)]
    for i in range(3):
        await _started(engine, f"line-{i}")
    answer = await replica.complete(_request("customer", 2, 4))
    assert answer.completion_tokens == 4 and answer.finish_reason == "length"
    for line in lines:
        with pytest.raises(ServiceUnavailable) as err:
            await line
        assert err.value.code == "preempted" and err.value.status == 503
    assert {f"line-{i}" for i in range(3)} <= set(engine.aborts)
    stats = await replica.stats()
    assert stats["batch_lines_preempted"] == 3 and stats["aborted_requests"] == 0


async def test_a_batch_line_that_finished_is_an_answer_and_lines_do_not_preempt_each_other() -> None:
    engine = StreamingEngine()
    replica = await _replica(engine)
    first = asyncio.create_task(replica.complete(_request("line-a", BATCH_PRIORITY, 50)))
    await _started(engine, "line-a")
    second = await replica.complete(_request("line-b", BATCH_PRIORITY, 5))
    assert second.completion_tokens == 5
    assert (await first).completion_tokens == 50
    await replica.complete(_request("customer", 1, 2))  # nothing of the batch's left to preempt
    assert (await replica.stats())["batch_lines_preempted"] == 0
