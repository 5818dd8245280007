"""Held-out R^2 of ``MoERegressor`` against ordinary least squares on scikit-learn's diabetes data.

    python benchmarks/bench_estimator.py [--seeds 0,1,2,3,4] [--test-size 0.25] [--cv]

For each split seed s: ``train_test_split(X, y, test_size, random_state=s)``; OLS
(``LinearRegression``), ``MoERegressor`` with its defaults (``random_state=0``) and with
``expert="linear"`` are fitted on the train part and scored (R^2) on the test part. ``--cv`` first reruns the choice of the
default ridge strength: 5-fold CV (``KFold(5, shuffle=True, random_state=0)``) over
``l2 in {0.001, 0.003, 0.01, 0.03, 0.1}`` on the TRAIN part of split seed 0 only.
Runs on one torch thread (the machine is shared); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, KFold, train_test_split

from attnmoe.estimation import MoERegressor

L2_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="split seeds, comma-separated")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--cv", action="store_true", help="rerun the CV choice of the default l2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_diabetes(return_X_y=True)
    if args.cv:
        Xtr, _, ytr, _ = train_test_split(X, y, test_size=args.test_size, random_state=0)
        search = GridSearchCV(MoERegressor(random_state=0), {"l2": list(L2_GRID)},
                              cv=KFold(5, shuffle=True, random_state=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(Xtr, ytr)
        scores = ", ".join(f"{l2:g}: {s:.4f}" for l2, s in zip(L2_GRID, search.cv_results_["mean_test_score"]))
        print(f"5-fold CV R^2 on the train part of split 0: {scores}; best l2 = {search.best_params_['l2']:g}\n")
    print("| split seed | OLS R^2 | MoERegressor R^2 | difference | converged | fit s (CPU) "
          "| expert='linear' R^2 |")
    print("|---:|---:|---:|---:|:---:|---:|---:|")
    diffs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=args.test_size, random_state=seed)
        ols = LinearRegression().fit(Xtr, ytr).score(Xte, yte)
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            moe = MoERegressor(random_state=0).fit(Xtr, ytr)
            seconds = time.process_time() - start
            linear = MoERegressor(expert="linear", random_state=0).fit(Xtr, ytr).score(Xte, yte)
        r2 = moe.score(Xte, yte)
        diffs.append(r2 - ols)
        print(f"| {seed} | {ols:.4f} | {r2:.4f} | {r2 - ols:+.4f} | {moe.converged_} | {seconds:.1f} "
              f"| {linear:.4f} |")
    print(f"\nmean difference {np.mean(diffs):+.4f}; MoE >= OLS in {sum(d >= 0 for d in diffs)} of {len(diffs)} splits")


if __name__ == "__main__":
    main()
