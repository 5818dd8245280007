"""Training for every attnmoe task: one loop, checkpoints, data parallelism, comparisons.

    loop.py         TrainConfig, train(task, config, out_dir, resume=...)
    checkpoint.py   safetensors + JSON checkpoints (no pickle)
    distributed.py  torchrun / DDP set-up (gloo on CPU, NCCL on GPU)
    compare.py      variants x seeds: runs, mean +- std, Welch's t-test, curves
"""

from attnmoe.train.loop import TrainConfig, is_finished, read_log, train

__all__ = ["TrainConfig", "is_finished", "read_log", "train"]
