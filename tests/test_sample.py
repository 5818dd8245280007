"""Text generation: the GPT's KV-cache decoding, ``generate`` and ``attnmoe sample``.

Independent computations: the GPT's full forward (no cache) on the whole prefix, a greedy
loop written here from it, and ``generate(use_cache=False)`` (nanoGPT's crop-and-recompute).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnmoe.attention import KVCache
from attnmoe.cli import app
from attnmoe.tasks.language import GPT, cache_is_exact, generate

runner = CliRunner()
VARIANTS = ["softmax", "sigmoid", "gated-g3", "active-gelu+gated-g1"]


@pytest.fixture(autouse=True)
def _small_sigmoid_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, so that these tiny layers take the chunked sigmoid path (several blocks)
    rather than the explicit one that calls no bigger than a block take."""
    import attnmoe.attention.sigmoid_chunked as sc

    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 16)


def _gpt(attention: str, block_size: int = 8) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=11, block_size=block_size, n_layer=2, n_head=2, n_embd=16,
               attention=attention).eval()


@pytest.mark.parametrize("attention", VARIANTS)
def test_cached_forward_equals_full_forward(attention: str) -> None:
    model = _gpt(attention)
    if not cache_is_exact(model):  # stacked sigmoid layers, bias -log(n): fix the bias
        assert attention == "sigmoid"
        for block in model.blocks:
            block.attn.sigmoid_bias = -2.0
        assert cache_is_exact(model)
    idx = torch.randint(0, 11, (2, 8))
    caches = [KVCache() for _ in model.blocks]
    with torch.no_grad():
        parts = [model(idx[:, :3], caches), model(idx[:, 3:4], caches), model(idx[:, 4:], caches)]
        for end, got in zip((3, 4, 8), parts):
            want = model(idx[:, :end])[:, -got.shape[1]:]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(idx[:, :1], caches)  # the cache is full


@pytest.mark.parametrize("attention", VARIANTS)
def test_generate_with_cache_equals_recomputation(attention: str) -> None:
    """Same seed, same tokens, across the point where the context window starts sliding."""
    model = _gpt(attention)
    idx = torch.randint(0, 11, (2, 3))
    kw = {"temperature": 0.9, "top_k": 6}
    a = generate(model, idx, 15, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, idx, 15, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert a.shape == (2, 18)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :3], idx)


def test_length_dependent_sigmoid_is_detected() -> None:
    """With the default bias -log(n), a 2-layer cached forward differs from recomputation
    (the reason ``generate`` does not use the cache there); one layer is exact."""
    model = _gpt("sigmoid")
    assert not cache_is_exact(model)
    idx = torch.randint(0, 11, (1, 6))
    caches = [KVCache() for _ in model.blocks]
    with torch.no_grad():
        model(idx[:, :3], caches)
        got = model(idx[:, 3:], caches)
        assert (got - model(idx)[:, 3:]).abs().max() > 1e-4
    torch.manual_seed(0)
    one = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, attention="sigmoid")
    assert cache_is_exact(one)


def test_top1_is_greedy_decoding() -> None:
    model = _gpt("softmax")
    idx = torch.tensor([[1, 2, 3]])
    got = generate(model, idx, 10, top_k=1)
    want = idx
    with torch.no_grad():
        for _ in range(10):
            nxt = model(want[:, -8:])[:, -1].argmax(-1, keepdim=True)
            want = torch.cat([want, nxt], 1)
    assert torch.equal(got, want)


def test_generate_errors() -> None:
    model = _gpt("softmax")
    idx = torch.tensor([[1]])
    for kw, match in (({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k")):
        with pytest.raises(ValueError, match=match):
            generate(model, idx, 2, **kw)
    with pytest.raises(ValueError, match="T0 >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lm")
    corpus = tmp / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp / "run"
    result = runner.invoke(app, [
        "train", "--task", "lm", "--dataset", str(corpus), "--attention", "gated-g1",
        "--steps", "2", "--batch-size", "4", "--out", str(out), "--no-progress",
        "--model", "n_layer=1", "--model", "n_embd=16", "--model", "n_head=2",
        "--model", "block_size=8", "--model", "eval_blocks=2"])
    assert result.exit_code == 0, result.output
    return out


def test_run_keeps_the_vocabulary(lm_run: Path) -> None:
    config = json.loads((lm_run / "config.json").read_text())
    text = "to be or not to be, that is the question.\n" * 40
    train_part = text[: int(0.9 * len(text))]
    assert config["task_info"]["chars"] == "".join(sorted(set(train_part)))


def test_sample_cli(lm_run: Path) -> None:
    args = ["sample", "--run", str(lm_run), "--prompt", "to be", "--tokens", "20",
            "--temperature", "0.8", "--top-k", "5", "--seed", "4"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    text = first.stdout[:-1]  # printed with a final newline
    assert text.startswith("to be") and len(text) == 5 + 20
    config = json.loads((lm_run / "config.json").read_text())
    assert set(text) <= set(config["task_info"]["chars"])
    assert runner.invoke(app, args).stdout == first.stdout  # same seed, same text


def test_sample_rebuilds_vocabulary_of_older_runs(lm_run: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(lm_run, old)
    config = json.loads((old / "config.json").read_text())
    del config["task_info"]["chars"]
    (old / "config.json").write_text(json.dumps(config))
    args = ["--prompt", "to", "--tokens", "5", "--seed", "1"]
    result = runner.invoke(app, ["sample", "--run", str(old), *args])
    assert result.exit_code == 0, result.output
    assert "rebuilt from" in result.stderr
    assert result.stdout == runner.invoke(app, ["sample", "--run", str(lm_run), *args]).stdout


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--prompt", "to be€"], "outside the run's vocabulary"),
        (["--temperature", "0"], "--temperature must be positive"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--tokens", "0"], "--tokens must be >= 1"),
        (["--prompt", ""], "--prompt is empty"),
    ],
)
def test_sample_errors(lm_run: Path, extra: list[str], match: str) -> None:
    result = runner.invoke(app, ["sample", "--run", str(lm_run), *extra])
    assert result.exit_code == 2
    assert match in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sample_bad_run_folders(lm_run: Path, tmp_path: Path) -> None:
    import shutil

    result = runner.invoke(app, ["sample", "--run", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no config.json" in result.stderr
    broken = tmp_path / "broken"
    shutil.copytree(lm_run, broken)
    weights = broken / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated weights
    result = runner.invoke(app, ["sample", "--run", str(broken)])
    assert result.exit_code == 2 and "does not match its checksum" in result.stderr
    weights.unlink()
    result = runner.invoke(app, ["sample", "--run", str(broken)])
    assert result.exit_code == 2 and "model.safetensors is missing" in result.stderr
    shutil.rmtree(broken / "checkpoint")
    result = runner.invoke(app, ["sample", "--run", str(broken)])
    assert result.exit_code == 2 and "no weights" in result.stderr
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "spec": {**config["spec"], "task": "vision"}}))
    result = runner.invoke(app, ["sample", "--run", str(broken)])
    assert result.exit_code == 2 and "language model" in result.stderr
    (broken / "config.json").write_text("{")
    result = runner.invoke(app, ["sample", "--run", str(broken)])
    assert result.exit_code == 2 and "not valid JSON" in result.stderr
