"""Two-process data-parallel training (gloo on CPU) equals one process on the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_train_loop import ToyTask, _config

from attnmoe.train import distributed
from attnmoe.train.loop import train_task as train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, out: str, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    here, _ = distributed.setup("cpu")
    try:
        assert here.world_size == world_size and here.rank == rank
        metrics = train(ToyTask(), _config(steps=steps), Path(out),
                        progress=False)
        torch.save(metrics, Path(out) / f"rank{rank}.pt")  # every rank gets rank 0's metrics
    finally:
        distributed.cleanup()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "checkpoint" / "model.safetensors"))


def test_two_processes_equal_one(tmp_path: Path) -> None:
    single = train(ToyTask(), _config(steps=8), tmp_path / "one", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two"), 8), nprocs=2, join=True)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    for rank in (0, 1):
        got = torch.load(tmp_path / "two" / f"rank{rank}.pt", weights_only=True)
        assert abs(got["test_loss"] - single["test_loss"]) < 1e-5
