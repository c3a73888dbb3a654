"""A batch the runner is working on: its lines, which are answered, and writing its output and error files."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field

from deployments.admission.gate import Tenant
from deployments.batch.files import FileContents
from deployments.batch.lines import InputLine, error_line, parse_input
from deployments.batch.store import BatchRow, BatchStore, FileRow, LineResult

__all__ = ["Job", "finalize", "load_job"]

# Final status -> the error code of lines that never got an answer.
_UNANSWERED = {"expired": "batch_expired", "cancelled": "batch_cancelled", "completed": "batch_failed"}


@dataclass
class Job:
    row: BatchRow
    tenant: Tenant | None
    lines: dict[int, InputLine]
    answered: set[int]
    # Lines waiting for a slot, by pool (None: lines that fail before reaching any pool).
    pending: dict[str | None, deque[int]] = field(default_factory=dict)
    in_flight: dict[int, tuple[str | None, asyncio.Task[None]]] = field(default_factory=dict)
    not_before: dict[int, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def done(self) -> bool:
        return len(self.answered) >= len(self.lines)

    def requeue(self, line: int, pool: str | None, after_s: float = 0.0) -> None:
        if line in self.answered:
            return
        if after_s > 0:
            self.not_before[line] = time.monotonic() + after_s
        self.pending.setdefault(pool, deque()).appendleft(line)

    def next_line(self, pool: str | None) -> int | None:
        """The next line for `pool` whose retry time has come (skipping answered ones)."""
        queue = self.pending.get(pool)
        now = time.monotonic()
        for _ in range(len(queue or ())):
            assert queue is not None
            line = queue.popleft()
            if line in self.answered or line in self.in_flight:
                continue
            if self.not_before.get(line, 0.0) > now:
                queue.append(line)
                continue
            self.not_before.pop(line, None)
            return line
        return None


async def load_job(row: BatchRow, tenant: Tenant | None, store: BatchStore, contents: FileContents,
                   max_lines: int) -> Job:  # fmt: skip
    """The batch's lines from its input file, minus those already answered (before a restart)."""
    data = await contents.read(row.tenant, row.input_file_id)
    lines = await asyncio.to_thread(parse_input, data, max_lines)
    answered = await store.answered_lines(row.id)
    return Job(row, tenant, {line.line: line for line in lines}, answered)


async def finalize(job: Job, store: BatchStore, contents: FileContents, final: str, from_: tuple[str, ...]) -> bool:
    """Answer the unanswered lines with an error, write the output and error files, enter `final`.

    Safe to repeat after a crash: file ids follow from the batch id, and answered lines are never rewritten."""
    code = _UNANSWERED[final]
    for number, line in sorted(job.lines.items()):
        if number not in job.answered:
            message = f"the batch was {final} before this request ran"
            await store.record_line(job.id, LineResult(number, 0, error_line(job.id, line, code, message)))
            job.answered.add(number)
    results = await store.line_results(job.id)
    output = [r.record for r in results if r.status_code == 200]
    errors = [r.record for r in results if r.status_code != 200]
    stem = job.id.removeprefix("batch_")
    output_id = await _write(store, contents, job.row.tenant, f"file-{stem}-output", output)
    error_id = await _write(store, contents, job.row.tenant, f"file-{stem}-errors", errors)
    return await store.transition(job.id, from_, final, time.time(), output_file_id=output_id, error_file_id=error_id,
                                  total=len(job.lines))  # fmt: skip


async def _write(store: BatchStore, contents: FileContents, tenant: str, file_id: str,
                 records: list[dict[str, object]]) -> str | None:  # fmt: skip
    if not records:
        return None
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    await contents.write(tenant, file_id, data)
    await store.add_file(FileRow(file_id, tenant, f"{file_id}.jsonl", "batch_output", len(data), time.time()))
    return file_id
