"""One lock per run directory, so two processes never train the same run.

``attnmoe train`` and ``attnmoe compare`` take ``<run>/.lock`` with ``fcntl.flock`` (exclusive,
non-blocking) for as long as they train the run. The kernel holds the lock for the open file
and drops it when the process ends in any way (exit, exception, SIGKILL, machine reboot), so a
lock can never be stale: there is no PID to go out of date or be reused by an unrelated
process, and an empty or leftover lock file means nothing. The file's content (pid, host,
start time) is only there to name the holder in the message; the file itself is never
deleted (deleting a lock file while another process opens it would let two processes each
lock a different inode).

Under ``torchrun`` only rank 0 takes the lock; its outcome is broadcast to the other ranks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attnmoe.train import distributed

LOCK_FILE = ".lock"


class RunBusy(RuntimeError):
    """The run directory is locked by another live process."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _acquire(run_dir: Path) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunBusy(f"{run_dir} is being trained by {_holder(path)}; wait for it to finish "
                      "or use another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    return fd


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (created if needed) for the ``with`` block.

    Raises:
        RunBusy: another process holds it (the message names its pid and host).
    """
    fd, error = None, None
    if distributed.info().is_main:
        try:
            fd = _acquire(Path(run_dir))
        except RunBusy as err:
            error = str(err)
    error = distributed.broadcast_object(error)
    if error:
        raise RunBusy(error)
    try:
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


__all__ = ["LOCK_FILE", "RunBusy", "run_lock"]
