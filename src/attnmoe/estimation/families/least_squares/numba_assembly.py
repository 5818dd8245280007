"""Opt-in numba assembly of the least-squares loss, gradient and Hessian (``assembly="numba"``).

The formulas are those of :mod:`attnmoe.estimation.families.least_squares.objective` (its module
docstring, from arXiv 2410.11222's least-squares criterion): per replicate and sample j, the
logits u_j = G xi_j and z_j = E xi_j, w = softmax(u) (reference rows fixed at u = 0), h = sigma(z),
the residual r_j = f_j - y_j, e_j = (2/n) r_j, v_j = [s_j; t_j], the (Q,) pair coefficients
C_j = v (x) (c v - a) - a (x) v + e D_j and the (U,) feature products xi_jp xi_jq; then

    grad = sum_j e_j v_j (x) xi_j,     M = sum_j C_j (x) (xi_j xi_j^T)_{p <= q}   (Q, U)

and the same gathers (``grad_index``, ``hess_index``) into the (P,) gradient and (P, P) Hessian.
The torch path forms C and the products as (m, Q, L) and (m, L, U) tensors and multiplies them
with ``bmm``; at these sizes (Q, U ~ 15..30) it runs at about a tenth of a GEMM's rate, the
element-wise passes and their memory traffic dominating. Here one compiled loop per replicate
keeps a block of :data:`BLOCK` samples in L1 and goes through it phase by phase:

    logits (u - max u, -z) -> exp of the block (polynomial below) -> w, h, h', h'', f, r, v, C
    -> the block's features XB (F, L) and the products PT (NP, L) the Hessian reads
    -> the product function: M[t] += sum_j C[q, j] PT[u, j] for the needed (q, u) entries,
       grad[a, p] += sum_j EV[a, j] XB[p, j]

Only the (pair, product) entries that the gathers read are formed: a pair of gate rows needs the
gate features' products, a pair of expert rows the experts', a mixed pair the mixed ones (an
exact-specified monomial-sigmoid layout: 138 of the 330 (Q, U) entries). The product function
(:data:`_PRODUCTS`, its own compiled function) computes them as dot products over the block's
samples, in tiles of :data:`TILE` entries sharing one loop, so that every loaded row feeds
several products; compiled with reassociation and contraction (:data:`PRODUCT_FASTMATH`) each
loop vectorises along the samples with FMA into register accumulators: it ran at 0.39 us per
64-sample block for those 138 entries, about 45 GFLOP/s, where the first version's row-by-row
update of an (Q, U) block held in memory (kernel version 1) took 1.8 us, bound by its stores.
The order of a dot product's additions is the compiled loop's (a tree over the vector lanes),
fixed for a given machine: a replicate's numbers are still the same alone or anywhere in a batch
(every replicate runs the same code), but kernels of different versions, or machines with other
vector widths, round the gradient and Hessian differently (:data:`KERNEL_VERSION` is recorded
in ``study.json``).

Why the code is generated. LLVM vectorises and unrolls a loop only when its trip count and
strides are known; with k, n_ref, F, Q, U and the pair tables (qi, ql, ua, ub, diag_pairs) as
constants in the source, every per-sample loop over experts, pairs and features is unrolled into
straight-line code over the block (structure of arrays). A generic kernel with these sizes as
arguments ran 2-4x slower (the feasibility prototype's variants with runtime sizes, same run).
The replicate's gate and expert coefficients are read into scalars once (LLVM cannot hoist
array reads out of the sample loops: it cannot tell numba's arrays apart). Measured speed:
``benchmarks/bench_assembly.py``, ``benchmarks/bench_fit.py --parts h --assembly numba``. The
source is generated per layout and compiled once per process (a few seconds; :func:`compiled`
caches by source text).

The exponential. ``math.exp`` does not vectorise in numba, so exp is evaluated by own code:
x clamped to [-700, 700] (NaN passes through), x = t ln2 + r with t = round(x / ln2) and
r = (x - t LN2HI) - t LN2LO (Cody-Waite: LN2HI has 21 trailing zero bits, so t LN2HI is exact
for |t| <= 1010), exp(r) by the degree-13 Taylor polynomial in Horner form on |r| <= ln2/2
(truncation error r^14 / 14! <= 4.3e-18, below a twentieth of an ulp of exp(r) >= 0.70), and 2^t
built from its exponent bits (exact; 2^t is normal for |t| <= 1010). The result is within
:data:`EXP_ULP` ulp of numpy.exp on [-700, 700] (measured: max 1.0, mean 0.11 ulp on a 1e-3 grid;
tests/test_numba_assembly.py). Outside, the clamp gives exp(-700) ~ 1e-304 instead of a smaller
number: a softmax weight or sigmoid value off by at most 1e-304 absolute.

Floating-point mode. The kernel is compiled with contraction (``fastmath={"contract"}``: a * b + c
may become one FMA) and without reassociation, so every sum keeps its order; the product
function adds reassociation (above). Contraction made the kernel 12-15 % faster at n = 1e4 (and
its exp's Horner steps single-rounded). The trust region compares the loss at the current point
(from :meth:`NumbaAssembly.__call__`) with losses at trial points (:meth:`NumbaAssembly.loss`):
near convergence f - f_trial is a few ulp of f, so the two must be one arithmetic (objective.py,
"Assembly"). A separate loss-only kernel (kernel version 1 had one, strict IEEE so that its text
up to the residual rounded as the assembly's) would not be that under contraction, since LLVM fuses
a product into a sum depending on the product's other uses; so the loss is the same compiled kernel
with ``derivs=False``: every block computes the same element-wise phase with the same uses (C and
EV are formed either way) and only the products after it are skipped (the loss costs about 60 %
of the whole kernel). Since every replicate runs the same code on its own data, a replicate's
outputs are bitwise the same alone or anywhere in a batch (tests).

Scope: softmax normalisation, every gate with ``closed_form`` (logits linear in the features:
linear, polynomial, monomial), experts ``linear`` and ``sigmoid``; float64 on the CPU, one
thread per call (studies run one process per core). Anything else is refused by
:func:`check_supported` with a one-line ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ASSEMBLY_VERSION", "BLOCK", "EXPERTS", "EXP_ULP", "KERNEL_VERSION", "NumbaAssembly", "TILE", "check_supported", "compiled",
           "kernel_source", "poly_exp"]

#: expert activations the kernel implements (sigma, sigma', sigma'')
EXPERTS: tuple[str, ...] = ("linear", "sigmoid")

#: samples per block (= attnmoe.estimation.families.common.PAD, so the padded n is a multiple)
BLOCK = 64

#: version of the kernel's arithmetic, recorded in study.json with assembly "numba": 1 (session
#: 11) strict IEEE, M accumulated row by row in sample order, the gradient in 8 lanes, a separate
#: loss kernel; 2 sums both as the product function's vectorised dot products, contracts a * b + c
#: to FMA and takes the loss from the same kernel (module docstring): within a few ulp of version 1
KERNEL_VERSION = 2

#: version of the numba path's arithmetic, recorded in study.json as ``assembly_version`` with
#: assembly "numba": 1 and 2 (kernel versions 1 and 2 in the batched trust region of
#: solvers/newton.py), 3 (session 13) kernel version 2 in the compiled per-replicate iteration of
#: :mod:`~attnmoe.estimation.families.least_squares.numba_loop` (the same iteration, its own
#: rounding: SciPy's LAPACK for the eigendecompositions, scalar reductions)
ASSEMBLY_VERSION = 3

#: the polynomial exp is within this many ulp of numpy.exp on [-700, 700] (module docstring)
EXP_ULP = 1

#: the kernel's floating-point flags: contraction (FMA) only, no reassociation (module docstring)
FASTMATH: bool | set[str] = {"contract"}

#: the product function's flags: reassociation (the block's dot products vectorise along the
#: samples) and contraction (FMA); module docstring
PRODUCT_FASTMATH: set[str] = {"reassoc", "contract"}

_INSTALL = "assembly='numba' needs numba: pip install numba (or pip install 'attnmoe[fast]')"


def _numba() -> Any:
    """The numba module, imported on first use (a one-line ImportError naming the extra)."""
    try:
        import numba
    except ImportError as err:
        raise ImportError(_INSTALL) from err
    return numba


def check_supported(layout: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> None:
    """Raise a one-line ``ValueError`` unless the numba assembly covers ``layout`` on ``device``
    in ``dtype`` (module docstring, "Scope")."""
    what = "assembly='numba' supports softmax gates with a closed form, experts linear/sigmoid, float64 on the CPU"
    if torch.device(device).type != "cpu":
        raise ValueError(f"{what}; got device {torch.device(device).type!r} (use assembly='torch' on a GPU)")
    if dtype != torch.float64:
        raise ValueError(f"{what}; got dtype {dtype}")
    if layout.normalization != "softmax":
        raise ValueError(f"{what}; got normalization {layout.normalization!r}")
    if not layout.gate.closed_form:
        raise ValueError(f"{what}; got gate {layout.gate.name!r}")
    if layout.expert.name not in EXPERTS:
        raise ValueError(f"{what}; got expert {layout.expert.name!r}")


# ---------------------------------------------------------------- exp (module docstring)

_EXP = """\
for i in range({N}):
    xx = ARG[i]
    xx = -700.0 if xx < -700.0 else xx
    xx = 700.0 if xx > 700.0 else xx
    t = math.floor(xx * 1.44269504088896338700e+00 + 0.5)
    rr = (xx - t * 6.93147180369123816490e-01) - t * 1.90821492927058770002e-10
    p = 1.0 / 6227020800.0
    p = p * rr + 1.0 / 479001600.0
    p = p * rr + 1.0 / 39916800.0
    p = p * rr + 1.0 / 3628800.0
    p = p * rr + 1.0 / 362880.0
    p = p * rr + 1.0 / 40320.0
    p = p * rr + 1.0 / 5040.0
    p = p * rr + 1.0 / 720.0
    p = p * rr + 1.0 / 120.0
    p = p * rr + 1.0 / 24.0
    p = p * rr + 1.0 / 6.0
    p = p * rr + 0.5
    p = p * rr + 1.0
    p = p * rr + 1.0
    EX[i] = p
    BITS[i] = (np.int64(t) + 1023) << 52
