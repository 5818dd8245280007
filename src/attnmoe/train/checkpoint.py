"""Checkpoints for the training loop: safetensors for every tensor, JSON for everything else.

A checkpoint is a directory ``<out>/checkpoint/`` holding

    model.safetensors      the model weights (``safetensors.torch.save_model``: tied weights kept once)
    best.safetensors       the best-on-validation weights so far (early stopping), when there are any
    tensors.safetensors    optimizer state tensors (``optim.<param>.<name>``) and the torch RNG state
    state.json             step, optimizer hyper-parameters, scheduler state, Python/NumPy RNG
                           states, early-stopping counters and anything else the loop passes in

No pickle is involved, so loading a checkpoint cannot execute code. ``state.json`` is written
last and holds the SHA-256 of every other file, so a truncated or altered tensor file is
detected before anything is loaded (:class:`CheckpointDamaged`).

A checkpoint is written into ``checkpoint.tmp/`` and then renamed into place; the one before it
is kept as ``checkpoint.old/``; a write that fails (disk full, Ctrl-C) removes ``checkpoint.tmp/``
and raises ``OSError``. An interruption while saving therefore leaves a complete
checkpoint, and a damaged ``checkpoint/`` falls back to ``checkpoint.old/`` (one interval
earlier; training from there reaches the same result, see ``attnmoe.train.loop``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_DIRS = (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old")
"""Where checkpoints are looked for, newest first."""


class CheckpointDamaged(ValueError):
    """A checkpoint directory whose files are missing, truncated or altered."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns besides restoring model/optimizer/scheduler in place.

    Args:
        state: the JSON ``extra`` dict the loop saved (step, counters, ...).
        best_weights: the best-on-validation state dict, or ``None``.
    """

    state: dict[str, Any]
    best_weights: dict[str, torch.Tensor] | None = field(default=None)


def checkpoint_path(out_dir: Path) -> Path | None:
    """The newest checkpoint directory under ``out_dir`` (not yet verified), or ``None``."""
    found = checkpoint_candidates(out_dir)
    return found[0] if found else None


def checkpoint_candidates(out_dir: Path) -> list[Path]:
    """The checkpoint directories under ``out_dir`` that exist, newest first."""
    return [Path(out_dir) / name for name in CHECKPOINT_DIRS if (Path(out_dir) / name).is_dir()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(path: Path) -> dict[str, Any]:
    """The verified ``state.json`` of checkpoint ``path``.

    Raises:
        CheckpointDamaged: ``state.json`` missing or unreadable, or a file it lists missing or
            not matching its SHA-256.
    """
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        files = state["files"]
        if not isinstance(files, dict):
            raise TypeError(f"'files' is a {type(files).__name__}, not a mapping")
    except FileNotFoundError:
        raise CheckpointDamaged(f"{path}: state.json is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointDamaged(f"{path}: state.json is unreadable ({err})") from None
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointDamaged(f"{path}: {name} is missing")
        if _sha256(file) != digest:
            raise CheckpointDamaged(f"{path}: {name} does not match its checksum (truncated or altered)")
    return state


def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python and NumPy generator states as JSON, torch's as tensors."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    as_json = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return as_json, tensors


def _set_rng_state(as_json: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = as_json["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = as_json["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint of the whole training state under ``out_dir/checkpoint``.

    Args:
        out_dir: the run directory.
        model: the bare model (not a DDP wrapper).
        optimizer: its optimizer; tensors go to safetensors, hyper-parameters to JSON.
        scheduler: the learning-rate scheduler; its ``state_dict`` must be JSON-serialisable.
        extra: JSON-serialisable loop state (step, counters, best metric, elapsed time, ...).
        best_weights: best-on-validation weights to keep (early stopping), or ``None``.

    Returns:
        The checkpoint directory.
    """
    out_dir = Path(out_dir)
    tmp, final, old = (out_dir / (CHECKPOINT_DIR + s) for s in (".tmp", "", ".old"))
    try:  # a failed write (disk full, Ctrl-C) leaves no checkpoint.tmp behind
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

        save_model(model, str(tmp / "model.safetensors"))
        if best_weights is not None:
            save_file({k: v.contiguous() for k, v in best_weights.items()}, str(tmp / "best.safetensors"))

        opt = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, per_param in opt["state"].items():
            for name, value in per_param.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{name}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        rng_json, rng_tensors = _rng_state()
        tensors.update(rng_tensors)
        save_file(tensors, str(tmp / "tensors.safetensors"))

        state = {
            "files": {f.name: _sha256(f) for f in sorted(tmp.glob("*.safetensors"))},
            "extra": extra,
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
            "scheduler": scheduler.state_dict(),
            "rng": rng_json,
        }
        (tmp / "state.json").write_text(json.dumps(state))  # last: the checkpoint is complete
    except SafetensorError as err:  # the Rust writer's I/O errors: disk full, quota, ...
        shutil.rmtree(tmp, ignore_errors=True)
        full = "os error 28" in str(err) or "No space left" in str(err)
        raise OSError(errno.ENOSPC if full else errno.EIO, str(err), str(tmp)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)  # the previous checkpoint stays as checkpoint.old (fallback)
    return final


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device | str = "cpu",
    state: dict[str, Any] | None = None,
) -> Checkpoint:
    """Restore model, optimizer, scheduler and RNG states in place from a checkpoint directory.

    Args:
        path: a directory written by :func:`save_checkpoint` (see :func:`checkpoint_path`).
        model: the bare model, already built with the same architecture.
        optimizer: an optimizer over the same parameter groups.
        scheduler: a scheduler of the same kind.
        device: where the optimizer state tensors go.
        state: the already verified :func:`read_state` of ``path`` (read again when ``None``).

    Returns:
        The loop's ``extra`` state and the best weights (if saved).

    Raises:
        CheckpointDamaged: when a file is missing, truncated or altered.
        ValueError: when the checkpoint does not match the model.
    """
    path = Path(path)
    state = read_state(path) if state is None else state
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False,
                                         device=str(device))
    except RuntimeError as err:  # shapes differ
        first = str(err).strip().splitlines()[-1].strip()
        raise ValueError(f"checkpoint {path} does not match the model ({first})") from None
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]} (same --attention and model sizes?)"
        )
    tensors = load_file(str(path / "tensors.safetensors"))

    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value.to(device)
    for index, values in state["optimizer"]["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = state["optimizer"]["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], tensors)

    best = path / "best.safetensors"
    best_weights = load_file(str(best), device=str(device)) if best.is_file() else None
    return Checkpoint(state=state["extra"], best_weights=best_weights)
