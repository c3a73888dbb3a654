"""Batch input files are validated line by line (the error names the line); the runner's capacity rule."""

from __future__ import annotations

import json

import pytest

from cluster.config import BatchRunnerConfig
from deployments.batch.capacity import PoolLoad, batch_slots
from deployments.batch.lines import parse_input
from deployments.errors import SurgeError

GOOD = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
CFG = BatchRunnerConfig(max_lines_per_replica=8, resume_after_s=1.0, yield_at_interactive=1)


def _file(*lines: object) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()


def _error(data: bytes) -> str:
    with pytest.raises(SurgeError) as err:
        parse_input(data, max_lines=100)
    assert err.value.status == 400
    return err.value.message


def test_good_lines_are_numbered_from_one_skipping_blank_lines() -> None:
    lines = parse_input(_file(GOOD, "", {**GOOD, "custom_id": "b"}), max_lines=10)
    assert [(line.line, line.custom_id) for line in lines] == [(1, "a"), (3, "b")]


def test_invalid_json_names_its_line() -> None:
    assert _error(_file(GOOD, "{not json")).startswith("line 2: not valid JSON")


def test_a_wrong_url_names_its_line() -> None:
    assert _error(_file(GOOD, {**GOOD, "custom_id": "b", "url": "/v1/embeddings"})).startswith("line 2: url")


def test_a_missing_custom_id_names_its_line() -> None:
    assert _error(_file({k: v for k, v in GOOD.items() if k != "custom_id"})).startswith("line 1: custom_id")


def test_duplicate_custom_ids_are_refused() -> None:
    assert "not unique" in _error(_file(GOOD, GOOD))


def test_too_many_lines_are_refused() -> None:
    with pytest.raises(SurgeError, match="line 3: a batch file holds at most 2"):
        parse_input(_file(GOOD, {**GOOD, "custom_id": "b"}, {**GOOD, "custom_id": "c"}), max_lines=2)


def test_an_idle_pool_gets_lines_per_replica() -> None:
    assert batch_slots(PoolLoad(0, 0, replicas=2), None, 10.0, CFG).lines == 16


def test_the_runners_own_lines_are_not_interactive_load() -> None:
    assert batch_slots(PoolLoad(engine_requests=8, batch_lines=8, replicas=1), None, 10.0, CFG).lines == 8


def test_interactive_work_in_the_engine_stops_the_batch() -> None:
    slots = batch_slots(PoolLoad(engine_requests=9, batch_lines=8, replicas=1), None, 10.0, CFG)
    assert slots.lines == 0 and slots.interactive_seen


def test_an_interactive_arrival_since_the_last_reading_stops_the_batch() -> None:
    slots = batch_slots(PoolLoad(0, 0, replicas=1, interactive_started=1), None, 10.0, CFG)
    assert slots.lines == 0 and slots.interactive_seen


def test_the_batch_waits_for_a_quiet_stretch_before_resuming() -> None:
    assert batch_slots(PoolLoad(0, 0, 1), last_interactive_s=9.5, now_s=10.0, cfg=CFG).lines == 0
    assert batch_slots(PoolLoad(0, 0, 1), last_interactive_s=8.5, now_s=10.0, cfg=CFG).lines == 8


def test_an_unknown_load_gives_no_lines() -> None:
    assert batch_slots(None, None, 10.0, CFG).lines == 0
