"""One training run from one :class:`~attnmoe.tasks.spec.RunSpec`.

``run_one(spec, out_dir)`` is what ``attnmoe train`` does and what ``attnmoe compare`` does for
each variant x seed: take the run directory's lock (``attnmoe.train.lock``), build the task
(``attnmoe.tasks.build_task``), and train it with ``attnmoe.train.loop.train_task``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnmoe.tasks.spec import RunSpec
from attnmoe.train.lock import run_lock
from attnmoe.train.loop import read_metrics, saved_spec, train_task


def run_one(
    spec: RunSpec,
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    label: str | None = None,
    compile: bool = False,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Build ``spec``'s task and train it into ``out_dir`` while holding the run's lock.

    Args:
        spec: the run spec (``attnmoe.tasks.resolve_spec`` makes one from names and overrides).
        out_dir: the run directory.
        data_dir: folder of the named data sets (else ``$ATTNMOE_DATA_DIR``).
        device: ``cpu`` or ``cuda``.
        resume: continue the run in ``out_dir`` (see ``train_task``).
        progress: show a progress bar, described by ``label``.
        compile: ``torch.compile`` the forward pass.
        tensorboard: also log to TensorBoard (``out_dir/tensorboard``).

    Returns:
        The final metrics.

    Raises:
        RunBusy: another process trains this run directory.
        FileExistsError / ValueError / TrainingDiverged: see ``train_task``.
    """
    from attnmoe.tasks import build_task  # the tasks layer is only needed to run

    out_dir = Path(out_dir)
    with run_lock(out_dir):
        if resume:  # a finished run with this spec: nothing to build
            before = saved_spec(out_dir)
            finished = read_metrics(out_dir)
            if before is not None and finished is not None and not before.differences(spec):
                return finished
        task = build_task(spec, data_dir=data_dir)
        return train_task(task, spec, out_dir, device=device, resume=resume, progress=progress,
                          label=label, compile=compile, tensorboard=tensorboard, run_info={"task_info": task.info})


__all__ = ["run_one"]
