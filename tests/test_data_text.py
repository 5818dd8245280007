"""Character corpus: 90/10 split in file order, train-only vocabulary, UNK, blocks, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attnmoe.tasks.data.text import BlockDataset, load_char_corpus


def shared_data_dir() -> Path | None:
    env = os.environ.get("ATTNMOE_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


def test_split_vocab_and_unk(tmp_path: Path) -> None:
    text = "abcab cabba\n" * 15 + "zéz"  # 183 chars; 'z' and 'é' occur only in the last 10%
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    corpus = load_char_corpus(tmp_path / "t.txt")
    n_train = int(len(text) * 0.9)
    assert len(corpus.train) == n_train and len(corpus.val) == len(text) - n_train
    assert corpus.chars == sorted(set(text[:n_train]))  # == ['\n', ' ', 'a', 'b', 'c']
    assert corpus.unk_id == len(corpus.chars) and corpus.vocab_size == len(corpus.chars) + 1
    assert corpus.decode(corpus.train) == text[:n_train]
    val_text = text[n_train:]
    assert corpus.n_unk_val == sum(c in "zé" for c in val_text) == 3
    expected = "".join(c if c not in "zé" else "\ufffd" for c in val_text)
    assert corpus.decode(corpus.val) == expected
    assert corpus.encode("az").tolist() == [corpus.chars.index("a"), corpus.unk_id]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\xff\xfe\x00bad", "not valid UTF-8"), (b"ab", "too short")],
)
def test_bad_text_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"corpus.txt.*{message}"):
        load_char_corpus(path)
    with pytest.raises(ValueError, match="nothere.txt.*not found"):
        load_char_corpus(tmp_path / "nothere.txt")


def test_block_dataset_pairs() -> None:
    ids = torch.arange(100) * 3
    ds = BlockDataset(ids, 8)
    assert len(ds) == 92
    x, y = ds[5]
    assert x.tolist() == ids[5:13].tolist() and y.tolist() == ids[6:14].tolist()
    _x_last, y_last = ds[len(ds) - 1]
    assert y_last[-1] == ids[-1]
    with pytest.raises(IndexError):
        ds[92]
    starts = torch.tensor([0, 7, 91])
    bx, by = ds.batch(starts)
    for row, s in enumerate(starts.tolist()):
        assert torch.equal(bx[row], ds[s][0]) and torch.equal(by[row], ds[s][1])
    items = ds.__getitems__([3, 4])
    assert torch.equal(items[1][0], ds[4][0]) and torch.equal(items[1][1], ds[4][1])
    with pytest.raises(ValueError, match="block_size"):
        BlockDataset(ids[:5], 8)


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not available")
def test_real_shakespeare() -> None:
    path = shared_data_dir() / "shakespeare" / "shakespeare_complete.txt"  # type: ignore[operator]
    text = path.read_text(encoding="utf-8")
    corpus = load_char_corpus(path)
    n_train = int(0.9 * len(text))
    assert (len(corpus.train), len(corpus.val)) == (n_train, len(text) - n_train)
    assert "".join(corpus.chars) == "".join(sorted(set(text[:n_train])))
    assert corpus.decode(corpus.val[:200]) == text[n_train : n_train + 200].translate(
        {ord(c): "\ufffd" for c in set(text[n_train:]) - set(text[:n_train])}
    )
