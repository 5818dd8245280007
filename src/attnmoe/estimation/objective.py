"""The least-squares objective of an MoE regression with its gradient and Jacobian in closed form.

For replicate r with inputs x_rj (j = 1..n) and free parameters theta_r (layout of
:class:`attnmoe.moe.ParameterLayout`), arXiv 2410.11222's least-squares criterion is

    L_r(theta) = (1/n) sum_j (f(x_rj; theta) - y_rj)^2,    f(x) = sum_i w_i(x) h_i(x).

Both the gating logits and the expert pre-activations are linear in the parameters once the
inputs are expanded into fixed features (computed once per fit):

    u_ij = <G_i, phi(x_j)>   phi(x) = [x_p x_q (p <= q; times 2 for p < q), x, 1]  (the parts
                                       the gate uses: A's upper triangle, b, c)
    z_ij = <E_i, psi(x_j)>   psi(x) = [x, 1]                                       (a, alpha)

(the factor 2: an upper-triangle entry t_pq of the symmetric A_i enters x^T A_i x twice).
With w = softmax_i(u) (row i = 0 fixed at zero) or w = sigmoid(u), h = sigma(z), residual
e_j = (2/n)(f_j - y_j), the gradient is

    dL/dE_i = sum_j e_j w_ij sigma'(z_ij) psi(x_j)
    dL/dG_i = sum_j e_j w_ij (h_ij - f_j) phi(x_j)        (softmax)
    dL/dG_i = sum_j e_j h_ij w_ij (1 - w_ij) phi(x_j)     (sigmoid weights)

and the Jacobian df_j/dtheta has the same terms without e_j. The Hessian is

    H = (2/n) sum_j [ J_j J_j^T + r_j d^2 f_j / dtheta^2 ],   r_j = f_j - y_j,

whose second-order part needs d^2 f / du du, du dz, dz dz (per sample; delta = Kronecker):

    softmax,  s_i = w_i (h_i - f):
      d2f/du_i du_l = delta_il s_i - w_i s_l - w_l s_i
      d2f/du_l dz_i = delta_il w_i h'_i - w_l w_i h'_i
      d2f/dz_i dz_l = delta_il w_i h''_i
    sigmoid weights,  s_i = h_i w_i (1 - w_i):
      d2f/du_i du_l = delta_il s_i (1 - 2 w_i)
      d2f/du_l dz_i = delta_il w_i (1 - w_i) h'_i
      d2f/dz_i dz_l = delta_il w_i h''_i

each times phi phi^T, phi psi^T or psi psi^T. The cross terms of the softmax are products of
(n, k F) matrices, so a Hessian costs a few times J^T J (:meth:`LeastSquaresObjective.hessian`;
tested against ``torch.func.hessian`` of the autograd loss).

Batch-position invariance. Vectorised element-wise kernels (exp, sigmoid, tanh, erf) round
the last, partial vector of a tensor differently from the body, so a replicate's numbers could
depend on where it sits in the batch. The sample axis is therefore padded to a multiple of
:data:`PAD` with zero-weight points: every replicate's row then has the same layout wherever it
sits, and a replicate's loss, gradient and Hessian are bitwise the same alone or in any batch
(at one intra-op thread; tests). Every quantity is an ``(R, k, n)``
tensor and two batched matmuls, so one loss + gradient is about fifteen tensor operations
without an autograd graph. :func:`attnmoe.estimation.optim.value_and_grad` uses this path when
the objective provides it; the autograd path through :meth:`ParameterLayout.forward` is the
reference the tests compare against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnmoe.moe import ParameterLayout

__all__ = ["PAD", "LeastSquaresObjective", "padded", "rowwise"]

#: the sample axis is padded to a multiple of PAD (a multiple of every CPU vector width)
PAD = 64


def padded(length: int) -> int:
    """``length`` rounded up to a multiple of :data:`PAD`."""
    return -(-length // PAD) * PAD


def rowwise(fn, x: Tensor) -> Tensor:
    """``fn`` applied element-wise to ``x`` ``(m, P)`` with each row padded to a multiple of
    :data:`PAD`, so row r's values do not depend on m or on r (see the module docstring)."""
    m, P = x.shape
    wide = x.new_zeros(m, padded(P))
    wide[:, :P] = x
    return fn(wide)[:, :P]


