"""Data-parallel helpers: process-group set-up from ``torchrun``'s environment, rank queries.

``torchrun --nproc_per_node N -m attnmoe.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and joins the
process group with gloo on CPU and NCCL on CUDA. A plain ``attnmoe train`` (no ``WORLD_SIZE``,
or 1) runs single-process and never touches ``torch.distributed``.

How the loop splits work (see ``attnmoe.train.loop``): every rank draws the same *global*
batch (its order is a function of seed and step only) and takes its contiguous
``global_batch / world_size`` slice; DDP averages gradients over ranks, so the update equals
the single-process update on the global batch (up to float summation order). Only rank 0
evaluates and writes files; decisions it takes (early stopping) are broadcast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group.

    Args:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine; picks the CUDA device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that evaluates and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when gradients are averaged over more than one process."""
        return self.world_size > 1


def info() -> DistInfo:
    """The current process's place in the group (single process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
    )


def setup(device: str = "cpu") -> tuple[DistInfo, torch.device]:
    """Join the process group described by ``torchrun``'s environment, if any.

    Args:
        device: ``"cpu"`` (gloo backend) or ``"cuda"`` (NCCL backend, one GPU per local rank).

    Returns:
        The process's :class:`DistInfo` and the torch device it should use.

    Raises:
        ValueError: for an unknown device, or ``cuda`` when no GPU is visible.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    here = info()
    return here, torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device("cpu")


def cleanup() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity when not distributed)."""
    if not info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info().enabled:
        dist.barrier()
