"""Promo calendar: known sales become a minimum-replica schedule that starts early enough to be warm.

YAML::

    margin_s: 120                   # extra lead time beyond the measured cold start
    baseline_replicas: {main: 2}    # replicas the pool needs on a normal day (default: its min_replicas)
    events:
      - name: black-friday
        start: 2026-11-27T08:00:00Z
        end: 2026-11-27T20:00:00Z
        multiplier: 10              # expected traffic over the baseline
        pools: [main]

`python -m autoscaling.calendar show FILE [--config configs/local.yaml] [--cold-start-s S]` prints the schedule.
The policy (autoscaling/policy.py) reads the same file and applies the floor live, with the cold start the
replicas measured.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CalendarConfig",
    "CalendarFile",
    "PromoEvent",
    "ScheduleEntry",
    "floor_at",
    "load_calendar",
    "main",
    "schedule",
]

logger = logging.getLogger("surge.calendar")
# How often a running policy looks for an edited calendar file.
_RECHECK_S = 10.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromoEvent(_Strict):
    name: str
    start: datetime
    end: datetime
    multiplier: float = Field(gt=0)
    pools: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> PromoEvent:
        if self.end <= self.start:
            raise ValueError(f"event {self.name!r} ends before it starts")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"event {self.name!r}: give start and end with a time zone (e.g. ...Z)")
        return self


class CalendarConfig(_Strict):
    margin_s: float = Field(120.0, ge=0)
    baseline_replicas: dict[str, int] = Field(default_factory=dict)
    events: list[PromoEvent] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """From `from_s` to `until_s` (epoch seconds) pool `pool` keeps at least `replicas`."""

    pool: str
    event: str
    from_s: float
    start_s: float
    until_s: float
    replicas: int
    wanted: int = 0  # before max_replicas: more than `replicas` means the pool's max is too low for the event

    @property
    def reason(self) -> str:
        lead = self.start_s - self.from_s
        return f"calendar: {self.event} x{self.replicas} replicas (pre-warm {lead:.0f} s before its start)"


def load_calendar(path: str | Path) -> CalendarConfig:
    return CalendarConfig.model_validate(yaml.safe_load(Path(path).read_text()) or {})


class CalendarFile:
    """A calendar file applied live: re-read when it changes (checked every 10 s); a broken edit keeps the
    last good calendar and is logged."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.calendar = load_calendar(self.path)
        self.version = 0
        self._mtime = self.path.stat().st_mtime
        self._checked_s = -math.inf

    def current(self, now_s: float) -> CalendarConfig:
        if now_s - self._checked_s >= _RECHECK_S:
            self._checked_s = now_s
            self._reload_if_changed()
        return self.calendar

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self.calendar, self._mtime = load_calendar(self.path), mtime
                self.version += 1
                logger.info("promo calendar %s reloaded: %d events", self.path, len(self.calendar.events))
        except Exception as exc:  # a half-written or invalid edit: keep serving the last good calendar
            logger.warning("promo calendar %s not reloaded: %s", self.path, exc)


def schedule(
    calendar: CalendarConfig, baselines: Mapping[str, int], max_replicas: Mapping[str, int], cold_start_s: float
) -> list[ScheduleEntry]:
    """Every event's floor per pool, starting cold start + margin before the event (sorted by start)."""
    entries = []
    lead_s = cold_start_s + calendar.margin_s
    for event in calendar.events:
        for pool in event.pools:
            base = calendar.baseline_replicas.get(pool, baselines.get(pool, 1))
            wanted = math.ceil(base * event.multiplier)
            replicas = min(wanted, max_replicas.get(pool, wanted))
            start_s = event.start.timestamp()
            until_s = event.end.timestamp()
            entries.append(ScheduleEntry(pool, event.name, start_s - lead_s, start_s, until_s, replicas, wanted))
    return sorted(entries, key=lambda e: (e.from_s, e.pool))


def floor_at(entries: Sequence[ScheduleEntry], pool: str, now_s: float) -> tuple[int, str]:
    """The largest floor in force for `pool` at `now_s`, and its reason (0 and "" when none)."""
    active = [e for e in entries if e.pool == pool and e.from_s <= now_s < e.until_s]
    if not active:
        return 0, ""
    best = max(active, key=lambda e: e.replicas)
    return best.replicas, best.reason


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _show(args: argparse.Namespace) -> None:
    from cluster.config import load_config

    calendar = load_calendar(args.file)
    config = load_config(args.config)
    bounds = {p.name: p.autoscaling.bounds(p.num_replicas) for p in config.pools}
    cold = {p.name: p.autoscaling.cold_start_s for p in config.pools}
    cold_start_s = args.cold_start_s if args.cold_start_s is not None else max(cold.values(), default=60.0)
    entries = schedule(calendar, {n: b[0] for n, b in bounds.items()}, {n: b[1] for n, b in bounds.items()},
                       cold_start_s)  # fmt: skip
    print(f"cold start {cold_start_s:g} s + margin {calendar.margin_s:g} s (times UTC)")
    print(f"{'pool':<12} {'event':<20} {'pre-warm from':<20} {'event start':<20} {'until':<20} replicas")
    for e in entries:
        times = f"{_iso(e.from_s):<20} {_iso(e.start_s):<20} {_iso(e.until_s):<20}"
        capped = f" (wants {e.wanted}: raise max_replicas)" if e.wanted > e.replicas else ""
        print(f"{e.pool:<12} {e.event:<20} {times} {e.replicas}{capped}")
    if not entries:
        print("(no events)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autoscaling.calendar", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the minimum-replica schedule of a promo calendar")
    show.add_argument("file")
    show.add_argument("--config", default=None, help="surge config for pool bounds (default configs/local.yaml)")
    show.add_argument("--cold-start-s", type=float, default=None, help="measured replica start-up time")
    args = parser.parse_args(argv)
    _show(args)


if __name__ == "__main__":
    main()
