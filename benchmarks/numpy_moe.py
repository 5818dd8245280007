"""A plain NumPy least-squares objective and gradient for one softmax-gated MoE fit.

The baseline of ``bench_fit.py``: what a researcher would write without attnmoe to hand to
``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``. Written from the formulas, not from
attnmoe's torch code (the benchmark checks its gradient against torch autograd on one point).

Model (arXiv 2410.11222), one replicate, inputs x_j in R^d, j = 1..n, experts i = 0..k-1:

    u_ij = x_j^T A_i x_j + b_i^T x_j + c_i      (polynomial gate; monomial: no b; linear: no A)
    w_ij = softmax_i(u_ij),   z_ij = a_i^T x_j + alpha_i,   h_ij = sigma(z_ij)
    f_j  = sum_i w_ij h_ij,   L = (1/n) sum_j (f_j - y_j)^2

Gradient (e_j = 2 (f_j - y_j) / n):

    dL/dz_ij = e_j w_ij sigma'(z_ij)              -> grad a_i = sum_j (.) x_j, grad alpha_i = sum_j (.)
    dL/du_ij = e_j w_ij (h_ij - f_j)              -> grad c_i = sum_j (.), grad b_i = sum_j (.) x_j,
                                                     grad A_i = sum_j (.) x_j x_j^T

Free parameters (the same flat order as ``attnmoe.moe.ParameterLayout``): the gating
parameters of experts 1..k-1 (expert 0's are fixed at zero: softmax is translation invariant),
A_i stored as its upper triangle (row-major; A_i symmetric, so the gradient of an off-diagonal
entry is twice the (p, q) entry of sum_j (.) x_j x_j^T), then a and alpha of experts 0..k-1.
Block order: [A (k-1, d(d+1)/2)], [b (k-1, d)], c (k-1), a (k, d), alpha (k).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

SQRT_2PI = np.sqrt(2.0 * np.pi)


def _act(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigma(z), sigma'(z) and sigma''(z)."""
    if name == "linear":
        return z, np.ones_like(z), np.zeros_like(z)
    if name == "sigmoid":
        s = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
        ds = s * (1.0 - s)
        return s, ds, ds * (1.0 - 2.0 * s)
    if name == "tanh":
        t = np.tanh(z)
        return t, 1.0 - t * t, -2.0 * t * (1.0 - t * t)
    if name == "gelu":
        cdf, pdf = ndtr(z), np.exp(-0.5 * z * z) / SQRT_2PI
        return z * cdf, cdf + z * pdf, (2.0 - z * z) * pdf
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(z.dtype), np.zeros_like(z)
    raise ValueError(f"unknown expert {name!r}")