for i in range({N}):
    EX[i] = EX[i] * FO[i]
"""


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


def poly_exp(x: np.ndarray) -> np.ndarray:
    """The kernel's exp (the same generated text, :data:`_EXP`) over a 1-D float64 array: the
    function tests/test_numba_assembly.py checks against numpy.exp."""
    src = ("def poly_exp(ARG):\n    N = ARG.shape[0]\n    EX = np.empty(N)\n"
           "    BITS = np.empty(N, dtype=np.int64)\n    FO = BITS.view(np.float64)\n"
           + _indent(_EXP.format(N="N"), 4) + "\n    return EX\n")
    return compiled(src, "poly_exp")(np.ascontiguousarray(x, dtype=np.float64))


# ---------------------------------------------------------------- the generated kernel

_KERNEL = """\
def kern(rows, xi, y, mask, G, E, c, invn, derivs, loss, grad, M):
    n_pad = xi.shape[1]
    ARG = np.empty(2 * {K} * {L})
    EX = np.empty(2 * {K} * {L})
    BITS = np.zeros(2 * {K} * {L}, dtype=np.int64)
    FO = BITS.view(np.float64)
    RES = np.empty({L})
    EV = np.empty(({KV}, {L}))
    C = np.empty(({Q}, {L}))
    PT = np.empty(({NP}, {L}))
    XB = np.empty(({F}, {L}))
    MN = np.empty({NM})
    GL = np.empty({NG})
    for r in range(rows.shape[0]):
        d = rows[r]
{HOIST}
        MN[:] = 0.0
        GL[:] = 0.0
        lo = 0.0
        for j0 in range(0, n_pad, {L}):
            # features (into XB), logits (ARG[i L + j] = u_i - max u, ARG[(K + i) L + j] = -z_i)
            for j in range({L}):
{LOGITS}
            # exp of the block (vectorised polynomial; module docstring)
{EXP}
            # w, h, h', h'', f, r, v, C (element-wise over the block)
            for j in range({L}):
{COEFFS}
            for j in range({L}):
                lo += RES[j] * RES[j]
            if derivs:
                # the products the Hessian reads, sample-contiguous
                for j in range({L}):
{PRODUCTS}
                # M += C P^T and grad += EV XB^T over the block: tiled dot products (module docstring)
                products(C, PT, EV, XB, MN, GL)
        loss[r] = lo * invn
        if derivs:
            for t in range({NM}):
                M[r, t] = MN[t]
            for t in range({NG}):
                grad[r, t] = GL[t]
