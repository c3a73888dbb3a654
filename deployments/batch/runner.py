"""The batch runner: its own Serve deployment, feeding batch lines to the pools on their idle capacity.

Every tick it reads each busy pool's engine load (ModelReplica.stats(), the signal the autoscaler reads too),
asks `batch_slots` how many lines the pool may run, preempts its newest lines when that is fewer than it runs
(they run again later: nothing is recorded for them) and starts lines when it is more. The replicas do not wait
for it: an interactive request arriving at one aborts the batch lines there at once (ModelReplica answers them
503 preempted, and they go back in the queue). The store is the only state that matters: a restarted runner
picks every active batch up where its recorded lines end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import replace
from typing import Any

from ray.serve.handle import DeploymentHandle

from cluster.config import SurgeConfig
from deployments.admission.gate import ANONYMOUS, AdmissionGate, Tenant
from deployments.batch.capacity import PoolLoad, Slots, batch_slots
from deployments.batch.execute import LineExecutor, RetryLater
from deployments.batch.files import FileContents
from deployments.batch.jobs import Job, finalize, load_job
from deployments.batch.lines import response_line
from deployments.batch.store import ACTIVE, BatchRow, BatchStore, LineResult
from deployments.engines.base import GenerationChunk, GenerationRequest
from deployments.errors import ServiceUnavailable, SurgeError
from deployments.failures import as_surge_error

__all__ = ["BatchRunner"]

logger = logging.getLogger("surge.batch")
_SYNC_S = 0.5  # how often the store is read for new, cancelled and expired batches
_STATS_TIMEOUT_S = 2.0
_UNLIMITED = 1 << 30


class BatchRunner:
    """Runs every tenant's batches on idle capacity; one replica (the store serialises the rest)."""

    async def __init__(self, config: SurgeConfig, handles: dict[str, DeploymentHandle]) -> None:  # type: ignore[misc]
        self._config = config
        self._cfg = config.batch.runner
        self._handles = handles
        self._gate = AdmissionGate(config.admission)
        self._executor = LineExecutor(self._gate, config.route_table(), self._cfg.priority)
        self._contents = FileContents(config.batch.files_dir)
        self._store = await BatchStore.open(config.admission.key_store_dsn)
        self._jobs: dict[str, Job] = {}
        self._last_interactive: dict[str, float] = {}
        self._interactive_started: dict[str, int] = {}
        self._slots: dict[str, Slots] = {}
        self._counters: Counter[str] = Counter()
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        last_sync = 0.0
        while True:
            try:
                if time.monotonic() - last_sync >= _SYNC_S:
                    last_sync = time.monotonic()
                    await self._sync()
                await self._schedule()
            except Exception:
                logger.exception("batch runner tick failed")
            await asyncio.sleep(self._cfg.poll_interval_s)

    async def _sync(self) -> None:
        rows = await self._store.active_batches()
        for row in rows:
            job = self._jobs.get(row.id)
            if job is None:
                job = await self._open(row)
            if job is not None:
                if row.status != "validating":  # a batch opened just now is in_progress already
                    job.row = row
                await self._advance(job)
        active = {row.id for row in rows}
        for gone in [j for j in self._jobs.values() if j.id not in active]:
            await self._drop(gone)

    async def _open(self, row: BatchRow) -> Job | None:
        now = time.time()
        try:
            job = await load_job(row, await self._tenant(row.tenant), self._store, self._contents,
                                 self._config.batch.max_lines)  # fmt: skip
        except ServiceUnavailable:
            return None  # the store is down: opened again at the next sync, not failed
        except (OSError, SurgeError) as exc:
            error: dict[str, Any] = {"code": "invalid_input_file", "message": str(exc), "param": "input_file_id"}
            await self._store.transition(row.id, ACTIVE, "failed", now, errors=[error])
            return None
        wrong = [line for line in job.lines.values() if line.url != row.endpoint]
        if wrong:
            error = {"code": "invalid_url", "message": f"line {wrong[0].line}: url {wrong[0].url} is not the batch's"
                     f" endpoint {row.endpoint}", "param": "url", "line": wrong[0].line}  # fmt: skip
            await self._store.transition(row.id, ACTIVE, "failed", now, errors=[error], total=len(job.lines))
            return None
        if row.status == "validating":
            await self._store.transition(row.id, ("validating",), "in_progress", now, total=len(job.lines))
            job.row = replace(row, status="in_progress")
        for number, line in sorted(job.lines.items()):
            if number not in job.answered:
                job.pending.setdefault(self._executor.pool_of(line), deque()).append(number)
        self._jobs[row.id] = job
        return job

    async def _advance(self, job: Job) -> None:
        """Move the batch on when it is done, cancelled or past its window."""
        status, store, contents = job.row.status, self._store, self._contents
        if status == "cancelling":
            await self._stop(job)
            await finalize(job, store, contents, "cancelled", ("cancelling",))
        elif status == "finalizing":
            await finalize(job, store, contents, "completed", ("finalizing",))
        elif status == "in_progress" and time.time() >= job.row.expires_at:
            await self._stop(job)
            await finalize(job, store, contents, "expired", ("in_progress",))
        elif status == "in_progress" and job.done:
            if await store.transition(job.id, ("in_progress",), "finalizing", time.time()):
                await finalize(job, store, contents, "completed", ("finalizing",))
        else:
            return
        self._jobs.pop(job.id, None)

    async def _stop(self, job: Job) -> None:
        tasks = [task for _, task in job.in_flight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drop(self, job: Job) -> None:
        await self._stop(job)
        self._jobs.pop(job.id, None)

    async def _tenant(self, name: str) -> Tenant | None:
        if not self._gate.enabled:
            return ANONYMOUS
        keys = await (await self._gate.store()).list_keys()
        key = next((k for k in keys if k.id == name and not k.revoked), None)
        tier = self._config.admission.tiers.get(key.tier) if key is not None else None
        return Tenant(key.id, tier, key) if key is not None and tier is not None else None

    def _in_flight(self, pool: str | None) -> list[tuple[Job, int, asyncio.Task[None]]]:
        return [(job, n, task) for job in self._jobs.values() for n, (p, task) in job.in_flight.items() if p == pool]

    async def _schedule(self) -> None:
        for job in [j for j in self._jobs.values() if j.done and j.row.status == "in_progress"]:
            await self._advance(job)
        pools = {p for j in self._jobs.values() for p, q in j.pending.items() if q}
        pools |= {p for j in self._jobs.values() for p, _ in j.in_flight.values()}
        slots = await asyncio.gather(*(self._pool_slots(p) for p in pools))
        for pool, slot in zip(pools, slots, strict=True):
            running = self._in_flight(pool)
            if len(running) > slot.lines:
                for _, _, task in running[slot.lines :]:
                    self._counters["lines_preempted"] += 1
                    task.cancel()
                continue
            self._start(pool, slot.lines - len(running))

    def _start(self, pool: str | None, free: int) -> None:
        for job in sorted(self._jobs.values(), key=lambda j: j.row.created_at):
            while free > 0 and job.row.status == "in_progress":
                number = job.next_line(pool)
                if number is None:
                    break
                task = asyncio.get_running_loop().create_task(self._run(job, number, pool))
                job.in_flight[number] = (pool, task)
                self._counters["lines_started"] += 1
                free -= 1

    async def _pool_slots(self, pool: str | None) -> Slots:
        if pool is None:  # lines with an unknown model are answered without touching a pool
            return Slots(_UNLIMITED, "no pool", False)
        before = len(self._in_flight(pool))
        try:
            stats = await asyncio.wait_for(self._handles[pool].stats.remote(), _STATS_TIMEOUT_S)
            engine = int(stats.get("unfinished_requests", stats["running_requests"] + stats["waiting_requests"]))
            lines = max(before, len(self._in_flight(pool)))
            load: PoolLoad | None = PoolLoad(engine, lines, self._replicas(pool), self._arrivals(pool, stats))
        except Exception as exc:
            logger.warning("pool %s did not report its load: %r", pool, exc)
            load = None
        now = time.monotonic()
        slot = batch_slots(load, self._last_interactive.get(pool), now, self._cfg)
        if slot.interactive_seen:
            self._last_interactive[pool] = now
            self._counters["yields"] += 1 if self._slots.get(pool, slot).lines > 0 else 0
        self._slots[pool] = slot
        return slot

    def _arrivals(self, pool: str, stats: dict[str, Any]) -> int:
        """Interactive requests started since the last reading; a counter that moved back (another replica of
        the pool answered, or a restarted one) counts as an arrival: yielding is the safe mistake."""
        started = stats.get("interactive_started")
        if started is None:
            return 0
        previous = self._interactive_started.get(pool)
        self._interactive_started[pool] = int(started)
        if previous is None:
            return 0
        return int(started) - previous if started >= previous else 1

    def _replicas(self, pool: str) -> int:
        return next((p.num_replicas for p in self._config.pools if p.name == pool), 1)

    async def _run(self, job: Job, number: int, pool: str | None) -> None:
        line = job.lines[number]
        try:
            status, body = await self._executor.answer(job.row.endpoint, line, job.tenant, self._call)
            record = response_line(job.id, line, status, body)
            # Written, then counted, in one transaction; shielded so a preemption cannot split the two.
            if await asyncio.shield(self._store.record_line(job.id, LineResult(number, status, record))):
                self._counters["lines_answered"] += 1
            job.answered.add(number)
        except RetryLater as retry:
            job.requeue(number, pool, retry.after_s)
        except asyncio.CancelledError:
            job.requeue(number, pool)
            raise
        except Exception:
            logger.exception("batch %s line %d failed; it will run again", job.id, number)
            job.requeue(number, pool, 1.0)
        finally:
            job.in_flight.pop(number, None)

    async def _call(self, pool: str, request: GenerationRequest) -> GenerationChunk:
        response = self._handles[pool].complete.remote(request)
        try:
            chunk: GenerationChunk = await asyncio.wait_for(response, self._cfg.line_timeout_s)  # type: ignore[arg-type]
            return chunk
        except asyncio.CancelledError:
            response.cancel()  # the replica aborts the engine request
            raise
        except TimeoutError:
            response.cancel()
            raise ServiceUnavailable(f"pool {pool!r} did not answer within {self._cfg.line_timeout_s:g} s") from None
        except Exception as exc:
            raise as_surge_error(exc) from None

    async def stats(self) -> dict[str, Any]:
        """What the runner is doing: per pool the slots and why, per batch its lines; counters."""
        jobs = {job.id: {"lines": len(job.lines), "answered": len(job.answered), "in_flight": len(job.in_flight)}
                for job in self._jobs.values()}  # fmt: skip
        pools = {p: {"lines": s.lines, "reason": s.reason, "in_flight": len(self._in_flight(p))}
                 for p, s in self._slots.items()}  # fmt: skip
        return {"jobs": jobs, "pools": pools, **self._counters}

    async def shutdown(self) -> None:
        """Stop as a crash would (lines in flight are simply not recorded), then close the store."""
        self._loop_task.cancel()
        for job in list(self._jobs.values()):
            await self._drop(job)
        await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._store.close()

    async def check_health(self) -> None:
        if self._loop_task.done():
            raise RuntimeError("the batch runner's loop stopped")
