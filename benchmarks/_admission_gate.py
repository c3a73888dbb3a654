"""Part 1 of benchmarks/admission.py: the admission path alone, in this process, timed stage by stage."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._common import RequestResult, p50_p99, run_closed_loop, summarize
from benchmarks._loadgen import prompts
from deployments.admission import AdmissionConfig
from deployments.admission.gate import AdmissionGate, prompt_token_bound
from deployments.engines.base import ChatPrompt

if TYPE_CHECKING:
    from benchmarks.admission import Plan

__all__ = ["POOL", "chat_prompts", "run_gate"]

POOL = "main"


def chat_prompts() -> list[ChatPrompt]:
    return [ChatPrompt([{"role": "user", "content": text}]) for text in prompts()]


class _GateBench:
    """The per-request admission path as pipeline.py runs it, timed stage by stage."""

    def __init__(self, gate: AdmissionGate, api_key: str, model: str, plan: Plan) -> None:
        self._gate, self._auth, self._model, self._plan = gate, f"Bearer {api_key}", model, plan
        self._prompts = chat_prompts()
        self.stages: dict[str, list[float]] = {"authenticate": [], "checks_and_shed": [], "reserve": [], "settle": []}

    async def request(self, i: int) -> RequestResult:
        gate, clock, prompt = self._gate, time.perf_counter, self._prompts[i % len(self._prompts)]
        t0 = clock()
        tenant = await gate.authenticate(self._auth)
        t1 = clock()
        gate.check_model(tenant, self._model)
        priority = gate.priority(tenant, None)
        cap = gate.max_tokens(tenant, self._plan.max_tokens) or 0
        gate.shed(priority, POOL, i % self._plan.pool_capacity)  # a queue that is never over its limit
        t2 = clock()
        reservation = await gate.reserve(tenant, prompt_token_bound(prompt) + cap)
        t3 = clock()
        await gate.settle(reservation, 40 + cap)  # fewer tokens than reserved: a refund, as on most requests
        t4 = clock()
        for samples, spent_s in zip(self.stages.values(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            samples.append(spent_s)
        return RequestResult(None, t4 - t0, 0)


async def _key_lookup_s(gate: AdmissionGate, api_key: str, count: int) -> list[float]:
    """What a key-cache miss costs: the SQL lookup behind authenticate."""
    store, samples = await gate.store(), []
    for _ in range(count):
        start = time.perf_counter()
        await store.lookup(api_key)
        samples.append(time.perf_counter() - start)
    return samples


async def _gate_async(plan: Plan, base: AdmissionConfig, tier: str, model: str, directory: Path) -> dict[str, Any]:
    config = base.model_copy(update={"enabled": True, "key_store_dsn": f"sqlite:///{directory}/keys.db"})
    gate = AdmissionGate(config)
    try:
        _, api_key = await (await gate.store()).create_key("bench-gate", tier)
        levels: dict[str, Any] = {}
        for concurrency in sorted({1, plan.e2e_concurrency, plan.gate_concurrency}):
            bench = _GateBench(gate, api_key, model, plan)
            await run_closed_loop(bench.request, plan.warmup_requests, concurrency)
            bench = _GateBench(gate, api_key, model, plan)
            load = await run_closed_loop(bench.request, plan.gate_requests, concurrency)
            latencies = [r.latency_s for r in load.requests if r.error is None]
            stages = {k: p50_p99(v, "us") for k, v in bench.stages.items()}
            levels[f"c{concurrency}"] = summarize(load) | p50_p99(latencies, "us") | {"stages": stages}
        levels["key_lookup_uncached"] = p50_p99(await _key_lookup_s(gate, api_key, 200), "us")
        return levels
    finally:
        await gate.close()


def run_gate(plan: Plan, admission: AdmissionConfig, tier: str, model: str) -> dict[str, Any]:
    """The admission path in this process on a fresh SQLite store, for a key of `tier` (which `admission`
    must define), at concurrency 1, the end-to-end level and the gate level; plus an uncached key lookup."""
    with tempfile.TemporaryDirectory(prefix="surge-bench-admission-") as directory:
        return asyncio.run(_gate_async(plan, admission, tier, model, Path(directory)))