"""


_PRODUCTS = """\
def products(C, PT, EV, XB, MN, GL):
{BODY}
"""


def kernel_source(k: int, n_ref: int, F: int, gate_cols: list[int], expert_cols: list[int], qi: list[int],
                  ql: list[int], ua: list[int], ub: list[int], diag_pairs: list[int], expert: str,
                  needed: list[list[int]]) -> tuple[str, str, list[tuple[int, int]]]:
    """The numba sources of the assembly for one layout (every size and table a constant): the
    kernel, its product function and the (pair, product) of each of the kernel's M columns.

    Args:
        k, n_ref: experts and reference (fixed-logit) gate rows; F: columns of xi.
        gate_cols, expert_cols: the columns of xi the gate and the experts read.
        qi, ql: the Q pairs i <= l of v's rows; ua, ub: the U pairs p <= q of xi's columns.
        diag_pairs: the pairs receiving the second-order diagonals (objective.py).
        expert: ``"linear"`` or ``"sigmoid"``.
        needed: per pair q, the products u that the Hessian's entries read (sorted).
    """
    L, kg = BLOCK, k - n_ref
    kv, Q = kg + k, len(qi)
    # the replicate's gate and expert coefficients, read once (LLVM cannot hoist them out of the
    # sample loops: it cannot tell the arrays apart)
    hoist = [f"g{i}_{p} = G[r, {i}, {p}]" for i in range(n_ref, k) for p in gate_cols]
    hoist += [f"e{i}_{p} = E[r, {i}, {p}]" for i in range(k) for p in expert_cols]
    lg = []
    for i in range(k):
        lg.append(f"u{i} = " + (" + ".join(f"g{i}_{p} * x{p}" for p in gate_cols) if i >= n_ref else "0.0"))
        lg.append(f"z{i} = " + " + ".join(f"e{i}_{p} * x{p}" for p in expert_cols))
    lg.append("m = u0")
    lg += [f"m = u{i} if u{i} > m else m" for i in range(1, k)]
    for i in range(k):
        lg += [f"ARG[{i * L} + j] = u{i} - m", f"ARG[{(k + i) * L} + j] = -z{i}"]
    cf = [f"x{i} = EX[{i * L} + j]" for i in range(k)]
    cf.append("S = " + " + ".join(f"x{i}" for i in range(k)))
    for i in range(k):
        cf.append(f"w{i} = x{i} / S")
        if expert == "sigmoid":  # h = 1 / (1 + e^-z), h' = h (1 - h), h'' = h' (1 - 2 h)
            cf += [f"h{i} = 1.0 / (1.0 + EX[{(k + i) * L} + j])", f"dh{i} = h{i} * (1.0 - h{i})",
                   f"d2{i} = dh{i} * (1.0 - 2.0 * h{i})"]
        else:  # h = z, h' = 1, h'' = 0
            cf += [f"h{i} = -ARG[{(k + i) * L} + j]", f"dh{i} = 1.0", f"d2{i} = 0.0"]
    cf.append("f = " + " + ".join(f"w{i} * h{i}" for i in range(k)))
    cf += ["res = (f - y[d, j0 + j]) * mask[j0 + j]", "RES[j] = res"]
    n_exp = (2 if expert == "sigmoid" else 1) * k * L  # linear experts need no exp(-z)
    cf.append("e = c * res")
    cf += [f"v{i} = w{n_ref + i} * (h{n_ref + i} - f)" for i in range(kg)]  # s_i
    cf += [f"v{kg + i} = w{i} * dh{i}" for i in range(k)]  # t_i
    cf += [f"EV[{a}, j] = e * v{a}" for a in range(kv)]
    cf += [f"a{i} = e * w{n_ref + i}" for i in range(kg)]
    cf += [f"y{l_} = c * v{l_}" + (f" - a{l_}" if l_ < kg else "") for l_ in range(kv)]
    # second-order diagonals, in diag_pairs' order: [v[:kg], v[kg + n_ref:], w * h'']
    diag = [f"v{i}" for i in range(kg)] + [f"v{i}" for i in range(kg + n_ref, kv)] + \
           [f"(w{i} * d2{i})" for i in range(k)]
    extra: dict[int, list[str]] = {}
    for term, q in zip(diag, diag_pairs):
        extra.setdefault(q, []).append(f" + e * {term}")
    for q, (i, l_) in enumerate(zip(qi, ql)):
        ex = f"v{i} * y{l_}" + (f" - a{i} * v{l_}" if i < kg else "")
        for t in extra.get(q, []):
            ex = f"({ex}){t}"
        cf.append(f"C[{q}, j] = {ex}")
    # products the Hessian reads (PT rows) and the block's features (XB rows)
    plist = sorted({u for need in needed for u in need})
    prow = {u: t for t, u in enumerate(plist)}
    # the block's features are read once, into XB, beside the logits
    lg = [f"x{p} = xi[d, j0 + j, {p}]" for p in range(F)] + [f"XB[{p}, j] = x{p}" for p in range(F)] + lg
    pr = [f"PT[{t}, j] = XB[{ua[u]}, j] * XB[{ub[u]}, j]" for t, u in enumerate(plist)]
    entries, body = _tiles(needed, prow, kv, F)
    src = _KERNEL.format(
        K=k, KV=kv, Q=Q, NP=len(plist), F=F, NM=len(entries), NG=kv * F, L=L,
        HOIST=_indent("\n".join(hoist), 8), LOGITS=_indent("\n".join(lg), 16),
        EXP=_indent(_EXP.format(N=n_exp), 12), COEFFS=_indent("\n".join(cf), 16), PRODUCTS=_indent("\n".join(pr), 20))
    return src, _PRODUCTS.format(BODY=_indent("\n".join(body), 4)), entries


#: tile of the product function: rows (pairs q, or rows a of EV) x columns (products, or features)
TILE = (3, 4)


def _tiles(needed: list[list[int]], prow: dict[int, int], kv: int, F: int) -> tuple[list[tuple[int, int]], list[str]]:
    """The product function's body: for every needed (pair q, product u) the block's dot product
    sum_j C[q, j] PT[prow[u], j] added to MN[t], and every grad[a, p] = sum_j EV[a, j] XB[p, j]
    added to GL[a F + p]; in tiles of :data:`TILE` dot products sharing one loop over the block
    (each loaded row of C or PT feeds several products). Returns the (q, u) of every MN entry,
    in order, and the lines."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for q, need in enumerate(needed):
        if need:
            groups.setdefault(tuple(need), []).append(q)
    # (rows, columns, the dot product's term, where its sum goes); the gradient last
    jobs = [(qs, list(us), lambda q, u: f"C[{q}, j] * PT[{prow[u]}, j]", None) for us, qs in groups.items()]
    jobs.append((list(range(kv)), list(range(F)), lambda a, p: f"EV[{a}, j] * XB[{p}, j]",
                 lambda a, p: f"GL[{a * F + p}]"))
    entries: list[tuple[int, int]] = []
    body: list[str] = []
    tr, tc = TILE
    for rows, cols, term, target in jobs:
        for i0 in range(0, len(rows), tr):
            for c0 in range(0, len(cols), tc):
                tile = [(a, b) for a in rows[i0 : i0 + tr] for b in cols[c0 : c0 + tc]]
                body += [f"s{t} = 0.0" for t in range(len(tile))]
                body.append(f"for j in range({BLOCK}):")
                body += [f"    s{t} += {term(a, b)}" for t, (a, b) in enumerate(tile)]
                if target is None:  # an M entry: the next column of MN
                    body += [f"MN[{len(entries) + t}] += s{t}" for t in range(len(tile))]
                    entries += tile
                else:
                    body += [f"{target(a, b)} += s{t}" for t, (a, b) in enumerate(tile)]
    return entries, body


