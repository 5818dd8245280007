"""Every gate of GaussianMoERegressor on one problem whose expert switches on a circle.

    y = 2 x_1 + 0.1 e   if |x|^2 > 1.5,    y = -x_2 + 0.1 e   otherwise,    x ~ N(0, I_2)

A quadratic gate (x^T A x + b^T x + c) represents the boundary |x|^2 = 1.5 exactly; linear,
temperature, activation and cosine gates cannot. Prints, per gate and data seed, the held-out
mean negative log-likelihood (-mean log p(y | x), from ``predict_density``), held-out R^2 of
``predict``, whether the selected start converged, its trust-region iterations and the fit time.

    python examples/likelihood_gates.py [--seeds 3] [--n 2000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from attnmoe.estimation.sklearn import GaussianMoERegressor

GATES = ["softmax", "temperature", "activation", "cosine", "perturbed-cosine", "monomial", "polynomial"]


def data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = np.where((X**2).sum(1) > 1.5, 2 * X[:, 0], -X[:, 1]) + 0.1 * rng.normal(size=n)
    return X, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="training size (the test set has the same size)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {g: [] for g in GATES}
    print(f"{'gate':>17} {'seed':>4} {'test NLL':>9} {'test R2':>8} {'conv':>5} {'iter':>5} {'s':>6}")
    for seed in range(args.seeds):
        X, y = data(seed, 2 * args.n)
        for gate in GATES:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                reg = GaussianMoERegressor(gate=gate, n_init=4, max_iter=500, random_state=seed).fit(X[: args.n], y[: args.n])
            sec = time.perf_counter() - start
            nll = -float(np.log(reg.predict_density(X[args.n :], y[args.n :])).mean())
            r2 = reg.score(X[args.n :], y[args.n :])
            rows[gate].append((nll, reg.converged_))
            print(f"{gate:>17} {seed:>4} {nll:9.3f} {r2:8.3f} {str(reg.converged_):>5} {reg.n_iter_:5d} {sec:6.1f}")
    print("\nmean test NLL over converged fits (converged / seeds):")
    for gate, r in rows.items():
        ok = [nll for nll, c in r if c]
        mean = f"{np.mean(ok):.3f}" if ok else "  n/a"
        print(f"{gate:>17} {mean:>7}  ({len(ok)}/{len(r)})")


if __name__ == "__main__":
    main()
