"""``attnmoe sample``: generate text from a trained character GPT run (issue 10).

    attnmoe sample --run runs/shakespeare --prompt "ROMEO:" --tokens 200 --temperature 0.8 \\
        --top-k 40 --seed 0

Reads the run folder written by ``attnmoe train --task lm``: ``config.json`` (attention
variant, model sizes, and the vocabulary ``task_info.chars``) and the weights
``checkpoint/model.safetensors`` (the last checkpoint), verified against the SHA-256 that
``checkpoint/state.json`` holds; a damaged checkpoint falls back to ``checkpoint.old`` (named on
stderr), and when none verifies, or the weights are not finite, the command refuses in one line.
Samples with the model's KV caches (``attnmoe.tasks.language.generate_stream``) and streams the
prompt followed by the new text to stdout as it is generated (memory does not grow with
``--tokens``); Ctrl-C stops it with one line and exit code 130.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from attnmoe.commands.train import ThreadsOpt, fail, set_threads

WEIGHTS = "model.safetensors"
INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as a shell reports it."""


def verified_weights(run: Path) -> Path:
    """``<checkpoint>/model.safetensors`` of the newest checkpoint of ``run`` whose files match the
    SHA-256 in its ``state.json`` (a damaged ``checkpoint/`` is named on stderr and
    ``checkpoint.old/`` tried).

    Raises:
        ValueError: no checkpoint, or none that verifies (one line naming each problem).
    """
    from attnmoe.train.checkpoint import CheckpointDamaged, checkpoint_candidates, read_state

    found = checkpoint_candidates(run)
    if not found:
        raise ValueError(f"--run {run}: no weights (no checkpoint/ folder)")
    problems = []
    for path in found:
        try:
            state = read_state(path)
        except CheckpointDamaged as err:
            problems.append(str(err))
            continue
        if WEIGHTS not in state["files"]:
            problems.append(f"{path}: state.json lists no {WEIGHTS}")
            continue
        if problems:
            typer.echo(f"warning: {'; '.join(problems)}; using {path}", err=True)
        return path / WEIGHTS
    raise ValueError(f"--run {run}: no checkpoint verifies ({'; '.join(problems)})")


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
    prompt: Annotated[str, typer.Option(
        "--prompt", show_default=False, help="Text to continue (default: a newline).")] = "\n",
    tokens: Annotated[int, typer.Option(
        "--tokens", help="Characters to generate (streamed as they come; Ctrl-C stops).")] = 500,
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

    from attnmoe.tasks.language import GPT, cache_is_exact, generate_stream
    from attnmoe.tasks.registry import check_model_memory, int_size

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
        build = lambda: GPT(vocab_size=len(chars) + 1, attention=config["attention"], **sizes)
        check_model_memory(build, SimpleNamespace(model=sizes, batch_size=1),
                           floats_per_example=int_size(sizes.get("block_size")) * (len(chars) + 1),
                           bytes_per_parameter=4,  # inference: the weights alone
                           hint="config.json asks for a model this machine cannot hold (damaged?)")
        model = build()
        weights = verified_weights(run)
        try:
            load_model(model, str(weights), strict=True)
        except (SafetensorError, RuntimeError, OSError) as err:  # truncated / other shapes
            raise ValueError(f"{weights}: cannot load into the model of config.json ({err})") from None
        bad = [name for name, p in model.state_dict().items() if not torch.isfinite(p).all()]
        if bad:
            raise ValueError(f"{weights}: {len(bad)} weight tensors hold NaN or infinite values "
                             f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run diverged")
        if not cache_is_exact(model):
            typer.echo("note: stacked sigmoid attention with the default bias -log(n): "
                       "recomputing the context at every step instead of using the KV cache",
                       err=True)
        stoi = {c: i for i, c in enumerate(chars)}
        idx = torch.tensor([[stoi[c] for c in prompt]], dtype=torch.long)
        stream = generate_stream(model, idx, tokens, temperature=temperature, top_k=top_k,
                                 generator=torch.Generator().manual_seed(seed))
        unk = "\ufffd"
        sys.stdout.write(prompt)
        for nxt in stream:
            i = int(nxt[0, 0])
            sys.stdout.write(chars[i] if i < len(chars) else unk)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except (ValueError, TypeError) as err:
        raise fail(err) from None
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        typer.echo("interrupted (Ctrl-C)", err=True)
        raise typer.Exit(code=INTERRUPTED) from None
    except BrokenPipeError:  # e.g. `attnmoe sample ... | head`
        raise typer.Exit(code=0) from None
