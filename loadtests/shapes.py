"""Locust load shapes that drive an arrival *rate*, not a user count: steady, promo day, and trace replay.

A shape owns the run's `ArrivalSchedule` (from its plan in loadtests/profiles.py); Locust's users only claim its
arrivals. `tick()` keeps enough users ready for the coming rate and returns None once every arrival is sent and
answered, or `drain_s` after the last one.
"""

from __future__ import annotations

from typing import ClassVar

from locust import LoadTestShape

from loadtests.arrivals import ArrivalSchedule
from loadtests.metrics import RequestRecord
from loadtests.profiles import Plan, PromoDayPlan, ReplayPlan, SteadyPlan
from loadtests.spec import RunSpec

__all__ = ["OpenLoopShape", "PromoDayShape", "ReplayShape", "SteadyShape", "shape_class"]


class OpenLoopShape(LoadTestShape):
    """Base of the scenarios' shapes: the plan, its schedule, and the run's requests."""

    abstract: ClassVar[bool] = True
    spec: ClassVar[RunSpec]
    plan_class: ClassVar[type[Plan]]

    def __init__(self) -> None:
        super().__init__()
        self.plan = self.plan_class(self.spec)
        self.schedule = ArrivalSchedule(self.plan.arrivals())
        self.in_flight = 0  # users count their requests here; the run ends when it drains
        self.records: list[RequestRecord] = []

    @property
    def duration_s(self) -> float:
        return self.plan.duration_s

    def rate_rps(self, t_s: float) -> float:
        return self.plan.rate_rps(t_s)

    def tick(self) -> tuple[int, float] | None:
        left = len(self.schedule) - self.schedule.claimed
        return self.plan.tick_at(self.get_run_time(), left, self.in_flight)

    def now_s(self) -> float:
        """Run time on the schedule's clock (the shape's start, reset by Locust when the test starts)."""
        return self.get_run_time()


class SteadyShape(OpenLoopShape):
    abstract: ClassVar[bool] = True
    plan_class = SteadyPlan


class PromoDayShape(OpenLoopShape):
    abstract: ClassVar[bool] = True
    plan_class = PromoDayPlan


class ReplayShape(OpenLoopShape):
    abstract: ClassVar[bool] = True
    plan_class = ReplayPlan


_SHAPES: dict[str, type[OpenLoopShape]] = {"steady": SteadyShape, "promo-day": PromoDayShape, "replay": ReplayShape}


def shape_class(spec: RunSpec) -> type[OpenLoopShape]:
    """The concrete Locust shape of `spec.scenario`, bound to `spec` (Locust builds shapes without arguments)."""
    base = _SHAPES[spec.scenario]
    return type(base.__name__.removesuffix("Shape") + "Run", (base,), {"spec": spec, "abstract": False})
