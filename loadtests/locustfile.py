"""The Locust file of `python -m loadtests run`: the scenario's shape, the customer users, and the report.

Locust loads every shape class it finds here, so exactly one is bound: the scenario named by the run's spec.
The report is built when Locust quits and its verdict becomes Locust's exit code (`process_exit_code`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from locust import events

from loadtests.report import RunLog, build_report, write_run
from loadtests.shapes import OpenLoopShape, shape_class
from loadtests.spec import RunSpec
from loadtests.users import LLM_REQUEST_TYPE, CustomerUser

__all__ = ["CustomerUser", "Shape"]

SPEC = RunSpec.from_env()
Shape = shape_class(SPEC)
logger = logging.getLogger("surge.loadtests")


def _run_log(shape: OpenLoopShape, users_max: int) -> RunLog:
    elapsed = shape.get_run_time()
    step = max(shape.duration_s / 300, 0.1)
    target = [(i * step, shape.rate_rps(i * step)) for i in range(math.ceil(shape.duration_s / step))]
    spec = SPEC.model_dump(exclude={"keys"})
    return RunLog(
        spec=spec, start_epoch=time.time() - elapsed, duration_s=shape.duration_s, end_s=elapsed, target=target,
        scheduled=len(shape.schedule), late=shape.schedule.late, max_lateness_s=shape.schedule.max_lateness_s,
        locust_users_max=users_max,
        notes=[f"{shape.in_flight} requests still in flight after the drain time were not recorded"]
        if shape.in_flight else [],
    )


@events.init.add_listener
def _http_only_aggregate(environment: Any, **_: Any) -> None:
    """Locust's Aggregated row (its totals, failure ratio and web UI charts) counts the HTTP requests alone: the
    LLM rows measure those requests (one ITL event per token) and would swamp it."""
    stats = environment.stats
    log_request = stats.log_request

    def log(method: str, name: str, response_time: float, content_length: int) -> None:
        if method == LLM_REQUEST_TYPE:
            stats.entries[(name, method)].log(response_time, content_length)
        else:
            log_request(method, name, response_time, content_length)

    stats.log_request = log


@events.quitting.add_listener
def _report(environment: Any, **_: Any) -> None:
    shape = environment.shape_class
    if not isinstance(shape, OpenLoopShape):
        return
    out = Path(SPEC.report_dir)
    users_max = environment.runner.user_count if environment.runner is not None else 0
    write_run(out, _run_log(shape, users_max), shape.records)
    try:
        environment.process_exit_code = build_report(out)
    except Exception:
        logger.exception("the report could not be built")  # an unverified run does not pass
        environment.process_exit_code = 1
