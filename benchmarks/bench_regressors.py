"""Held-out R^2 of ``MoERegressor`` against OLS, ridge and gradient boosting on scikit-learn's data.

    python benchmarks/bench_regressors.py [--seeds 0,1,2,3,4] [--test-size 0.25]

Data sets that ship with scikit-learn (no download): ``diabetes`` (442 x 10), ``linnerud``
(20 x 3, target "Weight"), and the synthetic ``make_friedman1`` (500 x 10, noise 1),
``make_friedman2`` / ``make_friedman3`` (500 x 4, noise 0) and a near-linear
``make_regression`` (500 x 10, 5 informative, noise 10), each generated with
``random_state=0``. For each split seed s: ``train_test_split(test_size, random_state=s)``,
X standardised on the train part (``StandardScaler``), every model fitted on the train part and
scored (R^2) on the test part. Models: ``LinearRegression`` (OLS), ``RidgeCV`` (alphas
10^-3..10^3), ``HistGradientBoostingRegressor(random_state=0)``, ``MoERegressor(random_state=0)``
with its defaults (held-out selection between the mixture and its linear special case) and with
``selection="none"`` (the mixture alone). Prints a Markdown table of mean ± std over the splits
and, per data set, the mean R^2 difference of the default MoE to OLS and in how many splits it is at
least OLS's R^2 - 1e-4 (the solvers' tolerance), and how often the selection kept the linear model. One torch thread per fit.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from sklearn.datasets import (
    load_diabetes,
    load_linnerud,
    make_friedman1,
    make_friedman2,
    make_friedman3,
    make_regression,
)
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from attnmoe.estimation import MoERegressor

DATASETS = {
    "diabetes": lambda: load_diabetes(return_X_y=True),
    "linnerud": lambda: (load_linnerud().data, load_linnerud().target[:, 0]),
    "friedman1": lambda: make_friedman1(500, noise=1.0, random_state=0),
    "friedman2": lambda: make_friedman2(500, noise=0.0, random_state=0),
    "friedman3": lambda: make_friedman3(500, noise=0.0, random_state=0),
    "near-linear": lambda: make_regression(500, 10, n_informative=5, noise=10.0, random_state=0),
}

MODELS = {
    "OLS": lambda: LinearRegression(),
    "ridge (RidgeCV)": lambda: RidgeCV(alphas=np.logspace(-3, 3, 13)),
    "HistGBR": lambda: HistGradientBoostingRegressor(random_state=0),
    "MoE default": lambda: MoERegressor(random_state=0),
    "MoE selection='none'": lambda: MoERegressor(random_state=0, selection="none"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="split seeds, comma-separated")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.datasets.split(",")
    print(f"split seeds {seeds}, test size {args.test_size}; R^2 mean ± std over the splits\n")
    print("| data (n x d) | " + " | ".join(MODELS) + " | default MoE − OLS (splits >= OLS − 1e-4) | MoE picked linear |")
    print("|---|" + "---:|" * len(MODELS) + "---:|---:|")
    started = time.time()
    for name in names:
        X, y = DATASETS[name]()
        scores: dict[str, list[float]] = {m: [] for m in MODELS}
        picked_linear = 0
        for seed in seeds:
            Xa, Xb, ya, yb = train_test_split(X, y, test_size=args.test_size, random_state=seed)
            for label, make in MODELS.items():
                model = make_pipeline(StandardScaler(), make())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit(Xa, ya)
                scores[label].append(model.score(Xb, yb))
                if label == "MoE default":
                    picked_linear += model[-1].selected_ == "linear"
        diff = np.subtract(scores["MoE default"], scores["OLS"])
        wins = int(np.sum(diff >= -1e-4))  # ties up to the solvers' tolerance count as not losing
        cells = [f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" for v in scores.values()]
        print(f"| {name} ({X.shape[0]} x {X.shape[1]}) | " + " | ".join(cells)
              + f" | {diff.mean():+.4f} ({wins}/{len(seeds)}) | {picked_linear}/{len(seeds)} |", flush=True)
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
