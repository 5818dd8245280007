"""Cost of one batched Hessian call: ``derivatives.batched_hessian`` against vmapped torch.func.

    python benchmarks/bench_hessian.py [--n 4000] [--replicates 8] [--rounds 3] [--threads 1]

For each objective without a closed-form Hessian (hmoe, cosine-router least squares, the four
likelihood families) the same parameters and data go through

* **vmapped torch.func** -- the per-replicate loss differentiated by ``torch.func`` and mapped
  over replicates with ``vmap`` (``hessian`` for least squares, ``jacfwd(jacrev)`` for the
  likelihoods, chunked forward-over-reverse rows for hmoe): the code these objectives used
  before study version 2;
* **batched_hessian** -- P double-backward passes through the batched loss (what they use now).

Printed per objective: P, the median seconds of each over ``--rounds`` interleaved calls, their
ratio (torch.func / batched) and the largest absolute difference of the Hessians (they must
agree to rounding). Ratios, measured in one run, are the result; absolute seconds depend on the
machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from attnmoe.estimation.families import hmoe
from attnmoe.estimation.solvers.derivatives import batched_hessian
from attnmoe.estimation.families.least_squares.fit import least_squares_objective
from attnmoe.estimation.families.likelihood.objective import LikelihoodObjective
from attnmoe.estimation.families.likelihood.settings import SETTINGS as LIK_SETTINGS
from attnmoe.estimation.families.likelihood.settings import sample_data, start_points
from attnmoe.estimation.families.least_squares.truth import named_settings, sample
from attnmoe.moe.hierarchical import HierarchicalLayout, hierarchical_forward, tokens_last

Case = tuple[str, int, Callable[[], Tensor], Callable[[], Tensor]]


def _hmoe_case(name: str, n: int, R: int) -> Case:
    setting = next(s for s in hmoe.hmoe_settings() if s.name == name)
    layout = HierarchicalLayout(setting.spec())
    seeds = list(range(R))
    X = hmoe.sample(n, seeds)
    truth = {k: v.expand(R, *v.shape[1:]) for k, v in hmoe.true_params(setting).items()}
    y = hierarchical_forward(setting.spec(hmoe.HEADS_TRUE), truth, tokens_last(X)) + 0.1 * torch.randn(R, n, dtype=torch.float64)
    obj = hmoe.HMoEObjective(layout, X, y)
    x = obj.extend(hmoe.start_points(setting, seeds, "near-truth", hmoe.HMoEConfig()))
    fn = torch.func

    def one(flat: Tensor, Xr: Tensor, yr: Tensor) -> Tensor:  # the version-1 per-replicate loss
        f = hierarchical_forward(layout.spec, layout.unpack(flat[: obj.n_free].unsqueeze(0)), Xr.unsqueeze(0))[0]
        return ((f - yr) * obj.mask).square().sum() / obj.n + flat[obj.n_free :].square().sum()

    grad = fn.grad(one)
    basis = torch.eye(x.shape[1], dtype=x.dtype)

    def rows(p: Tensor, Xr: Tensor, yr: Tensor) -> Tensor:  # chunked forward-over-reverse rows
        def hvp(v: Tensor) -> Tensor:
            return fn.jvp(lambda q: grad(q, Xr, yr), (p,), (v,))[1]

        return torch.cat([fn.vmap(hvp)(basis[i : i + 8]) for i in range(0, basis.shape[0], 8)])

    def old() -> Tensor:
        H = fn.vmap(rows)(x, obj.X, obj.y)
        return 0.5 * (H + H.transpose(1, 2))

    return f"hmoe {name}", x.shape[1], old, lambda: obj.hessian(x)[2]


def _ls_case(name: str, n: int, R: int) -> Case:
    setting = named_settings()[name]
    X, y = sample(setting, n, list(range(R)))
    obj = least_squares_objective(setting.fit_layout, X, y)
    x = 0.1 * torch.randn(R, setting.fit_layout.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    old_fn = torch.func.vmap(torch.func.hessian(obj._loss_one))
    return f"least squares {name}", x.shape[1], lambda: old_fn(x, obj.X, obj.y), lambda: obj.hessian(x)[2]


def _lik_case(name: str, n: int, R: int) -> Case:
    setting = LIK_SETTINGS[name]
    seeds = list(range(R))
    X, y = sample_data(setting, n, seeds)
    x = start_points(setting, n, seeds)
    obj = LikelihoodObjective(setting.fit_model, X, y, shift=100.0)
    old_fn = torch.func.vmap(torch.func.jacfwd(torch.func.jacrev(obj._single)))

    def old() -> Tensor:
        H = old_fn(x, obj.xT, obj.y)
        return 0.5 * (H + H.transpose(1, 2))

    return f"likelihood {name}", x.shape[1], old, lambda: obj.hessian(x)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, R = args.n, args.replicates
    cases = [
        _hmoe_case("G3-over", n, R), _hmoe_case("plain-over", n, R),
        _ls_case("crouter-cosine-gelu", n, R), _ls_case("crouter-perturbed-cosine-linear", n, R),
        _lik_case("topk-exact", n, R), _lik_case("topk-over-K3", n, R), _lik_case("contaminated-a", n, R),
        _lik_case("temp-temperature", n, R), _lik_case("mlogit-softmax-vanish", n, R),
    ]
    print(f"n = {n}, replicates = {R}, threads = {args.threads}, median of {args.rounds} interleaved rounds")
    print("| objective | P | vmapped torch.func (s) | batched_hessian (s) | ratio | max abs difference |")
    print("|---|---|---|---|---|---|")
    for label, P, old, new in cases:
        t_old, t_new = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            H_old = old()
            t_old.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            H_new = new()
            t_new.append(time.perf_counter() - t0)
        a, b = statistics.median(t_old), statistics.median(t_new)
        diff = float((H_old - H_new).abs().max())
        print(f"| {label} | {P} | {a:.3f} | {b:.3f} | {a / b:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
