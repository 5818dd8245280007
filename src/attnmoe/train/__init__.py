"""Training for every attnmoe task: one loop, checkpoints, data parallelism, comparisons.

    run.py          run_one(spec, out_dir): build the task of a RunSpec and train it (locked)
    loop.py         train_task(task, spec, out_dir, resume=...): the training loop
    batches.py      BatchPlan: each step's global batch from (seed, step); rank slices
    rundir.py       a run directory's files: metrics, log, config, resume checks
    probing.py      attention probes of a trained model (first-token share, maxima)
    checkpoint.py   safetensors + JSON checkpoints with checksums (no pickle)
    lock.py         one flock per run directory
    distributed.py  torchrun / DDP set-up (gloo on CPU, NCCL on GPU)
    compare.py      variants x seeds: runs, mean +- std, Welch / paired t-tests, curves

The run spec (``RunSpec``) lives in ``attnmoe.tasks.spec`` because the task recipes are
instances of it; it is re-exported here.
"""

from attnmoe.tasks.spec import RunSpec
from attnmoe.train.loop import TrainingDiverged, is_finished, read_log, train_task
from attnmoe.train.run import run_one

__all__ = ["RunSpec", "TrainingDiverged", "is_finished", "read_log", "run_one", "train_task"]
