"""Per-iteration trace of the plain trust-region Newton iteration on ONE over-specified fit.

Re-runs the iteration of :func:`attnmoe.estimation.solvers.optim.trust_region` with ``extrapolate=0``
(same helpers: scaling, eigenbasis, exact subproblem, radius rule, decrement test) for one
replicate of a core setting, paper options (box |theta| <= 10, near-truth:0.1 start, dtol =
1e-8), and prints every ``--every`` iterations: loss, Newton decrement / (L/n), smallest and
largest eigenvalue of the scaled Hessian, step norm (scaled) and trust radius, rho, whether the
step was accepted, the three parameters that moved most, and max |theta|. At the end: the
fitted atoms and, for a looser tolerance ``--loose``, the first iteration at which the decrement
test would have stopped and how far (in sigma^2/n) that point's loss is above the final one.

    python benchmarks/trace_trust_region.py monomial-linear-over --n 1000 --seed 0 --every 50
"""

from __future__ import annotations

import argparse
import time

import torch

from attnmoe.estimation.solvers import newton as O
from attnmoe.estimation.families.least_squares.fit import _Box, least_squares_objective
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample, with_noise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=None, help="override the setting's sigma")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--max-iter", type=int, default=5000)
    ap.add_argument("--dtol", type=float, default=1e-8)
    ap.add_argument("--loose", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    st = get_setting(a.setting)
    if a.noise is not None:
        st = with_noise(st, a.noise)
    layout, bound, n = st.fit_layout, 10.0, a.n
    X, y = sample(st, n, [a.seed])
    init = near_truth_init(layout, st.true_params(), [a.seed], 0.1).clamp(-0.99 * bound, 0.99 * bound)
    box = _Box(bound)
    obj = box.wrap(least_squares_objective(layout, X, y))
    names = [f"{nm}{i}.{j}" for nm, _, m, w in layout.blocks for i in range(m) for j in range(w)]
    x = box.to_free(init)
    f, g, H = obj.hessian(x, None)
    D = O._scaling(H, None, True)
    lam, Q = O._scaled_eigh(H, D)
    delta = torch.tensor([1.0], dtype=x.dtype)
    s2n = st.noise_std**2 / n
    loose_hit = None
    t0 = time.perf_counter()
    it = 0
    for it in range(a.max_iter):
        gh = (Q * (g / D).unsqueeze(-1)).sum(-2)
        dec, floor = O._decrement(lam, gh, 1e-6)
        convex = bool(lam[0, 0] >= -floor[0])
        ratio = float(dec[0] / (f[0] / n))
        if loose_hit is None and convex and ratio <= a.loose:
            loose_hit = (it, float(f[0]))
        if convex and ratio <= a.dtol:
            break
        p_hat, pred = O._subproblem(lam, gh, delta)
        step = (Q * p_hat.unsqueeze(-2)).sum(-1) / D
        trial = x + step
        ft = obj(trial, None)
        rho = float((f - ft) / pred.clamp_min(1e-300))
        ok = bool(torch.isfinite(ft)) and rho > 1e-4 and float(pred) > 0
        pn = float(p_hat.norm())
        if it % a.every == 0:
            top = [names[i] for i in step[0].abs().argsort(descending=True)[:3]]
            print(f"{it:5d} L={float(f):.10e} dec/(L/n)={ratio:.2e} lam_min={float(lam[0, 0]):+.1e} "
                  f"lam_max={float(lam[0, -1]):.1e} |p|={pn:.2e} radius={float(delta):.2e} rho={rho:+.3f} "
                  f"acc={int(ok)} moved={top} max|theta|={float(box.to_theta(x).abs().max()):.2f}")
        d = float(delta)
        if not ok or rho < 0.25:
            d = 0.25 * pn
        if ok and rho > 0.75 and pn >= 0.99 * float(delta):
            d = min(2 * d, 1e3)
        delta = torch.tensor([d], dtype=x.dtype)
        if ok:
            x = trial
            f, g, H = obj.hessian(x, None)
            D = O._scaling(H, D, True)
            lam, Q = O._scaled_eigh(H, D)
    print(f"stopped after {it} iterations, {time.perf_counter() - t0:.1f} s; final L = {float(f):.10e}")
    for k, v in layout.unpack(box.to_theta(x)).items():
        print(f"  {k}: {[round(z, 3) for z in v[0].flatten().tolist()]}")
    if loose_hit is not None:
        print(f"dtol = {a.loose:g} would have stopped at iteration {loose_hit[0]}, "
              f"{(loose_hit[1] - float(f)) / s2n:.3g} sigma^2/n above the final loss")


if __name__ == "__main__":
    main()
