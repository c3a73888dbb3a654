"""The promo calendar: events become a minimum-replica schedule that is warm by each event's start."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from autoscaling.calendar import CalendarConfig, CalendarFile, PromoEvent, floor_at, schedule
from cluster.config import PROJECT_ROOT

START = datetime(2026, 11, 27, 8, tzinfo=UTC)
END = datetime(2026, 11, 27, 10, tzinfo=UTC)


def calendar(*events: PromoEvent, margin_s: float = 120) -> CalendarConfig:
    return CalendarConfig(margin_s=margin_s, events=list(events))


def sale(multiplier: float = 10, start: datetime = START, end: datetime = END) -> PromoEvent:
    return PromoEvent(name="sale", start=start, end=end, multiplier=multiplier, pools=["main"])


def test_the_floor_starts_a_cold_start_plus_margin_before_the_event() -> None:
    (entry,) = schedule(calendar(sale()), {"main": 1}, {"main": 20}, cold_start_s=300)
    assert entry.from_s == START.timestamp() - 420 and entry.until_s == END.timestamp()
    assert entry.replicas == 10


def test_the_floor_is_the_baseline_times_the_multiplier_capped_at_max_replicas() -> None:
    (entry,) = schedule(calendar(sale(multiplier=2.5)), {"main": 3}, {"main": 6}, cold_start_s=0)
    assert entry.replicas == 6  # ceil(3 x 2.5) = 8, capped at 6


def test_no_floor_outside_any_event() -> None:
    entries = schedule(calendar(sale()), {"main": 1}, {"main": 20}, cold_start_s=60)
    assert floor_at(entries, "main", START.timestamp() - 181) == (0, "")
    assert floor_at(entries, "main", END.timestamp()) == (0, "")
    assert floor_at(entries, "other", START.timestamp()) == (0, "")


def test_overlapping_events_keep_the_larger_floor() -> None:
    peak = PromoEvent(name="peak", start=START, end=END, multiplier=15, pools=["main"])
    entries = schedule(calendar(sale(), peak), {"main": 1}, {"main": 20}, cold_start_s=60)
    replicas, reason = floor_at(entries, "main", START.timestamp() + 60)
    assert replicas == 15 and "peak" in reason


def test_an_event_needs_a_time_zone_and_an_end_after_its_start() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        PromoEvent(name="x", start=datetime(2026, 1, 1), end=datetime(2026, 1, 2), multiplier=2, pools=["main"])
    with pytest.raises(ValidationError, match="ends before"):
        sale(start=END, end=START)


def test_show_prints_the_schedule_of_a_calendar_file() -> None:
    example = PROJECT_ROOT / "configs" / "promo-calendar.example.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "autoscaling.calendar", "show", str(example), "--cold-start-s", "300"],
        capture_output=True, text=True, check=True, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert "black-friday" in result.stdout and "2026-11-27 07:53:00" in result.stdout  # 08:00 - 300 s - 120 s
    assert "flash-sale" in result.stdout


def test_an_edited_calendar_file_is_applied_live_and_a_broken_edit_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "promo.yaml"
    event = {"name": "sale", "start": START.isoformat(), "end": END.isoformat(), "multiplier": 2, "pools": ["main"]}
    path.write_text(yaml.safe_dump({"events": [event]}))
    live = CalendarFile(path)
    assert live.current(0.0).events[0].multiplier == 2
    path.write_text(yaml.safe_dump({"events": [{**event, "multiplier": 5}]}))
    os.utime(path, (1, 1))
    assert live.current(1.0).events[0].multiplier == 2  # not re-checked yet
    assert live.current(11.0).events[0].multiplier == 5 and live.version == 1
    path.write_text("events: [{name: broken")
    os.utime(path, (2, 2))
    assert live.current(22.0).events[0].multiplier == 5