#: out[r, j] = a[r, index[j]]: the gathers of the gradient and Hessian from the kernel's outputs (a
#: copy, so the numbers are the kernel's; ~5x faster than torch's advanced indexing at R = 64)
_GATHER = """
def gather(a, index, out):
    for r in range(a.shape[0]):
        for j in range(index.shape[0]):
            out[r, j] = a[r, index[j]]
"""


#: compiled functions by source text (one compile per layout and process)
_COMPILED: dict[tuple[str, str, tuple[tuple[str, int], ...]], Callable[..., Any]] = {}


def compiled(source: str, name: str = "kern", fastmath: bool | set[str] = FASTMATH,
             helpers: dict[str, Any] | None = None) -> Callable[..., Any]:
    """``name`` from the generated ``source``, compiled by numba with the floating-point flags
    ``fastmath`` and the compiled ``helpers`` in its namespace (cached by source text, flags and
    helpers; the first call of a new function compiles it, a few seconds for a kernel)."""
    # the helpers are part of the function (the kernel's text calls ``products`` by name only);
    # compiled helpers live in this cache for the process, so their ids identify them
    flags = repr(sorted(fastmath)) if isinstance(fastmath, set) else repr(fastmath)
    key = (source, flags, tuple(sorted((name, id(fn)) for name, fn in (helpers or {}).items())))
    if key not in _COMPILED:
        numba = _numba()
        namespace: dict[str, Any] = {"np": np, "math": math, **(helpers or {})}
        exec(compile(source, f"<attnmoe numba assembly {name}>", "exec"), namespace)  # noqa: S102
        _COMPILED[key] = numba.njit(fastmath=fastmath, error_model="numpy", nogil=True)(namespace[name])
    return _COMPILED[key]


