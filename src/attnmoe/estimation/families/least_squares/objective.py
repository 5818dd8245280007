"""The least-squares objective of an MoE regression with its gradient and Hessian in closed form.

For replicate r with inputs x_rj (j = 1..n) and free parameters theta_r (layout of
:class:`attnmoe.moe.ParameterLayout`), arXiv 2410.11222's least-squares criterion is

    L_r(theta) = (1/n) sum_j (f(x_rj; theta) - y_rj)^2,    f(x) = sum_i w_i(x) h_i(x).

Both the gating logits and the expert pre-activations are linear in the parameters once the
inputs are expanded into fixed features (computed once per fit):

    u_ij = <G_i, phi(x_j)>   phi(x) = [x_p x_q (p <= q; times 2 for p < q), x, 1]  (the parts
                                       the gate uses: A's upper triangle, b, c)
    z_ij = <E_i, psi(x_j)>   psi(x) = [x, 1]                                       (a, alpha)

(the factor 2: an upper-triangle entry t_pq of the symmetric A_i enters x^T A_i x twice).
phi and psi are columns of one feature vector xi(x) (each distinct feature once: b and a share
x, c and alpha share 1). With w = softmax_i(u) (row i = 0 fixed at zero) or w = sigmoid(u),
h = sigma(z), residual r_j = f_j - y_j and e_j = (2/n) r_j, the per-sample sensitivities are

    s_ij = df_j/du_ij = w_ij (h_ij - f_j)        (softmax)    h_ij w_ij (1 - w_ij)  (sigmoid)
    t_ij = df_j/dz_ij = w_ij sigma'(z_ij)

and, stacking the free gate rows and the expert rows into v_j = [s_j; t_j] (length kv),

    grad = sum_j e_j v_j (x) xi_j                                (entries (row, feature))
    H    = sum_j C_j (x) xi_j xi_j^T,   C_j = (2/n) v_j v_j^T + e_j d2f_j/d(u,z)^2   (kv x kv).

The second-order part (delta = Kronecker; a_i = e w_i on gate rows, 0 on expert rows):

    softmax:  d2f/du_i du_l = delta_il s_i - w_i s_l - w_l s_i
              d2f/du_l dz_i = delta_il t_i - w_l t_i
              d2f/dz_i dz_l = delta_il w_i sigma''_i
      so that C_j = v (x) (c v - a) - a (x) v + e D_j with c = 2/n and D_j the three diagonals;
    sigmoid weights: only the diagonals, s_i (1 - 2 w_i), w_i (1 - w_i) sigma'_i, w_i sigma''_i.

Every entry of H is therefore  H[(i,p),(l,q)] = sum_j C_j[i,l] xi_jp xi_jq : ONE matrix product
of the (Q, n) coefficients (Q = kv (kv + 1) / 2 pairs i <= l) with the (n, U) feature products
(U = F (F + 1) / 2 pairs p <= q), followed by a gather into the (P, P) layout
(:meth:`LeastSquaresObjective.hessian`; tested against ``torch.func.hessian`` of the autograd
loss). Its FLOPs, 2 n Q U, are about those of the Gauss-Newton product J^T J alone (2 n P^2),
and the elementwise work is O(n Q), so the assembly runs at the rate of a batched matrix
product (``benchmarks/bench_fit.py --parts h``).

Block size and batch-position invariance. The sample axis is padded to a multiple of :data:`PAD`
with zero-weight points and processed in passes of :data:`CHUNK` samples (a multiple of PAD):
each pass's temporaries stay in cache instead of allocating (m, Q, n) arrays, and the pass
boundaries depend on n only. Vectorised element-wise kernels (exp, sigmoid, tanh, erf) round
the last, partial vector of a tensor differently from the body; with every row a multiple of
PAD long, a replicate's loss, gradient and Hessian are bitwise the same alone or at any place in
any batch (at one intra-op thread; tests). :func:`attnmoe.estimation.solvers.optim.value_and_grad` uses
this path when the objective provides it; the autograd path through
:meth:`ParameterLayout.forward` is the reference the tests compare against.

Assembly. ``assembly="numba"`` (opt-in, :data:`ASSEMBLIES`) computes :meth:`hessian`'s gradient
and Hessian with the generated numba kernel of
:mod:`~attnmoe.estimation.families.least_squares.numba_assembly` (same formulas; within 1e-12
relative of this path, about 6x faster; softmax, closed-form gates, linear/sigmoid experts, float64
CPU), and :meth:`__call__` then runs the same kernel without its products (its loss mode). Both,
because the trust region compares the loss :meth:`hessian` returns at the current point with
:meth:`__call__` at trial points (``rho = (f - f_trial) / pred``): near convergence f - f_trial is a
few ulp of f, so the two must come from the same arithmetic. The same equality (:meth:`hessian`'s
loss bitwise :meth:`__call__`'s, both assemblies, tests) lets the trust region evaluate
:meth:`hessian` at a trial point instead of the loss (``trust_region(speculate=True)``, what
``fit_least_squares`` runs) without changing any number. The kernel's losses are within 1e-14
relative of this path's; taking this path's loss in :meth:`hessian` instead would have cost
about half of the kernel's time again (R = 64, n = 1000).
:meth:`value_and_grad` and :meth:`jacobian` (L-BFGS, Adam) stay on this path, so the option is
for the trust-region method only (``FitOptions`` refuses other methods with it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnmoe.estimation.families.common import PAD, padded
from attnmoe.estimation.families.least_squares.options import ASSEMBLIES
from attnmoe.estimation.families.options import FIT_DEFAULTS
from attnmoe.moe import ParameterLayout
from attnmoe.moe.experts import EXPERT_DERIVATIVES

__all__ = ["ASSEMBLIES", "CHUNK", "PAD", "LeastSquaresObjective", "padded", "rowwise"]

#: samples per pass of the loss, gradient and Hessian (a multiple of PAD; module docstring)
CHUNK = 2048

#: a pass's largest temporary, (replicates, Q or U, CHUNK), is kept near this size: in cache on
#: a CPU; on a GPU, large blocks keep the number of kernel launches down
BLOCK_BYTES = {"cpu": 1 << 21, "cuda": 1 << 30}

#: the feature products are kept for the whole fit when they take at most this much memory
PRODUCT_CACHE_BYTES = 1 << 29


def rowwise(fn, x: Tensor) -> Tensor:
    """``fn`` applied element-wise to ``x`` ``(m, P)`` with each row padded to a multiple of
    :data:`PAD`, so row r's values do not depend on m or on r (see the module docstring)."""
    P = x.shape[1]
    return fn(torch.nn.functional.pad(x, (0, padded(P) - P)))[:, :P]


