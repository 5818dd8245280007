"""Character-level language-modelling corpus from any UTF-8 plain-text file.

Protocol (nanoGPT's ``shakespeare_char`` preparation, applied to any file; ``docs/tasks.md``):
- the first ``floor(0.9 * len(text))`` characters, in file order, are the training split, the
  rest the validation split (no shuffling: held-out text is later text);
- the vocabulary is the sorted set of characters of the TRAINING split; ids ``0..V-1``;
- one extra id ``V`` (``unk_id``) stands for any character of the validation split that never
  occurs in training. It is part of the model's vocabulary (size ``V + 1``) but never a training
  target, so its probability is learnt to be small and an unseen character costs the model a
  large but finite loss, as it should.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset


@dataclass
class CharCorpus:
    """A character corpus split into train / val id tensors.

    Attributes:
        chars: the training vocabulary, sorted; ``chars[i]`` has id ``i``.
        train: int64 ids of the training split.
        val: int64 ids of the validation split (unseen characters mapped to ``unk_id``).
        unk_id: id of unknown characters (``len(chars)``).
        n_unk_val: number of validation characters mapped to ``unk_id``.
        source: the file the corpus was read from.
    """

    chars: list[str]
    train: torch.Tensor
    val: torch.Tensor
    unk_id: int
    n_unk_val: int
    source: str

    @property
    def vocab_size(self) -> int:
        """Model vocabulary size: training characters plus the UNK id."""
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text``; characters outside the vocabulary map to ``unk_id``."""
        stoi = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([stoi.get(c, self.unk_id) for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Text of ``ids``; the UNK id decodes to U+FFFD."""
        return "".join(self.chars[i] if i < len(self.chars) else "\ufffd" for i in list(map(int, ids)))


def load_char_corpus(path: str | Path, *, train_fraction: float = 0.9) -> CharCorpus:
    """Read a UTF-8 text file as a character corpus (train = first ``train_fraction``, in file order).

    Raises:
        ValueError: missing file, not valid UTF-8, empty, or too short to leave both splits
            non-empty; the message names the file.
    """
    path = Path(path)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not path.is_file():
        raise ValueError(f"{path}: text file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 ({exc})") from exc
    if not text:
        raise ValueError(f"{path}: the text file is empty")
    n_train = int(len(text) * train_fraction)
    if n_train < 2 or len(text) - n_train < 2:
        raise ValueError(f"{path}: {len(text)} characters is too short for a train/val split")
    train_text, val_text = text[:n_train], text[n_train:]
    chars = sorted(set(train_text))
    stoi = {c: i for i, c in enumerate(chars)}
    unk = len(chars)
    train = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    val_ids = [stoi.get(c, unk) for c in val_text]
    val = torch.tensor(val_ids, dtype=torch.long)
    return CharCorpus(
        chars=chars, train=train, val=val, unk_id=unk,
        n_unk_val=int((val == unk).sum()), source=str(path),
    )


class BlockDataset(Dataset):
    """All length-``block_size`` (input, next-character target) pairs of an id sequence.

    Item ``i`` is ``(ids[i : i + T], ids[i + 1 : i + T + 1])``; there are ``len(ids) - T`` items.
    Sampling items uniformly at random (a shuffling ``DataLoader``) is nanoGPT's random-offset
    batch sampling.
    """

    def __init__(self, ids: torch.Tensor, block_size: int) -> None:
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        if block_size < 1 or len(ids) <= block_size:
            raise ValueError(f"need len(ids) > block_size >= 1, got {len(ids)} and {block_size}")
        self.ids = ids
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.ids) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        chunk = self.ids[i : i + self.block_size + 1]
        return chunk[:-1], chunk[1:]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch (used by ``DataLoader``): one gather instead of a Python loop of slices."""
        starts = torch.as_tensor(indices, dtype=torch.long)
        pos = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T + 1)
        chunk = self.ids[pos]
        return list(zip(chunk[:, :-1], chunk[:, 1:]))

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of shape ``(B, T)`` for block start positions ``starts`` ``(B,)``."""
        pos = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T + 1)
        chunk = self.ids[pos]
        return chunk[:, :-1], chunk[:, 1:]
