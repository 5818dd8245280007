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

and the Jacobian df_j/dtheta has the same terms without e_j. Every quantity is an ``(R, k, n)``
tensor and two batched matmuls, so one loss + gradient is about fifteen tensor operations
without an autograd graph. :func:`attnmoe.estimation.fit.value_and_grad` uses this path when
the objective provides it; the autograd path through :meth:`ParameterLayout.forward` is the
reference the tests compare against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnmoe.moe import ParameterLayout

__all__ = ["LeastSquaresObjective"]


def _activation(name: str, z: Tensor) -> tuple[Tensor, Tensor | float]:
    """sigma(z) and sigma'(z) of an expert activation."""
    if name == "linear":
        return z, 1.0
    if name == "sigmoid":
        h = torch.sigmoid(z)
        return h, h * (1.0 - h)
    if name == "tanh":
        h = torch.tanh(z)
        return h, 1.0 - h * h
    if name == "gelu":  # exact GELU: z Phi(z), derivative Phi(z) + z phi(z)
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        return z * cdf, cdf + z * torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    raise ValueError(f"no closed-form derivative for expert {name!r}")


class LeastSquaresObjective:
    """Per-replicate mean squared error of a MoE regression, value/gradient/Jacobian in closed form.

    Callable as an :data:`attnmoe.estimation.fit.Objective` (``flat (m, P), idx -> (m,)``).

    Args:
        layout: parametrisation of the fitted model.
        X: inputs ``(R, n, d)``.
        y: responses ``(R, n)``.
    """

    def __init__(self, layout: ParameterLayout, X: Tensor, y: Tensor) -> None:
        if X.ndim != 3 or y.shape != X.shape[:2] or X.shape[2] != layout.dim:
            raise ValueError(
                f"X must be (R, n, {layout.dim}) and y (R, n); got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        self.layout, self.y = layout, y.to(X.dtype)
        R, n, d = X.shape
        iu = torch.triu_indices(d, d)
        features = {
            "A": X[..., iu[0]] * X[..., iu[1]] * torch.where(iu[0] == iu[1], 1.0, 2.0).to(X),
            "b": X,
            "c": X.new_ones(R, n, 1),
            "a": X,
            "alpha": X.new_ones(R, n, 1),
        }
        gate_names, expert_names = layout.gate.param_names, layout.expert.param_names
        self.phi = torch.cat([features[name] for name in gate_names], -1)  # (R, n, Fg)
        self.psi = torch.cat([features[name] for name in expert_names], -1)  # (R, n, d + 1)
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
        """Weights w, expert outputs h, sigma'(z) ``(m, k, n)``, f ``(m, n)`` and the features."""
        if flat.ndim != 2 or flat.shape[1] != self.layout.n_params:
            raise ValueError(f"flat must be (m, {self.layout.n_params}), got {tuple(flat.shape)}")
        phi, psi = (self.phi, self.psi) if idx is None else (self.phi[idx], self.psi[idx])
        G = flat[:, self.g_index]  # (m, k - n_ref, Fg)
        if self.n_ref:
            G = torch.cat([G.new_zeros(G.shape[0], self.n_ref, G.shape[2]), G], 1)  # (m, k, Fg)
        u = torch.bmm(G, phi.transpose(1, 2))  # (m, k, n)
        z = torch.bmm(flat[:, self.e_index], psi.transpose(1, 2))  # (m, k, n)
        w = torch.softmax(u, dim=1) if self.layout.normalization == "softmax" else torch.sigmoid(u)
        h, dh = _activation(self.layout.expert.name, z)
        f = (w * h).sum(1)  # (m, n)
        return w, h, dh, f, phi, psi

    def _gate_sensitivity(self, w: Tensor, h: Tensor, f: Tensor) -> Tensor:
        """df/du ``(m, k - n_ref, n)`` of the free gating rows."""
        if self.layout.normalization == "softmax":
            s = w * (h - f.unsqueeze(1))
        else:
            s = h * w * (1.0 - w)
        return s[:, self.n_ref :]

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)``."""
        y = self.y if idx is None else self.y[idx]
        return (self._forward(flat, idx)[3] - y).square().mean(-1)

    def value_and_grad(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Losses ``(m,)`` and gradients ``(m, P)`` from the closed form (module docstring)."""
        w, h, dh, f, phi, psi = self._forward(flat, idx)
        y = self.y if idx is None else self.y[idx]
        r = f - y  # (m, n)
        e = (2.0 / r.shape[1]) * r.unsqueeze(1)  # (m, 1, n)
        grad_g = torch.bmm(e * self._gate_sensitivity(w, h, f), phi)  # (m, k - n_ref, Fg)
        grad_e = torch.bmm(e * w * dh, psi)  # (m, k, d + 1)
        m = flat.shape[0]
        grad = torch.cat([grad_g.reshape(m, -1), grad_e.reshape(m, -1)], 1)[:, self.inverse]
        return r.square().mean(-1), grad

    def jacobian(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """df(x_j)/dtheta ``(m, n, P)``."""
        w, h, dh, f, phi, psi = self._forward(flat, idx)
        m, n = f.shape
        jg = self._gate_sensitivity(w, h, f).transpose(1, 2).unsqueeze(-1) * phi.unsqueeze(2)
        je = (w * dh).transpose(1, 2).unsqueeze(-1) * psi.unsqueeze(2)  # (m, n, k, d + 1)
        return torch.cat([jg.reshape(m, n, -1), je.reshape(m, n, -1)], -1)[..., self.inverse]
