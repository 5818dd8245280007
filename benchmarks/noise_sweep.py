"""A noise sweep at fixed n through the API (the records behind docs/rates.md, "The answer").

    python benchmarks/noise_sweep.py SETTINGS SIGMAS INIT REPLICATES N OUT.jsonl [PERTURB]

SETTINGS and SIGMAS are comma-separated; every (setting, sigma) cell is fitted with
``FitOptions(max_iter=5000, n_test=4000, bound=10.0, init=INIT)`` on seeds 0..REPLICATES-1 and
appended to OUT.jsonl (one record per line, with ``init``/``base``/``noise`` added); PERTURB (default
0) moves every start at rounding level (``FitOptions.perturb``: the claims ledger's refits into
``docs/rates/sweep-n1000-perturbed/``). The same
cells as ``attnmoe rates --preset identifiability`` (which also records study.json and runs
both kinds of start in one program).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from attnmoe.estimation import FitOptions, fit_and_score, get_setting
from attnmoe.estimation.families.least_squares.truth import with_noise


def main() -> None:
    names, sigmas, init, reps, n, out = sys.argv[1:7]
    perturb = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    torch.set_num_threads(1)
    options = FitOptions(n_test=4000, bound=10.0, max_iter=5000, init=init, perturb=perturb)
    with open(out, "a", encoding="utf-8") as fh:
        for name in names.split(","):
            for sd in (float(v) for v in sigmas.split(",")):
                start = time.time()
                recs = fit_and_score(with_noise(get_setting(name), sd), int(n), list(range(int(reps))), options)
                fh.writelines(json.dumps({**r, "init": init, "base": name, "noise": sd}) + "\n" for r in recs)
                fh.flush()
                its = sorted(r["iterations"] for r in recs)
                print(f"{name} {sd} {init} {time.time() - start:.1f}s "
                      f"conv={sum(r['converged'] for r in recs)}/{len(recs)} its={its}", flush=True)


if __name__ == "__main__":
    main()
