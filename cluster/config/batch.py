"""Inert configuration of OpenAI's Batch API: where files live, their limits, and how the batch runner
uses idle capacity."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BatchApiConfig", "BatchRunnerConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchRunnerConfig(_Strict):
    """The batch runner deployment: lines go to a pool only while its engines have room to spare."""

    # Engine priority of batch lines: below every tier's (1..5), so any interactive request waiting in an
    # engine is scheduled first.
    priority: int = Field(default=10, ge=6)
    # Batch lines one replica of a pool runs at once when it has no interactive work.
    max_lines_per_replica: int = Field(default=8, ge=1)
    # How often the runner reads the pools' load (and the store for new or cancelled batches).
    poll_interval_s: float = Field(default=0.05, gt=0)
    # After interactive work was last seen on a pool, batch lines wait this long before they start again:
    # a steady trickle of interactive requests keeps the pool to itself.
    resume_after_s: float = Field(default=1.0, ge=0)
    # Interactive requests in a replica's engine (beyond the runner's own lines) that make the runner yield.
    yield_at_interactive: int = Field(default=1, ge=1)
    # One line's wait for its completion before it is retried later.
    line_timeout_s: float = Field(default=120.0, gt=0)
    num_cpus: float = Field(default=0.25, ge=0)


class BatchApiConfig(_Strict):
    """`/v1/files` and `/v1/batches`."""

    enabled: bool = True
    # Uploaded and produced files (a volume in Kubernetes); relative paths resolve against the project root.
    files_dir: str = ".cache/surge-files"
    max_file_bytes: int = Field(default=100 << 20, ge=1)
    max_lines: int = Field(default=50_000, ge=1)
    # Completion windows a batch may ask for, in seconds.
    completion_windows_s: dict[str, float] = Field(default_factory=lambda: {"24h": 86_400.0})
    runner: BatchRunnerConfig = BatchRunnerConfig()