class NumpyMoE:
    """Objective and gradient of one fit, for ``scipy.optimize.minimize(..., jac=True)``.

    Args:
        gate: ``"polynomial"``, ``"monomial"`` or ``"linear"``.
        expert: ``"linear"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"`` or ``"relu"``.
        k: number of experts.
        x: inputs ``(n, d)``.
        y: responses ``(n,)``.
    """

    def __init__(self, gate: str, expert: str, k: int, x: np.ndarray, y: np.ndarray) -> None:
        if gate not in ("polynomial", "monomial", "linear"):
            raise ValueError(f"unknown gate {gate!r}")
        self.gate, self.expert, self.k = gate, expert, k
        self.x, self.y = np.ascontiguousarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        n, d = self.x.shape
        self.n, self.d = n, d
        self.iu = np.triu_indices(d)
        # quadratic features x_p x_q for p <= q, (n, d(d+1)/2)
        self.quad = self.x[:, self.iu[0]] * self.x[:, self.iu[1]]
        self.off = (self.iu[0] != self.iu[1]).astype(np.float64)  # off-diagonal entries count twice
        self.has_A = gate in ("polynomial", "monomial")
        self.has_b = gate in ("polynomial", "linear")
        t = d * (d + 1) // 2
        sizes = []
        if self.has_A:
            sizes.append(("A", (k - 1, t)))
        if self.has_b:
            sizes.append(("b", (k - 1, d)))
        sizes += [("c", (k - 1,)), ("a", (k, d)), ("alpha", (k,))]
        self.shapes = dict(sizes)
        self.size = sum(int(np.prod(s)) for s in self.shapes.values())

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for name, shape in self.shapes.items():
            m = int(np.prod(shape))
            out[name] = theta[start : start + m].reshape(shape)
            start += m
        return out

    def _forward(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """Weights w, expert outputs h, sigma', sigma'' ``(n, k)`` and f ``(n,)`` at theta."""
        p = self.unpack(theta)
        x, n = self.x, self.n
        # gating logits of experts 1..k-1 (expert 0's are 0), (n, k)
        u = np.zeros((n, self.k))
        u1 = np.broadcast_to(p["c"], (n, self.k - 1)).copy()
        if self.has_A:
            # x^T A x for symmetric A stored as upper triangle: sum_{p<=q} (2 - [p==q]) A_pq x_p x_q
            u1 += self.quad @ (p["A"] * (1.0 + self.off)).T
        if self.has_b:
            u1 += x @ p["b"].T
        u[:, 1:] = u1
        u -= u.max(axis=1, keepdims=True)
        w = np.exp(u)
        w /= w.sum(axis=1, keepdims=True)
        z = x @ p["a"].T + p["alpha"]
        h, dh, d2h = _act(self.expert, z)
        return w, h, dh, d2h, (w * h).sum(axis=1)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, h, dh, _, f = self._forward(theta)
        x, n = self.x, self.n
        r = f - self.y
        loss = float(r @ r) / n
        e = 2.0 * r / n  # (n,)
        gz = (e[:, None] * w) * dh  # dL/dz, (n, k)
        gu = (e[:, None] * w) * (h - f[:, None])  # dL/du, (n, k)
        grads = {}
        gu1 = gu[:, 1:]
        if self.has_A:
            grads["A"] = (gu1.T @ self.quad) * (1.0 + self.off)
        if self.has_b:
            grads["b"] = gu1.T @ x
        grads["c"] = gu1.sum(axis=0)
        grads["a"] = gz.T @ x
        grads["alpha"] = gz.sum(axis=0)
        return loss, np.concatenate([grads[k].ravel() for k in self.shapes])

    # --- residuals, Jacobian and Hessian (for least_squares "trf" and minimize "trust-exact") ---
    #
    # Every free parameter multiplies one fixed feature inside one latent variable: the gate
    # logit u_i (i = 1..k-1) with features G(x) = [x_p x_q (1 + [p<q]) for p <= q (A), x (b),
    # 1 (c)], or the expert pre-activation z_i (i = 0..k-1) with features E(x) = [x, 1].
    # In that "natural" order (u_1 features, ..., u_{k-1} features, z_0 features, ...):
    #
    #   df/du_i = s_i = w_i (h_i - f),   df/dz_i = w_i sigma'_i
    #   d2f/du_i du_l = [i=l] s_i - w_i s_l - w_l s_i
    #   d2f/du_l dz_i = [i=l] w_i sigma'_i - w_l w_i sigma'_i
    #   d2f/dz_i dz_l = [i=l] w_i sigma''_i
    #   H = (2/n) sum_j (J_j J_j^T + r_j d2f_j)
    #
    # so each second-order block is (feature outer products)^T (per-sample weights): one matmul.

    def _natural(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gate features G (n, Fg), expert features E (n, d + 1), and the permutation ``perm``
        with theta[p] = natural[perm[p]]; cached."""
        if not hasattr(self, "_perm"):
            n, d, K, k = self.n, self.d, self.k - 1, self.k
            cols = ([self.quad * (1.0 + self.off)] if self.has_A else []) + ([self.x] if self.has_b else [])
            G = np.concatenate(cols + [np.ones((n, 1))], axis=1)
            E = np.concatenate([self.x, np.ones((n, 1))], axis=1)
            Fg, Fe, t = G.shape[1], d + 1, d * (d + 1) // 2
            gate = np.arange(K * Fg).reshape(K, Fg)
            expert = K * Fg + np.arange(k * Fe).reshape(k, Fe)
            blocks = ([gate[:, :t]] if self.has_A else []) + (
                [gate[:, Fg - 1 - d : Fg - 1]] if self.has_b else [])
            blocks += [gate[:, Fg - 1], expert[:, :d], expert[:, d]]
            self._perm = np.concatenate([b.ravel() for b in blocks])
            self._G, self._E = G, E
            outer = lambda a, b: (a[:, :, None] * b[:, None, :]).reshape(n, -1)
            self._GG, self._GE, self._EE = outer(G, G), outer(G, E), outer(E, E)
        return self._G, self._E, self._perm

    def _jacobian_natural(self, w, h, dh, f) -> np.ndarray:
        G, E, _ = self._natural()
        n = self.n
        ju = (w[:, 1:] * (h[:, 1:] - f[:, None]))[:, :, None] * G[:, None, :]  # (n, k-1, Fg)
        jz = (w * dh)[:, :, None] * E[:, None, :]  # (n, k, Fe)
        return np.concatenate([ju.reshape(n, -1), jz.reshape(n, -1)], axis=1)

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """r_j = f(x_j) - y_j ``(n,)`` (least_squares minimises (1/2) sum r_j^2 = (n/2) L)."""
        return self._forward(theta)[4] - self.y

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """df(x_j)/dtheta ``(n, P)``."""
        w, h, dh, _, f = self._forward(theta)
        return self._jacobian_natural(w, h, dh, f)[:, self._natural()[2]]

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """d^2 L / dtheta^2 ``(P, P)`` of L = (1/n) sum_j r_j^2."""
        w, h, dh, d2h, f = self._forward(theta)
        G, E, perm = self._natural()
        n, k, K, Fg, Fe = self.n, self.k, self.k - 1, G.shape[1], E.shape[1]
        J = self._jacobian_natural(w, h, dh, f)
        e = 2.0 / n * (f - self.y)  # (n,)
        s = w * (h - f[:, None])  # (n, k)
        wd = w * dh
        # per-sample second derivatives of f times e_j: uu (n, K, K), uz (n, K, k), zz (n, k)
        uu = -(w[:, 1:, None] * s[:, None, 1:] + s[:, 1:, None] * w[:, None, 1:])
        uu[:, np.arange(K), np.arange(K)] += s[:, 1:]
        uz = -w[:, 1:, None] * wd[:, None, :]
        uz[:, np.arange(K), np.arange(1, k)] += wd[:, 1:]
        ee = e[:, None]
        H = 2.0 / n * (J.T @ J)
        Pg = K * Fg
        H_uu = (self._GG.T @ (ee[:, :, None] * uu).reshape(n, -1)).reshape(Fg, Fg, K, K)
        H[:Pg, :Pg] += H_uu.transpose(2, 0, 3, 1).reshape(Pg, Pg)
        H_uz = (self._GE.T @ (ee[:, :, None] * uz).reshape(n, -1)).reshape(Fg, Fe, K, k)
        H_uz = H_uz.transpose(2, 0, 3, 1).reshape(Pg, k * Fe)
        H[:Pg, Pg:] += H_uz
        H[Pg:, :Pg] += H_uz.T
        H_zz = (self._EE.T @ (ee * w * d2h)).reshape(Fe, Fe, k)  # diagonal in the experts
        for i in range(k):
            H[Pg + i * Fe : Pg + (i + 1) * Fe, Pg + i * Fe : Pg + (i + 1) * Fe] += H_zz[:, :, i]
        return H[np.ix_(perm, perm)]


def flops_per_eval(gate: str, expert: str, n: int, k: int, d: int) -> int:
    """Hand count of the floating-point operations of ONE loss + gradient evaluation.

    Counted from the formulas above for one replicate (a multiply-add is 2 FLOPs; an exp, tanh
    or erf counts as 1; comparisons and copies are free):

    * forward: quadratic features n t (t = d(d+1)/2), gate x^T A x: 2 n t (k-1) + n t,
      b^T x: 2 n d (k-1), + c: n (k-1); softmax: 5 n k; expert z: 2 n d k + n k, sigma: 1-3 n k
      (linear 0, relu 0, sigmoid 3, tanh 1, gelu 3); f: 2 n k; residual and square-sum: 3 n
    * backward: e: 2 n; dL/dz: 2 n k + sigma' (linear 0, relu 0, sigmoid 2, tanh 2, gelu 5)
      n k; grad a: 2 n d k; grad alpha: n k; dL/du: 3 n k; grad c: n (k-1);
      grad b: 2 n d (k-1); grad A: 2 n t (k-1) + t (k-1).
    """
    t = d * (d + 1) // 2
    act = {"linear": 0, "relu": 0, "sigmoid": 3, "tanh": 1, "gelu": 3}[expert]
    dact = {"linear": 0, "relu": 0, "sigmoid": 2, "tanh": 2, "gelu": 5}[expert]
    has_a = gate in ("polynomial", "monomial")
    has_b = gate in ("polynomial", "linear")
    fwd = n * (k - 1) + 5 * n * k + 2 * n * d * k + n * k + act * n * k + 2 * n * k + 3 * n
    bwd = 2 * n + (2 + dact) * n * k + 2 * n * d * k + n * k + 3 * n * k + n * (k - 1)
    if has_a:
        fwd += n * t + 2 * n * t * (k - 1) + n * t
        bwd += 2 * n * t * (k - 1) + t * (k - 1)
    if has_b:
        fwd += 2 * n * d * (k - 1)
        bwd += 2 * n * d * (k - 1)
    return int(fwd + bwd)