def _activation(name: str, z: Tensor, second: bool = False) -> tuple[Tensor, ...]:
    """sigma(z), sigma'(z) (and sigma''(z) with ``second``) of an expert activation
    (:data:`attnmoe.moe.experts.EXPERT_DERIVATIVES`)."""
    if name not in EXPERT_DERIVATIVES:
        raise ValueError(f"no closed-form derivative for expert {name!r}")
    out = EXPERT_DERIVATIVES[name](z)
    return out if second else out[:2]



#: the expert parameters read the gate's features: a -> x (the gate's b), alpha -> 1 (c)
_FEATURE_OF = {"A": "A", "b": "b", "c": "c", "a": "b", "alpha": "c"}


def _width(name: str, d: int) -> int:
    """Columns of feature ``name`` for d inputs: "A" the upper triangle, "b" x, "c" 1."""
    return 1 if name == "c" else (d * (d + 1) // 2 if name == "A" else d)


def _runs(ua: list[int], ub: list[int]) -> list[tuple[int, int, int, int]]:
    """The pairs (ua[u], ub[u]) as maximal runs (u0, p, q0, w): pairs u0 .. u0 + w - 1 are
    (p, q0), (p, q0 + 1), ... (the upper triangle row by row: one run per row)."""
    runs: list[tuple[int, int, int, int]] = []
    for u, (p, q) in enumerate(zip(ua, ub)):
        if runs and runs[-1][1] == p and runs[-1][2] + runs[-1][3] == q:
            runs[-1] = runs[-1][:3] + (runs[-1][3] + 1,)
        else:
            runs.append((u, p, q, 1))
    return runs


def _pair_products(src: Tensor, runs: list[tuple[int, int, int, int]], out: Tensor) -> Tensor:
    """``out[..., u] = src[..., ua[u]] * src[..., ub[u]]`` for the pairs of :func:`_runs`: one
    broadcast product src_p * src_{q0 .. q0 + w - 1} per run, written in place; the same
    products as the advanced index ``src[..., ua] * src[..., ub]``, which was 3-4x slower."""
    for u0, p, q0, w in runs:
        torch.mul(src[..., p : p + 1], src[..., q0 : q0 + w], out=out[..., u0 : u0 + w])
    return out


def _features(X: Tensor, names: list[str], rows: int, width: int) -> Tensor:
    """The distinct features ``names`` of inputs ``X`` ``(R, n, d)``, side by side in a zero
    tensor ``(R, rows, width)`` (rows >= n, width >= their columns; the rest stays 0): "A" the
    upper-triangle products X_p X_q, off-diagonal ones doubled ((X_p * X_q) * 2), "b" x, "c" 1.
    Written in place, no concatenation copies."""
    R, n, d = X.shape
    xi = X.new_zeros(R, rows, width)
    col = 0
    for name in names:
        w = _width(name, d)
        out = xi[:, :n, col : col + w]
        if name == "A":
            ua, ub = zip(*[(p, q) for p in range(d) for q in range(p, d)])  # torch.triu_indices' order
            coef = torch.tensor([1.0 if p == q else 2.0 for p, q in zip(ua, ub)], dtype=X.dtype, device=X.device)
            _pair_products(X, _runs(ua, ub), out).mul_(coef)
        elif name == "b":
            out.copy_(X)
        else:
            out.fill_(1.0)
        col += w
    return xi


class LeastSquaresObjective:
    """Per-replicate mean squared error of a MoE regression, value/gradient/Hessian in closed form.

    Callable as an :data:`attnmoe.estimation.solvers.optim.Objective` (``flat (m, P), idx -> (m,)``).

    Args:
        layout: parametrisation of the fitted model.
        X: inputs ``(R, n, d)``.
        y: responses ``(R, n)``.
        assembly: ``"torch"`` (default) or ``"numba"`` (:data:`ASSEMBLIES`; module docstring).
    """

    def _set_data(self, layout: ParameterLayout, X: Tensor, y: Tensor) -> None:
        """Check shapes; keep the layout, n, and y and a mask padded to a multiple of
        :data:`PAD` with zero-weight points (module docstring)."""
        if X.ndim != 3 or y.shape != X.shape[:2] or X.shape[2] != layout.dim:
            raise ValueError(
                f"X must be (R, n, {layout.dim}) and y (R, n); got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        self.layout, self.n_ref = layout, layout.n_ref
        R, n, _ = X.shape
        self.n, pad = n, padded(n) - n
        self.mask = X.new_zeros(n + pad)  # (n_pad,)
        self.mask[:n] = 1.0
        self.y = torch.nn.functional.pad(y.to(X.dtype), (0, pad))  # (R, n_pad)

    def __init__(self, layout: ParameterLayout, X: Tensor, y: Tensor,
                 assembly: str = FIT_DEFAULTS["least_squares"]["assembly"]) -> None:
        if assembly not in ASSEMBLIES:
            raise ValueError(f"unknown assembly {assembly!r}; valid: {list(ASSEMBLIES)}")
        if assembly == "numba":  # refuse before any work (numba itself is imported on first use)
            from attnmoe.estimation.families.least_squares.numba_assembly import check_supported

            check_supported(layout, X.device, X.dtype)
        self._set_data(layout, X, y)
        if not layout.gate.closed_form:
            raise ValueError(
                f"gate {layout.gate.name!r} has no closed-form objective; use "
                "attnmoe.estimation.families.least_squares.fit.least_squares_objective (its autograd path)"
            )
        R, n, d = X.shape
        n_pad = padded(n)
        gate_names, expert_names = layout.gate.param_names, layout.expert.param_names
        names = list(dict.fromkeys(_FEATURE_OF[name] for name in gate_names + expert_names))
        width = {name: _width(name, d) for name in names}
        F = sum(width.values())
        # xi (R, n_pad, F + F % 2). F even: with kv F or Q U odd, every other replicate's output
        # block of a batched matmul starts off a 16-byte boundary and is rounded differently (a
        # zero column fixes it); zero rows on the padding: the padding's logits are 0 and its
        # feature products vanish
        self.xi = _features(X, names, n_pad, F + F % 2)
        with torch.device("cpu"):  # the index tables; moved to the data's device below
            offset = dict(zip(names, torch.tensor([0] + [width[v] for v in names]).cumsum(0).tolist()))

            def columns(param_names: tuple[str, ...]) -> Tensor:
                return torch.cat([offset[_FEATURE_OF[v]] + torch.arange(width[_FEATURE_OF[v]])
                                  for v in param_names])

            self.gate_cols, self.expert_cols = columns(gate_names), columns(expert_names)
            # flat index of every (expert, feature) entry of the gate matrix G and expert matrix E
            index: dict[str, Tensor] = {}
            for name, start, m, w in layout.blocks:
                index[name] = start + torch.arange(m * w).reshape(m, w)
            self.g_index = torch.cat([index[v] for v in gate_names], -1)  # (kg, Fg)
            self.e_index = torch.cat([index[v] for v in expert_names], -1)  # (k, Fe)
            k = layout.n_experts
            kg = k - self.n_ref
            kv = kg + k  # rows of v = [s; t]
            # every free parameter is (row of v, column of xi)
            P = layout.n_params
            row, col = torch.empty(P, dtype=torch.long), torch.empty(P, dtype=torch.long)
            row[self.g_index] = torch.arange(kg).unsqueeze(-1).expand_as(self.g_index)
            col[self.g_index] = self.gate_cols.expand_as(self.g_index)
            row[self.e_index] = kg + torch.arange(k).unsqueeze(-1).expand_as(self.e_index)
            col[self.e_index] = self.expert_cols.expand_as(self.e_index)
            self.grad_index = row * self.xi.shape[-1] + col  # into (kv, F) flattened
            self.grad_len = kv * self.xi.shape[-1]
            # pairs i <= l of v's rows (Q) and p <= q of xi's columns (U, padded to even)
            self.qi, self.ql = torch.triu_indices(kv, kv)
            pair = torch.empty(kv, kv, dtype=torch.long)
            pair[self.qi, self.ql] = pair[self.ql, self.qi] = torch.arange(self.qi.numel())
            Fx = self.xi.shape[-1]
            ua, ub = torch.triu_indices(Fx, Fx)
            uu = torch.empty(Fx, Fx, dtype=torch.long)
            uu[ua, ub] = uu[ub, ua] = torch.arange(ua.numel())
            if ua.numel() % 2:  # even U (see above); the extra product is never read
                ua, ub = torch.cat([ua, ua[:1]]), torch.cat([ub, ub[:1]])
            self.ua, self.ub, self.U = ua, ub, ua.numel()
            self._pair_runs = _runs(ua.tolist(), ub.tolist())
            self.hess_index = pair[row][:, row] * self.U + uu[col][:, col]  # (P, P) into (Q, U)
            # the second-order diagonals (module docstring): pairs (g, g), (g, kg + g + n_ref), (x, x)
            g, x = torch.arange(kg), torch.arange(k)
            self.diag_pairs = torch.cat([pair[g, g], pair[g, kg + g + self.n_ref], pair[kg + x, kg + x]])
            self.n_gate_pairs = int((self.qi < kg).sum())  # pairs (i, l) with i a gate row come first
            # G and E over all F columns of xi: flat index per (expert, column), P (a zero) where the
            # gate or expert does not read that feature, and on the reference rows
            self.gx_index = torch.full((k, Fx), P, dtype=torch.long)
            self.gx_index[self.n_ref :, self.gate_cols] = self.g_index
            self.ex_index = torch.full((k, Fx), P, dtype=torch.long)
            self.ex_index[:, self.expert_cols] = self.e_index
            self._gx_flat, self._ex_flat = self.gx_index.flatten(), self.ex_index.flatten()  # for index_select
            # the feature products, kept when small (bitwise the same as computing them per pass)
            for name in ("gate_cols", "expert_cols", "grad_index", "qi", "ql", "ua", "ub", "hess_index",
                         "diag_pairs", "gx_index", "ex_index", "_gx_flat", "_ex_flat"):
                setattr(self, name, getattr(self, name).to(X.device))
        self.assembly, self.numba = assembly, None
        if assembly == "numba":  # the kernel reads xi itself: no product cache
            from attnmoe.estimation.families.least_squares.numba_assembly import NumbaAssembly

            self.products, self.numba = None, NumbaAssembly(self)
            return
        cache = R * n_pad * self.U * X.element_size() <= PRODUCT_CACHE_BYTES
        self.products = self._products(self.xi) if cache else None  # (R, n_pad, U)

    def matmul_flops(self, m: int) -> int:
        """FLOPs of the matrix products of one :meth:`hessian` call on ``m`` replicates:
        2 n_pad (E + kv F + 2 k F) each (C x products, the gradient, the logits u and z), with E
        the (pair, product) entries formed: Q U on the torch path, only those the Hessian reads
        with ``assembly="numba"``; what the benchmarks divide by the call's time to compare it
        with a GEMM."""
        n_pad, F, k = self.xi.shape[1], self.xi.shape[-1], self.layout.n_experts
        kv = 2 * k - self.n_ref
        entries = self.qi.numel() * self.U if self.numba is None else self.numba.n_entries
        return 2 * n_pad * (entries + kv * F + 2 * k * F) * m

    def _products(self, xi: Tensor) -> Tensor:
        """xi_p xi_q for the pairs p <= q ``(..., U)``."""
        return _pair_products(xi, self._pair_runs, xi.new_empty(*xi.shape[:-1], self.U))

    def _matrices(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Gate and expert matrices over xi's columns ``(m, k, F)`` (zeros where unused)."""
        if flat.ndim != 2 or flat.shape[1] != self.layout.n_params:
            raise ValueError(f"flat must be (m, {self.layout.n_params}), got {tuple(flat.shape)}")
        m, (k, F) = flat.shape[0], self.gx_index.shape
        ext = torch.nn.functional.pad(flat, (0, 1))  # (m, P + 1), a zero last
        return (ext.index_select(1, self._gx_flat).view(m, k, F),
                ext.index_select(1, self._ex_flat).view(m, k, F))

    def _blocks(self, flat: Tensor, idx: Tensor | None, order: int):
        """Replicate blocks (rows of ``flat``) small enough for a pass's temporaries to stay in
        cache; yields (rows, the block's passes). Blocking changes no number: each replicate's
        arithmetic is its own."""
        m = flat.shape[0]
        budget = BLOCK_BYTES.get(flat.device.type, BLOCK_BYTES["cpu"])
        length = min(CHUNK, self.xi.shape[1])  # samples in a pass
        size = max(1, budget // (flat.element_size() * length * max(self.qi.numel(), self.U)))
        for lo in range(0, m, size):
            part = slice(lo, lo + size)
            yield part, self._passes(flat[part], part if idx is None else idx[part], order)

    def _passes(self, flat: Tensor, rows: slice | Tensor, order: int):
        """Per pass of :data:`CHUNK` samples of replicates ``rows``: xi ``(m, L, F)``, the
        residual r (0 on the padding) ``(m, L)``, and with ``order >= 1`` v = [s; t]
        ``(m, kv, L)``, with ``order == 2`` also w and sigma'' ``(m, k, L)`` and the feature
        products ``(m, L, U)``."""
        G, E = self._matrices(flat)
        normalization, expert, nr = self.layout.normalization, self.layout.expert.name, self.n_ref
        for lo in range(0, self.xi.shape[1], CHUNK):
            cols = slice(lo, lo + CHUNK)
            xi = self._rows(self.xi[:, cols], rows)  # (m, L, F)
            y = self._rows(self.y[:, cols], rows)
            u = torch.bmm(G, xi.transpose(1, 2))  # (m, k, L)
            z = torch.bmm(E, xi.transpose(1, 2))
            w = torch.softmax(u, dim=1) if normalization == "softmax" else torch.sigmoid(u)
            h, dh, *d2h = _activation(expert, z, second=order == 2)
            f = (w * h).sum(1)  # (m, L)
            r = (f - y) * self.mask[cols]
            if order == 0:
                yield xi, r, None, None
                continue
            s = (w * (h - f.unsqueeze(1)))[:, nr:] if normalization == "softmax" else h * w * (1.0 - w)
            v = torch.cat([s, w * dh], 1)  # (m, kv, L)
            if order == 1:
                yield xi, r, v, None
                continue
            if self.products is None:
                products = self._products(xi)
            else:
                products = self._rows(self.products[:, cols], rows)
            yield xi, r, v, (w, d2h[0], products)

    @staticmethod
    def _rows(t: Tensor, rows: slice | Tensor) -> Tensor:
        """Rows ``rows`` of ``t``: a view for a slice, a row copy (index_select) for indices."""
        return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)`` (the numba loss kernel with ``assembly="numba"``)."""
        if self.numba is not None:
            return self.numba.loss(flat, idx)
        loss = flat.new_empty(flat.shape[0])
        for part, passes in self._blocks(flat, idx, 0):
            loss[part] = sum(r.square().sum(-1) for _, r, _, _ in passes) / self.n
        return loss

    def value_and_grad(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Losses ``(m,)`` and gradients ``(m, P)`` from the closed form (module docstring)."""
        m = flat.shape[0]
        loss, grad = flat.new_empty(m), flat.new_empty(m, self.grad_len)
        for part, passes in self._blocks(flat, idx, 1):
            lo, gr = 0.0, 0.0
            for xi, r, v, _ in passes:
                lo = lo + r.square().sum(-1)
                gr = gr + torch.bmm(((2.0 / self.n) * r).unsqueeze(1) * v, xi)  # (m, kv, F)
            loss[part], grad[part] = lo / self.n, gr.flatten(1)
        return loss, grad[:, self.grad_index]

    def jacobian(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """df(x_j)/dtheta ``(m, n, P)``: v_j (x) xi_j read at each parameter's (row, feature)."""
        J = []
        for _, passes in self._blocks(flat, idx, 1):
            parts = [v.transpose(1, 2).unsqueeze(-1) * xi.unsqueeze(2) for xi, _, v, _ in passes]
            J.append(torch.cat(parts, 1)[:, : self.n].flatten(2)[..., self.grad_index])
        return torch.cat(J, 0)

    def hessian(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Losses ``(m,)``, gradients ``(m, P)`` and Hessians ``(m, P, P)``: per pass, the
        coefficients C ``(m, Q, L)`` times the feature products ``(m, L, U)`` (module docstring);
        with ``assembly="numba"`` the generated kernel (module docstring, "Assembly")."""
        if self.numba is not None:
            return self.numba(flat, idx)
        m, c, nr = flat.shape[0], 2.0 / self.n, self.n_ref
        kg = self.layout.n_experts - nr
        softmax = self.layout.normalization == "softmax"
        qi, ql, qg = self.qi, self.ql, self.n_gate_pairs
        loss, grad = flat.new_empty(m), flat.new_empty(m, self.grad_len)
        M = flat.new_empty(m, qi.numel() * self.U)
        for part, passes in self._blocks(flat, idx, 2):
            lo, gr, mm = 0.0, 0.0, 0.0
            for xi, r, v, (w, d2h, products) in passes:
                lo = lo + r.square().sum(-1)
                e = (c * r).unsqueeze(1)  # (m, 1, L)
                gr = gr + torch.bmm(e * v, xi)  # (m, kv, F)
                if softmax:  # C = v (x) (c v - a) - a (x) v, a = e w on the gate rows
                    a = e * w[:, nr:]  # (m, kg, L)
                    y = c * v
                    y[:, :kg] -= a
                    C = v.index_select(1, qi) * y.index_select(1, ql)  # (m, Q, L)
                    C[:, :qg].addcmul_(a.index_select(1, qi[:qg]), v.index_select(1, ql[:qg]), value=-1.0)
                    diag = torch.cat([v[:, :kg], v[:, kg + nr :], w * d2h], 1)
                else:
                    C = (c * v).index_select(1, qi) * v.index_select(1, ql)
                    diag = torch.cat([v[:, :kg] * (1.0 - 2.0 * w), v[:, kg:] * (1.0 - w), w * d2h], 1)
                C[:, self.diag_pairs] += e * diag
                mm = mm + torch.bmm(C, products)  # (m, Q, U)
            loss[part], grad[part], M[part] = lo / self.n, gr.flatten(1), mm.flatten(1)
        return loss, grad[:, self.grad_index], M[:, self.hess_index]

