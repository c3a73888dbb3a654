"""The Batch API's SQL store on SQLite and on a real PostgreSQL: a line is answered once, counted with its
answer, status changes are compare-and-set, and every read is scoped to its tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deployments.batch.store import BatchRow, BatchStore, FileRow, LineResult
from tests.pg_server import fresh_database, postgres_server


@pytest.fixture(scope="module")
def postgres_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'batches.db'}"
    admin_dsn: str = request.getfixturevalue("postgres_admin_dsn")
    return fresh_database(admin_dsn, "surge_batch")


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[BatchStore]:
    opened = await BatchStore.open(dsn)
    yield opened
    await opened.close()


def _batch(batch_id: str, tenant: str = "t1", created_at: float = 1.0) -> BatchRow:
    return BatchRow(batch_id, tenant, "file-1", "/v1/chat/completions", "24h", {"job": "x"}, "in_progress",
                    created_at, created_at + 86_400)  # fmt: skip


async def test_a_line_is_answered_and_counted_once(store: BatchStore) -> None:
    await store.add_batch(_batch("batch_a"))
    first = await store.record_line("batch_a", LineResult(1, 200, {"custom_id": "a"}))
    again = await store.record_line("batch_a", LineResult(1, 500, {"custom_id": "a", "late": True}))
    await store.record_line("batch_a", LineResult(2, 400, {"custom_id": "b"}))
    row = await store.batch("t1", "batch_a")
    assert (first, again) == (True, False)
    assert row is not None and (row.counts.completed, row.counts.failed) == (1, 1)
    assert [r.record for r in await store.line_results("batch_a")] == [{"custom_id": "a"}, {"custom_id": "b"}]


async def test_a_transition_happens_only_from_the_expected_status(store: BatchStore) -> None:
    await store.add_batch(_batch("batch_a"))
    assert await store.transition("batch_a", ("in_progress",), "cancelling", 5.0)
    assert not await store.transition("batch_a", ("in_progress",), "finalizing", 6.0)
    row = await store.batch(None, "batch_a")
    assert row is not None and row.status == "cancelling" and row.times["cancelling_at"] == 5.0


async def test_reads_are_scoped_to_the_tenant(store: BatchStore) -> None:
    await store.add_file(FileRow("file-1", "t1", "in.jsonl", "batch", 10, 1.0))
    await store.add_batch(_batch("batch_a"))
    assert await store.file("t2", "file-1") is None and await store.batch("t2", "batch_a") is None
    assert not await store.delete_file("t2", "file-1")
    assert await store.files("t2", None, 10) == [] and await store.batches("t2", None, 10) == []


async def test_batches_page_newest_first_after_a_cursor(store: BatchStore) -> None:
    for i in range(5):
        await store.add_batch(_batch(f"batch_{i}", created_at=float(i)))
    page = await store.batches("t1", None, 2)
    assert [b.id for b in page] == ["batch_4", "batch_3"]
    assert [b.id for b in await store.batches("t1", "batch_3", 10)] == ["batch_2", "batch_1", "batch_0"]
