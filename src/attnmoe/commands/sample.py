"""``attnmoe sample``: generate text from a trained character GPT run (issue 10).

    attnmoe sample --run runs/shakespeare --prompt "ROMEO:" --tokens 200 --temperature 0.8 \\
        --top-k 40 --seed 0

Reads the run folder written by ``attnmoe train --task lm``: ``config.json`` (attention
variant, model sizes, and the vocabulary ``task_info.chars``) and the weights
``checkpoint/model.safetensors`` (the last checkpoint); samples with the model's KV caches
(``attnmoe.tasks.language.generate``) and prints the prompt followed by the new text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attnmoe.commands.train import ThreadsOpt, fail, set_threads

WEIGHTS = Path("checkpoint") / "model.safetensors"


def _read_config(run: Path) -> dict[str, Any]:
    path = run / "config.json"
    if not path.is_file():
        raise ValueError(f"--run {run}: no config.json (not a finished or started attnmoe train run)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    spec = config.get("spec", config)  # run folders keep the run spec under "spec"
    if not isinstance(spec, dict) or spec.get("task") != "lm":
        raise ValueError(f"--run {run}: task is {spec.get('task') if isinstance(spec, dict) else None!r}; "
                         "sample needs a language model run (--task lm)")
    for key, holder in (("attention", spec), ("model", spec), ("task_info", config)):
        if key not in holder:
            raise ValueError(f"{path}: no {key!r} entry")
    config = {**config, "attention": spec["attention"], "model": spec["model"], "task": "lm"}
    return config


def _vocabulary(config: dict[str, Any], run: Path) -> str:
    """The training characters (id i = chars[i]); runs from before they were stored are rebuilt
    from the corpus file named in config.json, with a note on stderr."""
    info = config["task_info"]
    if "chars" in info:
        return str(info["chars"])
    source = info.get("source")
    if source and Path(source).is_file():
        from attnmoe.tasks.data.text import load_char_corpus

        typer.echo(f"note: {run}/config.json has no vocabulary; rebuilt from {source}", err=True)
        return "".join(load_char_corpus(source).chars)
    raise ValueError(f"{run}/config.json has no vocabulary (task_info.chars) and its corpus "
                     f"{source!r} is not readable; retrain the run")


def sample(
    run: Annotated[Path, typer.Option("--run", help="Run folder of an `attnmoe train --task lm` run.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")] = "\n",
    tokens: Annotated[int, typer.Option("--tokens", help="Characters to generate.")] = 500,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Softmax temperature (> 0; lower = more conservative).")] = 1.0,
    top_k: Annotated[int | None, typer.Option(
        "--top-k", help="Sample among the K most likely characters (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
    threads: ThreadsOpt = None,
) -> None:
    """Generate text from a trained character language model; print prompt + continuation."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from attnmoe.tasks.language import GPT, cache_is_exact, generate

    try:
        if tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {tokens}")
        if not temperature > 0:
            raise ValueError(f"--temperature must be positive, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {top_k}")
        if seed < 0:
            raise ValueError(f"--seed must be >= 0, got {seed}")
        if not prompt:
            raise ValueError("--prompt is empty; give at least one character (default: a newline)")
        set_threads(threads)
        config = _read_config(run)
        chars = _vocabulary(config, run)
        unknown = sorted(set(prompt) - set(chars))
        if unknown:
            raise ValueError(f"--prompt has characters outside the run's vocabulary: {unknown!r}")
        sizes = {k: v for k, v in config["model"].items() if k != "eval_blocks"}
        model = GPT(vocab_size=len(chars) + 1, attention=config["attention"], **sizes)
        weights = run / WEIGHTS
        if not weights.is_file():
            raise ValueError(f"--run {run}: no weights at {WEIGHTS}")
        try:
            load_model(model, str(weights), strict=True)
        except (SafetensorError, RuntimeError, OSError) as err:  # truncated / other shapes
            raise ValueError(f"{weights}: cannot load into the model of config.json ({err})") from None
        if not cache_is_exact(model):
            typer.echo("note: stacked sigmoid attention with the default bias -log(n): "
                       "recomputing the context at every step instead of using the KV cache",
                       err=True)
        stoi = {c: i for i, c in enumerate(chars)}
        idx = torch.tensor([[stoi[c] for c in prompt]], dtype=torch.long)
        out = generate(model, idx, tokens, temperature=temperature, top_k=top_k,
                       generator=torch.Generator().manual_seed(seed))
    except (ValueError, TypeError) as err:
        raise fail(err) from None
    unk = "\ufffd"
    sys.stdout.write("".join(chars[i] if i < len(chars) else unk for i in out[0].tolist()))
    sys.stdout.write("\n")