class NumbaAssembly:
    """Loss, gradient and Hessian of a :class:`LeastSquaresObjective` by the generated kernel.

    Args:
        objective: a ``LeastSquaresObjective`` (its data, pair tables and gathers are reused).
    """

    def __init__(self, objective: Any) -> None:
        layout = objective.layout
        check_supported(layout, objective.xi.device, objective.xi.dtype)
        self.objective = objective
        tables = [t.tolist() for t in (objective.gate_cols, objective.expert_cols, objective.qi, objective.ql,
                                       objective.ua, objective.ub, objective.diag_pairs)]
        args = (layout.n_experts, layout.n_ref, objective.xi.shape[-1], *tables)
        Q, U = objective.qi.numel(), objective.U
        hi = objective.hess_index  # (P, P) into (Q, U) flattened
        needed = [sorted(set((hi[hi // U == q] % U).tolist())) for q in range(Q)]
        self.source, products, entries = kernel_source(*args, expert=layout.expert.name, needed=needed)
        helper = compiled(products, "products", PRODUCT_FASTMATH)
        self.kernel = compiled(self.source, helpers={"products": helper})
        self.xi = objective.xi.contiguous().numpy()  # (R, n_pad, F), a view when xi is contiguous
        self.y, self.mask = objective.y.contiguous().numpy(), objective.mask.contiguous().numpy()
        column = {qu: t for t, qu in enumerate(entries)}
        self.hess_index = torch.tensor([[column[(qq, uu)] for qq, uu in zip(qr, ur)]
                                        for qr, ur in zip((hi // U).tolist(), (hi % U).tolist())])  # into M's columns
        self.n_entries = len(entries)
        self._gather = compiled(_GATHER, "gather", False)
        self._h_flat = self.hess_index.flatten().numpy().astype(np.int64)
        self._g_flat = objective.grad_index.numpy().astype(np.int64)
        self.kv = 2 * layout.n_experts - layout.n_ref

    def _inputs(self, flat: Tensor, idx: Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of the data ``(m,)`` and the gate and expert matrices ``(m, k, F)`` as numpy."""
        G, E = self.objective._matrices(flat.detach())  # (m, k, F) each
        rows = np.arange(flat.shape[0], dtype=np.int64) if idx is None else idx.detach().numpy().astype(np.int64)
        return rows, G.contiguous().numpy(), E.contiguous().numpy()

    def _run(self, flat: Tensor, idx: Tensor | None, derivs: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kernel on replicates ``idx`` at ``flat``: losses ``(m,)`` and, with ``derivs``, the
        flat gradients ``(m, kv F)`` and M entries ``(m, n_entries)`` (empty without)."""
        rows, G, E = self._inputs(flat, idx)
        m, n = flat.shape[0], self.objective.n
        if derivs:
            grad, M = np.empty((m, self.kv * self.xi.shape[2])), np.empty((m, self.n_entries))
        else:  # the kernel writes neither
            grad = M = np.empty((0, 0))
        loss = np.empty(m)
        self.kernel(rows, self.xi, self.y, self.mask, G, E, 2.0 / n, 1.0 / n, derivs, loss, grad, M)
        return loss, grad, M

    def loss(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)``, bitwise those of :meth:`__call__`: the same compiled kernel, told to
        skip the products after each block's loss (module docstring, "Floating-point mode")."""
        return torch.from_numpy(self._run(flat, idx, False)[0])

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Losses ``(m,)``, gradients ``(m, P)``, Hessians ``(m, P, P)`` of replicates ``idx``
        (all when None) at ``flat`` ``(m, P)``; float64 on the CPU."""
        loss, grad, M = self._run(flat, idx, True)
        m, P = M.shape[0], self._g_flat.shape[0]
        g, H = np.empty((m, P)), np.empty((m, P * P))
        self._gather(grad, self._g_flat, g)
        self._gather(M, self._h_flat, H)
        return torch.from_numpy(loss), torch.from_numpy(g), torch.from_numpy(H).view(m, P, P)
