"""The model replica: one engine per Serve replica; a pool is the deployment's set of replicas."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from typing import Any

from cluster.config import PoolConfig
from deployments import observability
from deployments.engines.base import (
    Engine,
    GenerationBatch,
    GenerationChunk,
    GenerationRequest,
    SamplingSpec,
    TextPrompt,
)
from deployments.errors import BadRequest, ContextLengthExceeded, ServiceUnavailable, SurgeError
from deployments.replica_load import ReplicaLoad

__all__ = ["EngineFactory", "ModelReplica", "vllm_engine"]

logger = logging.getLogger("surge.replica")
_LOWEST_TIER_PRIORITY = 5  # batch lines run below it (batch.runner.priority)
EngineFactory = Callable[[PoolConfig], Engine]


def vllm_engine(pool: PoolConfig) -> Engine:
    """The default engine: vLLM on the pool's model."""
    from deployments.engines.vllm import VllmEngine

    return VllmEngine(pool.model_path(), pool.engine_args)


def _as_result(result: GenerationChunk | BaseException) -> GenerationChunk | SurgeError:
    if isinstance(result, GenerationChunk | SurgeError):
        return result
    logger.error("request in a batch failed", exc_info=result)
    return SurgeError("internal server error")


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside Serve (unit tests with a fake engine)
        return ""


class ModelReplica:
    """Hosts one engine; validates prompt length against it and streams its output."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, pool: PoolConfig, engine_factory: EngineFactory = vllm_engine
    ) -> None:
        self._pool = pool
        self._load = ReplicaLoad()
        self._engine = engine_factory(pool)
        self._aborted = 0
        # Requests of the tiers' priorities (1..5) ever started here: the batch runner yields when it grows, which
        # catches requests too short to be seen in a sample of the engine's queue.
        self._interactive_started = 0
        # Batch lines (priority below every tier's) in this engine now, and those an interactive request took the
        # engine from: they end with a 503 that the batch runner answers by running the line again later.
        self._batch_lines: set[str] = set()
        self._preempted: set[str] = set()
        self._batch_preempted = 0
        self._batches = 0
        self._batched_requests = 0
        self._replica_id = _replica_id()
        await self._warm_up()
        self._load.ready()
        logger.info("replica of pool %s ready (max_model_len=%d)", pool.name, self._engine.max_model_len)

    async def _warm_up(self) -> None:
        # The first request of a fresh engine pays one-off costs (seconds on TP engines): pay them
        # before Serve marks the replica ready.
        warm = GenerationRequest(f"warmup-{uuid.uuid4().hex}", TextPrompt("warm up"), SamplingSpec(max_tokens=2))
        async for _ in self.generate(warm):
            pass

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], SamplingSpec]:
        try:
            token_ids = self._engine.tokenize(request.prompt)
        except ValueError as exc:
            raise BadRequest(str(exc), param="prompt") from None
        limit = self._engine.max_model_len
        wanted = request.sampling.max_tokens
        if len(token_ids) + (wanted or 1) > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(token_ids) + (wanted or 0)} tokens ({len(token_ids)} in the prompt, {wanted or 0} "
                "in the completion). Please reduce the length of the prompt or the completion.",
                param="messages",
            )
        room = limit - len(token_ids)
        default = min(room, request.sampling.max_tokens_cap or room)
        return token_ids, replace(request.sampling, max_tokens=wanted or default)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks; a cancelled caller (client gone) aborts the engine request."""
        token_ids, sampling = self._prepare(request)
        if request.priority <= _LOWEST_TIER_PRIORITY:
            self._interactive_started += 1
            await self._preempt_batch_lines()
        else:
            self._batch_lines.add(request.request_id)
        finished = False
        replica_id = self._replica_id
        started = time.monotonic()
        span = observability.replica_span(self._pool.name, request)
        try:
            async for chunk in self._engine.generate(request.request_id, token_ids, sampling, request.priority):
                self._raise_if_preempted(request.request_id)
                finished = chunk.finish_reason is not None
                if started:
                    self._load.first_token(time.monotonic() - started)
                    started = 0.0
                yield replace(chunk, replica_id=replica_id) if replica_id else chunk
                replica_id = ""
            self._raise_if_preempted(request.request_id)  # an aborted stream may also just end
        finally:
            observability.end_span(span)
            self._batch_lines.discard(request.request_id)
            preempted = request.request_id in self._preempted
            self._preempted.discard(request.request_id)
            if not finished:
                if not preempted:
                    self._aborted += 1
                # Also after a preemption: its abort may have come before the engine had the request.
                await self._engine.abort(request.request_id)

    def _raise_if_preempted(self, request_id: str) -> None:
        if request_id in self._preempted:
            raise ServiceUnavailable("the batch line gave the engine up to interactive work", code="preempted")

    async def _preempt_batch_lines(self) -> None:
        """Take the engine from every batch line at once, before the interactive request joins it: a running line
        would share every engine step with it until the batch runner's next look at the pool."""
        if not self._batch_lines:
            return
        lines, self._batch_lines = self._batch_lines, set()
        self._preempted |= lines
        self._batch_preempted += len(lines)
        await asyncio.gather(*(self._engine.abort(line) for line in lines))

    async def complete(self, request: GenerationRequest) -> GenerationChunk:
        """The whole completion as one chunk (non-streamed requests cross Ray once)."""
        pieces: list[str] = []
        last: GenerationChunk | None = None
        async for chunk in self.generate(request):
            pieces.append(chunk.text)
            last = chunk
        assert last is not None, "the engine ended a request without a final chunk"
        return replace(last, text="".join(pieces), replica_id=self._replica_id)

    async def complete_batch(self, batch: GenerationBatch) -> list[GenerationChunk | SurgeError]:
        """Several non-streamed requests in one call (the ingress micro-batches them); one item's error
        is returned in its slot and does not fail the others."""
        self._batches += 1
        self._batched_requests += len(batch.requests)
        results = await asyncio.gather(*(self.complete(r) for r in batch.requests), return_exceptions=True)
        return [_as_result(r) for r in results]

    async def stats(self) -> dict[str, Any]:
        counters = {
            "aborted_requests": self._aborted,
            "interactive_started": self._interactive_started,
            "batch_lines_preempted": self._batch_preempted,
            "batches": self._batches,
            "batched_requests": self._batched_requests,
        }
        return {"pool": self._pool.name, **counters, **asdict(self._engine.stats())}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics hook: engine queue and KV use, recent TTFT, start-up time."""
        return self._load.report(self._engine.stats())

    async def check_health(self) -> None:
        """Serve's periodic health check: an engine that died marks the replica unhealthy."""
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
