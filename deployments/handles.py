"""Deployment handles set up for this process's Serve mode.

A handle carries its options when pickled, and their defaults are fixed when `ray.serve` is first imported:
handles the driver builds before (or without) Serve's throughput-mode variables go by Ray actor calls even
where every replica runs in throughput mode. The ingress therefore re-derives the transport from its own
process, whose environment Ray set up, instead of trusting what the driver's import order left behind.
"""

from __future__ import annotations

from typing import Literal

from ray.serve.handle import DeploymentHandle

__all__ = ["Transport", "for_this_process", "transport"]

Transport = Literal["grpc", "actor"]


def _grpc_by_default() -> bool:
    from ray.serve._private import constants

    return bool(constants.RAY_SERVE_USE_GRPC_BY_DEFAULT)


def for_this_process(handle: DeploymentHandle) -> DeploymentHandle:
    """`handle` with the transport this process's Serve settings ask for (gRPC in throughput mode)."""
    return handle.options(_by_reference=not _grpc_by_default())


def transport(handle: DeploymentHandle) -> Transport:
    """How calls through `handle` travel: gRPC between replicas, or Ray actor calls."""
    by_reference = getattr(handle.handle_options, "_by_reference", True)
    return "actor" if by_reference else "grpc"
