"""Data-parallel training: the same command under ``torchrun`` trains on every process
(docs/training.md, "Several processes: torchrun").

:func:`env_dist_info` reads torchrun's ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (one
process without them). Every process takes its own slice of each global batch (:func:`shard`);
DDP averages gradients on the last micro-batch of a step only (:func:`sync_context`); rank 0
alone logs and writes checkpoints while the others wait at :func:`barrier`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """The process's place from torchrun's environment variables (1 process if unset)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_distributed(info: DistInfo, device_type: str) -> None:
    """Join the process group of ``info``'s torchrun launch (nothing with one process or when joined).

    ``device_type`` picks the backend: ``nccl`` for CUDA, ``gloo`` otherwise. On CUDA the
    process binds to GPU ``LOCAL_RANK``.
    """
    if not info.enabled or is_initialized():
        return
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run with one process")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op with one)."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place, and return it (identity with one)."""
    if is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` with one process)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_context(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` on accumulation micro-steps (no gradient all-reduce), else nothing."""
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def shard(global_batch: Sequence[int], info: DistInfo, micro_batch: int, accumulation: int) -> list[list[int]]:
    """This process's micro-batches (lists of example indices) of one global batch.

    Rank ``r`` takes the ``r``-th contiguous block of ``micro_batch * accumulation`` indices
    and cuts it into ``accumulation`` micro-batches (:meth:`TrainConfig.accumulation` checks that
    the global batch divides so). Deterministic, no communication.
    """
    per_rank = micro_batch * accumulation
    mine = list(global_batch[info.rank * per_rank:(info.rank + 1) * per_rank])
    return [mine[i * micro_batch:(i + 1) * micro_batch] for i in range(accumulation)]

