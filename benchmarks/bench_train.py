"""Training throughput of every attention variant, as a ratio to ``softmax``, in one run.

For each task (vision: Fashion-MNIST, or the bundled 8x8 digits when the data folder is absent;
lm: the Shakespeare corpus; forecast: ETTh1, horizon 96) and each variant, the task is built
with its reference recipe's model and batch size, and full training steps (forward, backward,
gradient clipping, AdamW step; the same code path as ``attnmoe.train.loop``) are timed one by one
after ``--warmup`` untimed steps. Variants are interleaved round-robin (``--rounds`` rounds of
``--steps`` steps each) so that load drifting on a shared machine hits all of them alike. Reports
the median step time, throughput in images/s, tokens/s or windows/s, and the ratio of each
variant's median throughput to softmax's.

    python benchmarks/bench_train.py --threads 1 --out runs/bench_train.json

Data: ``--data-dir`` (default ``<repo>/../shared/data``, else ``$ATTNMOE_DATA_DIR``); tasks whose
data are missing are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from attnmoe.tasks import build_task
from attnmoe.train.loop import BatchPlan, _units, parameter_groups

VARIANTS = ("softmax", "active-gelu", "active-relu", "gated-g1", "gated-g1-headwise", "sigmoid")
TASKS = {"vision": ("fashion-mnist", None), "lm": ("shakespeare", None), "forecast": ("ETTh1", 96)}


def _data_dir(given: str | None) -> Path | None:
    for candidate in (given, Path(__file__).resolve().parents[1].parent / "shared" / "data",
                      os.environ.get("ATTNMOE_DATA_DIR")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _step_fn(task):
    model = task.model
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, task.spec.weight_decay), lr=task.spec.lr)
    plan = BatchPlan(task, task.spec.batch_size, seed=0)
    state = {"step": 0}

    def step() -> tuple[float, int]:
        batch = plan.global_batch(state["step"])
        state["step"] += 1
        start = time.perf_counter()
        loss = task.loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return time.perf_counter() - start, _units(batch, task.throughput_unit)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="vision,lm,forecast")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = _data_dir(args.data_dir)
    variants = [v for v in args.variants.split(",") if v]
    if variants[0] != "softmax":
        raise SystemExit("the first variant must be softmax (the baseline)")
    results: dict[str, dict] = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"data {data_dir}")
    for task_name in args.tasks.split(","):
        dataset, horizon = TASKS[task_name]
        if data_dir is None:
            if task_name != "vision":
                print(f"{task_name}: skipped (no data folder)")
                continue
            dataset = "digits"
        steps, units = {}, {}
        for variant in variants:
            task = build_task(task_name, dataset, data_dir=data_dir, attention=variant, seed=0,
                              horizon=horizon)
            steps[variant] = _step_fn(task)
            for _ in range(args.warmup):
                steps[variant]()
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                for _ in range(args.steps):
                    seconds, units[variant] = steps[variant]()
                    times[variant].append(seconds)
        unit = task.throughput_unit
        rows = {}
        base = units["softmax"] / statistics.median(times["softmax"])
        for variant in variants:
            median = statistics.median(times[variant])
            rate = units[variant] / median
            rows[variant] = {"median_step_s": median, f"{unit}_per_s": rate, "ratio_to_softmax": rate / base,
                             "n_steps": len(times[variant])}
        results[f"{task_name}/{dataset}"] = rows
        print(f"\n{task_name} / {dataset} (batch {task.spec.batch_size}, {unit}/step {units['softmax']})")
        print(f"{'variant':<20}{'median step ms':>16}{unit + '/s':>14}{'vs softmax':>12}")
        for variant, row in rows.items():
            print(f"{variant:<20}{1000 * row['median_step_s']:>16.1f}{row[f'{unit}_per_s']:>14.0f}"
                  f"{row['ratio_to_softmax']:>12.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