def _activation(name: str, z: Tensor, second: bool = False) -> tuple[Tensor, ...]:
    """sigma(z), sigma'(z) (and sigma''(z) with ``second``) of an expert activation."""
    zero = torch.zeros_like(z)
    if name == "linear":
        out: tuple[Tensor, ...] = (z, torch.ones_like(z), zero)
    elif name == "sigmoid":
        h = torch.sigmoid(z)
        dh = h * (1.0 - h)
        out = (h, dh, dh * (1.0 - 2.0 * h))
    elif name == "tanh":
        h = torch.tanh(z)
        dh = 1.0 - h * h
        out = (h, dh, -2.0 * h * dh)
    elif name == "gelu":  # exact GELU: z Phi(z); ' = Phi + z phi; '' = phi (2 - z^2)
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
        out = (z * cdf, cdf + z * pdf, pdf * (2.0 - z * z))
    elif name == "relu":
        out = (torch.relu(z), (z > 0).to(z.dtype), zero)
    else:
        raise ValueError(f"no closed-form derivative for expert {name!r}")
    return out if second else out[:2]


def _block_outer(coef: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """sum_j coef[m, i, j] a[m, j, :]^T b[m, j, :] ``(m, k, Fa, Fb)`` for coef ``(m, k, n)``.

    With Fa Fb odd, every other output block would start off a 16-byte boundary and be rounded
    differently by the batched matmul; a zero column of b keeps every block aligned (sliced off),
    so a replicate's value does not depend on its place in the batch."""
    Fb = b.shape[-1]
    if a.shape[-1] * Fb % 2:
        b = torch.cat([b, b.new_zeros(*b.shape[:-1], 1)], -1)
    out = torch.matmul((coef.unsqueeze(-1) * a.unsqueeze(1)).transpose(-1, -2), b.unsqueeze(1))
    return out[..., :Fb]


class LeastSquaresObjective:
    """Per-replicate mean squared error of a MoE regression, value/gradient/Jacobian in closed form.

    Callable as an :data:`attnmoe.estimation.optim.Objective` (``flat (m, P), idx -> (m,)``).

    Args:
        layout: parametrisation of the fitted model.
        X: inputs ``(R, n, d)``.
        y: responses ``(R, n)``.
    """

    def _set_data(self, layout: ParameterLayout, X: Tensor, y: Tensor) -> None:
        """Check shapes; keep the layout, n, and X, y and a mask padded to a multiple of
        :data:`PAD` with zero-weight points (module docstring)."""
        if X.ndim != 3 or y.shape != X.shape[:2] or X.shape[2] != layout.dim:
            raise ValueError(
                f"X must be (R, n, {layout.dim}) and y (R, n); got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        self.layout = layout
        R, n, d = X.shape
        self.n = n
        pad = padded(n) - n  # zero-weight points
        self.mask = torch.cat([X.new_ones(n), X.new_zeros(pad)])  # (n_pad,)
        self.y = torch.cat([y.to(X.dtype), X.new_zeros(R, pad)], 1)  # (R, n_pad)
        self.X = torch.cat([X, X.new_zeros(R, pad, d)], 1)  # (R, n_pad, d)

    def __init__(self, layout: ParameterLayout, X: Tensor, y: Tensor) -> None:
        self._set_data(layout, X, y)
        if not layout.gate.closed_form:
            raise ValueError(
                f"gate {layout.gate.name!r} has no closed-form objective; use "
                "attnmoe.estimation.fit.least_squares_objective (its autograd path)"
            )
        R, n, d = X.shape
        pad = padded(n) - n
        X = self.X
        iu = torch.triu_indices(d, d)
        features = {
            "A": X[..., iu[0]] * X[..., iu[1]] * torch.where(iu[0] == iu[1], 1.0, 2.0).to(X),
            "b": X,
            "c": X.new_ones(R, n + pad, 1),
            "a": X,
            "alpha": X.new_ones(R, n + pad, 1),
        }
        gate_names, expert_names = layout.gate.param_names, layout.expert.param_names
        self.phi = torch.cat([features[name] for name in gate_names], -1)  # (R, n_pad, Fg)
        self.psi = torch.cat([features[name] for name in expert_names], -1)  # (R, n_pad, d + 1)
        # flat index of every (expert, feature) entry of the gate matrix G and expert matrix E
        index: dict[str, Tensor] = {}
        for name, start, m, width in layout.blocks:
            index[name] = start + torch.arange(m * width).reshape(m, width)
        self.g_index = torch.cat([index[name] for name in gate_names], -1)  # (k - n_ref, Fg)
        self.e_index = torch.cat([index[name] for name in expert_names], -1)  # (k, d + 1)
        order = torch.cat([self.g_index.flatten(), self.e_index.flatten()])
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(order.numel())  # [grad G, grad E] -> flat order
        self.n_ref = layout.n_ref

    def _forward(self, flat: Tensor, idx: Tensor | None) -> tuple[Tensor, ...]:
        """Weights w, expert outputs h, sigma'(z), sigma''(z) ``(m, k, n_pad)``, f ``(m, n_pad)``
        and the features."""
        if flat.ndim != 2 or flat.shape[1] != self.layout.n_params:
            raise ValueError(f"flat must be (m, {self.layout.n_params}), got {tuple(flat.shape)}")
        phi, psi = (self.phi, self.psi) if idx is None else (self.phi[idx], self.psi[idx])
        G = flat[:, self.g_index]  # (m, k - n_ref, Fg)
        if self.n_ref:
            G = torch.cat([G.new_zeros(G.shape[0], self.n_ref, G.shape[2]), G], 1)  # (m, k, Fg)
        u = torch.bmm(G, phi.transpose(1, 2))  # (m, k, n)
        z = torch.bmm(flat[:, self.e_index], psi.transpose(1, 2))  # (m, k, n)
        w = torch.softmax(u, dim=1) if self.layout.normalization == "softmax" else torch.sigmoid(u)
        h, dh, d2h = _activation(self.layout.expert.name, z, second=True)
        f = (w * h).sum(1)  # (m, n_pad)
        return w, h, dh, d2h, f, phi, psi

    def _residual(self, f: Tensor, idx: Tensor | None) -> Tensor:
        """r = (f - y) on real points, 0 on the padding ``(m, n_pad)``."""
        y = self.y if idx is None else self.y[idx]
        return (f - y) * self.mask

    def _gate_sensitivity(self, w: Tensor, h: Tensor, f: Tensor) -> Tensor:
        """df/du ``(m, k - n_ref, n)`` of the free gating rows."""
        if self.layout.normalization == "softmax":
            s = w * (h - f.unsqueeze(1))
        else:
            s = h * w * (1.0 - w)
        return s[:, self.n_ref :]

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)``."""
        return self._residual(self._forward(flat, idx)[4], idx).square().sum(-1) / self.n

    def value_and_grad(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Losses ``(m,)`` and gradients ``(m, P)`` from the closed form (module docstring)."""
        w, h, dh, _, f, phi, psi = self._forward(flat, idx)
        r = self._residual(f, idx)  # (m, n_pad)
        e = (2.0 / self.n) * r.unsqueeze(1)  # (m, 1, n_pad)
        grad_g = torch.bmm(e * self._gate_sensitivity(w, h, f), phi)  # (m, k - n_ref, Fg)
        grad_e = torch.bmm(e * w * dh, psi)  # (m, k, d + 1)
        m = flat.shape[0]
        grad = torch.cat([grad_g.reshape(m, -1), grad_e.reshape(m, -1)], 1)[:, self.inverse]
        return r.square().sum(-1) / self.n, grad

    def _jacobian_parts(self, w: Tensor, h: Tensor, dh: Tensor, f: Tensor, phi: Tensor,
                        psi: Tensor) -> tuple[Tensor, Tensor]:
        """Jacobian columns of the gate ``(m, n_pad, (k - n_ref) Fg)`` and experts
        ``(m, n_pad, k (d + 1))``, zero on the padding, in [G, E] order."""
        m, n_pad = f.shape
        mask = self.mask.view(1, -1, 1, 1)
        jg = self._gate_sensitivity(w, h, f).transpose(1, 2).unsqueeze(-1) * phi.unsqueeze(2) * mask
        je = (w * dh).transpose(1, 2).unsqueeze(-1) * psi.unsqueeze(2) * mask  # (m, n_pad, k, d+1)
        return jg.reshape(m, n_pad, -1), je.reshape(m, n_pad, -1)

    def jacobian(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """df(x_j)/dtheta ``(m, n, P)``."""
        w, h, dh, _, f, phi, psi = self._forward(flat, idx)
        jg, je = self._jacobian_parts(w, h, dh, f, phi, psi)
        return torch.cat([jg, je], -1)[:, : self.n, self.inverse]

    def hessian(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Losses ``(m,)``, gradients ``(m, P)`` and Hessians ``(m, P, P)`` (module docstring)."""
        w, h, dh, d2h, f, phi, psi = self._forward(flat, idx)
        m, k, _ = w.shape
        r = self._residual(f, idx)  # (m, n_pad)
        e = (2.0 / self.n) * r  # (m, n_pad)
        jg, je = self._jacobian_parts(w, h, dh, f, phi, psi)
        J = torch.cat([jg, je], -1)  # (m, n_pad, P) in [G, E] order
        if J.shape[-1] % 2:
            # with P odd, every other replicate's rows of grad and H would start off a 16-byte
            # boundary and MKL's bmm rounds those differently: a zero column makes P even, so a
            # replicate's result does not depend on its place in the batch (dropped by inv below)
            J = torch.cat([J, J.new_zeros(*J.shape[:-1], 1)], -1)
        grad = torch.bmm(e.unsqueeze(1), J).squeeze(1)
        H = (2.0 / self.n) * torch.bmm(J.transpose(1, 2), J)  # Gauss-Newton part
        # second-order part sum_j e_j d2f_j (module docstring); gate rows are the free ones
        nr, Fg, Fe = self.n_ref, phi.shape[2], psi.shape[2]
        P = jg.shape[-1] + je.shape[-1]  # without the padding column
        kg = k - nr
        Pg = kg * Fg
        ew = e.unsqueeze(1) * w  # (m, k, n_pad)
        if self.layout.normalization == "softmax":
            s = w * (h - f.unsqueeze(1))
            diag_gg = _block_outer((e.unsqueeze(1) * s)[:, nr:], phi, phi)
            diag_ge = _block_outer((ew * dh)[:, nr:], phi, psi)
            # cross terms: Wphi[j, (i, p)] = e_j w_ij phi_jp against the Jacobian columns
            wphi = (ew[:, nr:].transpose(1, 2).unsqueeze(-1) * phi.unsqueeze(2)).reshape(m, -1, Pg)
            cross = torch.bmm(wphi.transpose(1, 2), jg)  # (m, Pg, Pg)
            H[:, :Pg, :Pg] -= cross + cross.transpose(1, 2)
            H[:, :Pg, Pg:P] -= torch.bmm(wphi.transpose(1, 2), je)
        else:
            s = h * w * (1.0 - w)
            diag_gg = _block_outer(e.unsqueeze(1) * s * (1.0 - 2.0 * w), phi, phi)
            diag_ge = _block_outer(ew * (1.0 - w) * dh, phi, psi)
        diag_ee = _block_outer(ew * d2h, psi, psi)
        for i in range(kg):
            g0, e0 = i * Fg, Pg + (i + nr) * Fe
            H[:, g0 : g0 + Fg, g0 : g0 + Fg] += diag_gg[:, i]
            H[:, g0 : g0 + Fg, e0 : e0 + Fe] += diag_ge[:, i]
        for i in range(k):
            e0 = Pg + i * Fe
            H[:, e0 : e0 + Fe, e0 : e0 + Fe] += diag_ee[:, i]
        H[:, Pg:P, :Pg] = H[:, :Pg, Pg:P].transpose(1, 2)  # the gate-expert block, mirrored
        inv = self.inverse
        return r.square().sum(-1) / self.n, grad[:, inv], H[:, inv][:, :, inv]
