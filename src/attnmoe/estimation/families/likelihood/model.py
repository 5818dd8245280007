"""Conditional-density families of likelihood mixtures of experts (issue 12), for ONE replicate.

Every family is a :class:`LikelihoodModel`: a list of free-parameter blocks, a flat layout
``(P,)`` of them, and ``log_density(params, xT, y) -> (n,)`` = log p(y_j | x_j) for one replicate
(inputs transposed ``xT`` ``(d, n)`` so the sample axis is the last one; see
:mod:`.objective` for batching over replicates with ``torch.func.vmap``). Formulas:

* Gaussian MoE (arXiv 2309.13850, 2401.13875):
      p(y | x) = sum_i w_i(x) N(y | a_i^T x + b_i, nu_i),   nu_i = exp(lognu_i) (variance)
  with Laplace experts ``expert="laplace"``: density exp(-|y - m| / s) / (2 s), s = sqrt(nu / 2)
  (nu is the variance in both families -- our choice, docs/likelihood.md).
* gates: u_i = beta1_i^T x + beta0_i (last expert pinned at 0: the softmax is translation
  invariant); softmax w = softmax(u); top-K sparse softmax (2309.13850)
      TopK_i(u) = exp(u_i) 1[i in top_K(u)] / sum_{l in top_K(u)} exp(u_l);
  temperature gate (2401.13875) u_i = beta1_i^T x / tau + beta0_i and activation gate
  u_i = tanh(beta1_i^T x) / tau + beta0_i, tau = exp(logtau) (our placement of tau and of the
  activation; the paper's exact placement is unknown to us, docs/likelihood.md).
  Any gate of the least-squares registry :data:`attnmoe.moe.gates.GATES` (``"linear"``,
  ``"polynomial"``, ``"monomial"``, ``"cosine"``, ``"perturbed-cosine"``) also serves:
  u_i = g_i(x; theta_i) with the last expert's gating parameters pinned at 0 (free blocks
  ``gate_A`` as the upper triangle of the symmetric A_i, ``gate_b``, ``gate_c``), so a quadratic
  or cosine gate gets the same likelihoods, top-K and solver as the linear one.
* Contaminated MoE (arXiv 2505.18455): a frozen expert f0 and a trainable Gaussian prompt
      p(y | x) = (1 - w(x)) f0(y | tanh(eta0^T x), nu0) + w(x) N(y | tanh(eta^T x), nu),
      w(x) = sigmoid(beta^T x + tau)   (softmax over the logits (0, beta^T x + tau)).

The gates are defined once, in the shared MoE modules: the score transforms (softmax, temperature,
activation) and the input maps of the modified gate are :data:`attnmoe.moe.gates.LINEAR_SCORES` /
:data:`attnmoe.moe.gates.INPUT_MAPS`, the top-K sparse softmax is
:func:`attnmoe.moe.mixture.topk_log_weights` / :func:`attnmoe.moe.mixture.topk_softmax`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnmoe.moe.gates import GATES, LINEAR_SCORES, Gate, make_gate, make_input_map, make_linear_score
from attnmoe.moe.mixture import topk_log_weights, topk_softmax

__all__ = [
    "EXPERT_DENSITIES",
    "ContaminatedMoE",
    "box",
    "unbox",
    "GaussianMoE",
    "LikelihoodModel",
    "log_gaussian",
    "log_laplace",
]

LOG_2PI = math.log(2.0 * math.pi)


def log_gaussian(y: Tensor, mean: Tensor, lognu: Tensor) -> Tensor:
    """log N(y | mean, exp(lognu)) (broadcast)."""
    return -0.5 * (LOG_2PI + lognu) - 0.5 * (y - mean).square() * torch.exp(-lognu)


def log_laplace(y: Tensor, mean: Tensor, lognu: Tensor) -> Tensor:
    """log Laplace(y | mean, scale s) with variance exp(lognu) = 2 s^2 (broadcast)."""
    log_s = 0.5 * (lognu - math.log(2.0))
    return -math.log(2.0) - log_s - (y - mean).abs() * torch.exp(-log_s)


EXPERT_DENSITIES = {"gaussian": log_gaussian, "laplace": log_laplace}


@dataclass(frozen=True)
class LikelihoodModel:
    """Base: free blocks ``(name, shape)`` laid out in order in a flat vector."""

    @property
    def blocks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for _, s in self.blocks)

    def unpack(self, flat: Tensor) -> dict[str, Tensor]:
        """Free blocks of ``flat`` ``(..., P)`` as ``(..., *shape)`` views."""
        out, start = {}, 0
        lead = flat.shape[:-1]
        for name, shape in self.blocks:
            size = math.prod(shape)
            out[name] = flat[..., start : start + size].reshape(*lead, *shape)
            start += size
        return out

    def pack(self, free: dict[str, Tensor]) -> Tensor:
        """Inverse of :meth:`unpack`: ``(..., P)``."""
        parts = []
        for name, shape in self.blocks:
            v = torch.as_tensor(free[name], dtype=torch.float64)
            parts.append(v.reshape(*v.shape[: v.ndim - len(shape)], -1))
        return torch.cat(parts, -1)

    def log_density(self, free: dict[str, Tensor], xT: Tensor, y: Tensor) -> Tensor:
        """log p(y_j | x_j) ``(n,)`` for one replicate (``xT`` ``(d, n)``, ``y`` ``(n,)``)."""
        raise NotImplementedError

    def natural(self, flat: Tensor) -> dict[str, Tensor]:
        """Interpretable parameters of ``flat`` ``(..., P)`` (variances, pinned rows filled)."""
        raise NotImplementedError

    def free(self, natural: dict[str, Tensor]) -> Tensor:
        """Inverse of :meth:`natural`: flat ``(..., P)``."""
        raise NotImplementedError

    def sample(self, natural: dict[str, Tensor], X: Tensor, U: Tensor) -> Tensor:
        """Responses ``(R, n)`` at inputs ``X`` ``(R, n, d)`` from uniforms ``U`` ``(R, n, 2)``
        (column 0 picks the component, column 1 the noise by inverse CDF): nested in n."""
        raise NotImplementedError


def box(v: Tensor, bound: float | None) -> Tensor:
    """The compact parameter box |v| < B of the theory (THE one definition; contaminated gate,
    multinomial logistic MoE): v = B tanh(v_free / B), the identity near 0; None: unbounded."""
    return v if bound is None else bound * torch.tanh(v / bound)


def unbox(v: Tensor, bound: float | None, what: str = "parameters") -> Tensor:
    """Inverse of :func:`box`: B atanh(v / B); refuses values on or outside the box."""
    if bound is None:
        return v
    if bool((v.abs() >= bound).any()):
        raise ValueError(f"{what} must lie inside |.| < {bound} (the parameter box)")
    return bound * torch.atanh(v / bound)


def _linear(W: Tensor, xT: Tensor) -> Tensor:
    """W x_j for W ``(k, d)``, xT ``(d, n)`` -> ``(k, n)`` as an element-wise product and a sum
    over d (no matmul: its kernel may depend on the batch size, see objective.PAD)."""
    return (W.unsqueeze(-1) * xT.unsqueeze(0)).sum(1)


def _inverse_cdf_noise(kind: str, u: Tensor) -> Tensor:
    """A unit-variance noise draw of ``kind`` from uniforms ``u`` in (0, 1)."""
    u = u.clamp(1e-300, 1 - 1e-16)
    if kind == "gaussian":
        return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
    # Laplace with variance 1: scale 1/sqrt(2)
    return -torch.sign(u - 0.5) * torch.log1p(-2.0 * (u - 0.5).abs()) / math.sqrt(2.0)


@functools.lru_cache(maxsize=None)
def _triangle_index(d: int) -> Tensor:
    """``(d, d)`` positions in the row-major upper triangle (``triu_indices`` order) of the
    entry (i, j) of a symmetric matrix: ``tri[..., idx]`` is the full matrix, by indexing only.
    Built once per d (every log-density evaluation of a quadratic gate indexes with it)."""
    iu = torch.triu_indices(d, d)
    idx = torch.empty(d, d, dtype=torch.long)
    idx[iu[0], iu[1]] = torch.arange(iu.shape[1])
    idx[iu[1], iu[0]] = torch.arange(iu.shape[1])
    return idx


@dataclass(frozen=True)
class GaussianMoE(LikelihoodModel):
    """Softmax / top-K softmax gated mixture of Gaussian (or Laplace) linear experts.

    Args:
        k: number of experts.
        dim: input dimension d.
        top_k: K of the top-K sparse softmax (None or K = k: dense softmax).
        expert: ``"gaussian"`` or ``"laplace"``.
        gate: a score transform of the linear gate, ``"softmax"``, ``"temperature"`` or
            ``"activation"``, or a gate of the shared registry, ``"linear"``, ``"polynomial"``,
            ``"monomial"``, ``"cosine"``, ``"perturbed-cosine"`` (module doc).
    """

    k: int
    dim: int
    top_k: int | None = None
    expert: str = "gaussian"
    gate: str = "softmax"

    def __post_init__(self) -> None:
        if self.k < 1 or self.dim < 1:
            raise ValueError(f"k and dim must be >= 1, got k={self.k}, dim={self.dim}")
        if self.top_k is not None and not (1 <= self.top_k <= self.k):
            raise ValueError(f"top-K needs 1 <= K <= k, got K={self.top_k} with k={self.k} experts")
        if self.expert not in EXPERT_DENSITIES:
            raise ValueError(f"unknown expert density {self.expert!r}; valid: {list(EXPERT_DENSITIES)}")
        if self.gate not in LINEAR_SCORES and self.gate not in GATES:
            raise ValueError(f"unknown gate {self.gate!r}; valid gates: {list(LINEAR_SCORES)} (linear-score "
                             f"transforms) or {list(GATES)} (the shared gate registry)")

    @property
    def registry_gate(self) -> Gate | None:
        """The :class:`~attnmoe.moe.gates.Gate` of a registry gate name, else None."""
        return make_gate(self.gate, self.dim) if self.gate in GATES else None

    @property
    def has_tau(self) -> bool:
        """A temperature tau (the temperature and activation gates)."""
        return self.gate in LINEAR_SCORES and self.gate != "softmax"

    @property
    def blocks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        k, d = self.k, self.dim
        gate = self.registry_gate
        if gate is not None:
            widths = {"A": (k - 1, d * (d + 1) // 2), "b": (k - 1, d), "c": (k - 1,)}  # A: upper triangle
            gating = tuple((f"gate_{p}", widths[p]) for p in gate.param_names)
        else:
            temp = (("logtau", (1,)),) if self.has_tau else ()
            gating = (("beta1", (k - 1, d)), ("beta0", (k - 1,)), *temp)
        return (*gating, ("a", (k, d)), ("b", (k,)), ("lognu", (k,)))

    def _registry_params(self, free: dict[str, Tensor], gate: Gate) -> dict[str, Tensor]:
        """Gate parameters with the last expert's zeros appended: ``(..., k, *shape)``."""
        out = {}
        for p in gate.param_names:
            v = free[f"gate_{p}"]
            if p == "A":
                v = v[..., _triangle_index(self.dim)]  # (..., k-1, d, d) symmetric
            lead = v.shape[: v.ndim - len(gate.param_shapes()[p]) - 1]
            out[p] = torch.cat([v, v.new_zeros(*lead, 1, *v.shape[len(lead) + 1 :])], len(lead))
        return out

    def _gate(self, free: dict[str, Tensor], xT: Tensor) -> Tensor:
        gate = self.registry_gate
        if gate is not None:  # the registry's own logits, (1, n, k) -> (k, n)
            params = {p: v.unsqueeze(0) for p, v in self._registry_params(free, gate).items()}
            return gate.logits(params, xT.T.unsqueeze(0))[0].T
        beta1 = torch.cat([free["beta1"], free["beta1"].new_zeros(1, self.dim)], 0)  # (k, d)
        beta0 = torch.cat([free["beta0"], free["beta0"].new_zeros(1)], 0)  # (k,)
        tau = torch.exp(free["logtau"]) if self.has_tau else None
        return make_linear_score(self.gate)(_linear(beta1, xT), tau) + beta0.unsqueeze(-1)  # (k, n)

    def log_density(self, free: dict[str, Tensor], xT: Tensor, y: Tensor) -> Tensor:
        logw, mask = topk_log_weights(self._gate(free, xT), self.top_k, dim=0)  # (k, n)
        mean = _linear(free["a"], xT) + free["b"].unsqueeze(-1)  # (k, n)
        joint = logw + EXPERT_DENSITIES[self.expert](y.unsqueeze(0), mean, free["lognu"].unsqueeze(-1))
        if mask is not None:
            joint = torch.where(mask, joint, -torch.inf)
        return torch.logsumexp(joint, 0)  # (n,)

    def weights(self, natural: dict[str, Tensor], X: Tensor) -> Tensor:
        """Gate weights ``(R, n, k)`` of natural parameters with leading R at ``X`` ``(R, n, d)``."""
        gate = self.registry_gate
        if gate is not None:
            u = gate.logits({p: natural[f"gate_{p}"] for p in gate.param_names}, X)  # (R, n, k)
            return topk_softmax(u, self.top_k, dim=-1)
        lin = torch.einsum("rkd,rnd->rnk", natural["beta1"], X)
        tau = natural["tau"].view(-1, 1, 1) if self.has_tau else None
        u = make_linear_score(self.gate)(lin, tau) + natural["beta0"].unsqueeze(1)  # (R, n, k)
        return topk_softmax(u, self.top_k, dim=-1)

    def means(self, natural: dict[str, Tensor], X: Tensor) -> Tensor:
        """Expert means ``(R, n, k)``."""
        return torch.einsum("rkd,rnd->rnk", natural["a"], X) + natural["b"].unsqueeze(1)

    def natural(self, flat: Tensor) -> dict[str, Tensor]:
        f = self.unpack(flat)
        lead = flat.shape[:-1]
        out = {"a": f["a"], "b": f["b"], "nu": torch.exp(f["lognu"])}
        gate = self.registry_gate
        if gate is not None:
            return {**{f"gate_{p}": v for p, v in self._registry_params(f, gate).items()}, **out}
        out = {
            "beta1": torch.cat([f["beta1"], flat.new_zeros(*lead, 1, self.dim)], -2),
            "beta0": torch.cat([f["beta0"], flat.new_zeros(*lead, 1)], -1),
            **out,
        }
        if self.has_tau:
            out["tau"] = torch.exp(f["logtau"][..., 0])
        return out

    def _free_registry(self, t: dict[str, Tensor], gate: Gate) -> dict[str, Tensor]:
        """Free gate blocks of natural registry-gate parameters: translated so the last expert's
        are 0 where the logits are linear in them (the softmax is translation invariant), else
        (cosine) only the intercept is translated and the last expert's other parameters must be 0."""
        out = {}
        for p in gate.param_names:
            v = t[f"gate_{p}"]
            if p == "A":
                v = 0.5 * (v + v.transpose(-1, -2))
            axis = v.ndim - 1 - len(gate.param_shapes()[p])  # the expert axis
            last = v.narrow(axis, self.k - 1, 1)
            if gate.closed_form or p == "c":
                v = v - last
            elif bool((last != 0).any()):
                raise ValueError(f"the {gate.name} gate's last expert must have {p} = 0 (it is pinned)")
            v = v.narrow(axis, 0, self.k - 1)
            if p == "A":
                iu = torch.triu_indices(self.dim, self.dim)
                v = v[..., iu[0], iu[1]]
            out[f"gate_{p}"] = v
        return out

    def free(self, natural: dict[str, Tensor]) -> Tensor:
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in natural.items()}
        if bool((t["nu"] <= 0).any()):
            raise ValueError("variances nu must be > 0")
        experts = {"a": t["a"], "b": t["b"], "lognu": torch.log(t["nu"])}
        gate = self.registry_gate
        if gate is not None:
            return self.pack({**self._free_registry(t, gate), **experts})
        beta1 = t["beta1"] - t["beta1"][..., -1:, :]  # pin the last expert (translation)
        beta0 = t["beta0"] - t["beta0"][..., -1:]
        if self.gate == "activation" and bool((t["beta1"][..., -1, :] != 0).any()):
            raise ValueError("the activation gate's last expert must have beta1 = 0 (it is pinned)")
        free = {"beta1": beta1[..., :-1, :], "beta0": beta0[..., :-1], **experts}
        if self.has_tau:
            if bool((t["tau"] <= 0).any()):
                raise ValueError("the temperature tau must be > 0")
            free["logtau"] = torch.log(t["tau"]).unsqueeze(-1)
        return self.pack(free)

    def sample(self, natural: dict[str, Tensor], X: Tensor, U: Tensor) -> Tensor:
        w = self.weights(natural, X)  # (R, n, k)
        comp = (w.cumsum(-1) < U[..., :1]).sum(-1).clamp(max=self.k - 1)  # (R, n)
        mean = self.means(natural, X).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        sd = natural["nu"].sqrt().unsqueeze(1).expand(-1, X.shape[1], -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        return mean + sd * _inverse_cdf_noise(self.expert, U[..., 1])


@dataclass(frozen=True)
class ContaminatedMoE(LikelihoodModel):
    """Softmax-contaminated MoE (arXiv 2505.18455): frozen f0 + trainable Gaussian prompt.

    Args:
        dim: d.
        f0: family of the frozen expert, ``"gaussian"`` or ``"laplace"``.
        eta0: frozen expert's direction ``(d,)`` (h0(x) = tanh(eta0^T x)).
        nu0: frozen expert's variance (> 0).
        gate_bound: B of the compact gate space |beta_p|, |tau| < B (the theory's compact
            parameter set): beta = B tanh(beta_free / B), likewise tau; None: unbounded.
    """

    dim: int
    f0: str
    eta0: tuple[float, ...]
    nu0: float
    gate_bound: float | None = None

    def _box(self, v: Tensor) -> Tensor:
        return box(v, self.gate_bound)

    def _unbox(self, v: Tensor) -> Tensor:
        return unbox(v, self.gate_bound, "gate parameters")

    def __post_init__(self) -> None:
        if self.f0 not in EXPERT_DENSITIES:
            raise ValueError(f"unknown f0 {self.f0!r}; valid: {list(EXPERT_DENSITIES)}")
        if len(self.eta0) != self.dim:
            raise ValueError(f"eta0 must have d = {self.dim} entries, got {len(self.eta0)}")
        if not (self.nu0 > 0 and math.isfinite(self.nu0)):
            raise ValueError(f"the frozen expert's variance nu0 must be > 0, got {self.nu0}")

    @property
    def blocks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        d = self.dim
        return (("beta", (d,)), ("tau", (1,)), ("eta", (d,)), ("lognu", (1,)))

    def log_density(self, free: dict[str, Tensor], xT: Tensor, y: Tensor) -> Tensor:
        s = (self._box(free["beta"]).unsqueeze(-1) * xT).sum(0) + self._box(free["tau"])  # (n,)
        eta0 = torch.tensor(self.eta0, dtype=xT.dtype)
        m0 = torch.tanh((eta0.unsqueeze(-1) * xT).sum(0))
        m = torch.tanh((free["eta"].unsqueeze(-1) * xT).sum(0))
        log0 = EXPERT_DENSITIES[self.f0](y, m0, torch.tensor(math.log(self.nu0), dtype=xT.dtype))
        log1 = log_gaussian(y, m, free["lognu"])
        # logsumexp of a stack, not logaddexp: the latter's forward-mode derivative is NaN when
        # both terms underflow in exp
        both = torch.stack([torch.nn.functional.logsigmoid(-s) + log0, torch.nn.functional.logsigmoid(s) + log1])
        return torch.logsumexp(both, 0)

    def natural(self, flat: Tensor) -> dict[str, Tensor]:
        f = self.unpack(flat)
        return {"beta": self._box(f["beta"]), "tau": self._box(f["tau"][..., 0]), "eta": f["eta"],
                "nu": torch.exp(f["lognu"][..., 0])}

    def free(self, natural: dict[str, Tensor]) -> Tensor:
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in natural.items()}
        if bool((t["nu"] <= 0).any()):
            raise ValueError("variance nu must be > 0")
        return self.pack({"beta": self._unbox(t["beta"]), "tau": self._unbox(t["tau"]).unsqueeze(-1), "eta": t["eta"],
                          "lognu": torch.log(t["nu"]).unsqueeze(-1)})

    def sample(self, natural: dict[str, Tensor], X: Tensor, U: Tensor) -> Tensor:
        s = torch.einsum("rd,rnd->rn", natural["beta"], X) + natural["tau"].unsqueeze(-1)
        prompt = U[..., 0] < torch.sigmoid(s)  # (R, n)
        eta0 = torch.tensor(self.eta0, dtype=X.dtype)
        m0 = torch.tanh(X @ eta0)
        m1 = torch.tanh(torch.einsum("rd,rnd->rn", natural["eta"], X))
        e0 = math.sqrt(self.nu0) * _inverse_cdf_noise(self.f0, U[..., 1])
        e1 = natural["nu"].sqrt().unsqueeze(-1) * _inverse_cdf_noise("gaussian", U[..., 1])
        return torch.where(prompt, m1 + e1, m0 + e0)


@dataclass(frozen=True)
class MultinomialLogisticMoE(LikelihoodModel):
    """Softmax-gated multinomial logistic MoE (arXiv 2310.14188), labels y in {0, ..., S-1}:

        P(Y = s | x) = sum_i softmax_i(beta1_i^T M(x) + beta0_i) softmax_s(a_is^T x + b_is),

    class 0 of every expert pinned at a_i0 = 0, b_i0 = 0 and the last expert's gate at 0.
    ``input_map = "identity"`` is the standard gate, ``"tanh"`` the modified gate (M bounded and
    injective; our choice of M, docs/likelihood.md).

    Args:
        k: experts. dim: d. n_classes: S >= 2. input_map: ``"identity"`` or ``"tanh"``.
        bound: B of the compact parameter box |beta1|, |beta0|, |a|, |b| < B (every free
            coordinate; the theory's compact parameter space) by :func:`box`; None: unbounded.
    """

    k: int
    dim: int
    n_classes: int
    input_map: str = "identity"
    bound: float | None = None

    def __post_init__(self) -> None:
        if self.k < 1 or self.dim < 1:
            raise ValueError(f"k and dim must be >= 1, got k={self.k}, dim={self.dim}")
        if self.n_classes < 2:
            raise ValueError(f"a multinomial logistic MoE needs at least 2 classes, got {self.n_classes}")
        make_input_map(self.input_map)  # refuses an unknown map with one line
        if self.bound is not None and not (self.bound > 0 and math.isfinite(self.bound)):
            raise ValueError(f"the parameter box needs a finite bound > 0, got {self.bound}")

    @property
    def blocks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        k, d, S = self.k, self.dim, self.n_classes
        return (("beta1", (k - 1, d)), ("beta0", (k - 1,)), ("a", (k, S - 1, d)), ("b", (k, S - 1)))

    def check_y(self, y: Tensor) -> None:
        """Refuse labels that are not integers in [0, S)."""
        bad = (y != y.round()) | (y < 0) | (y >= self.n_classes)
        if bool(bad.any()):
            raise ValueError(f"labels must be integers in [0, {self.n_classes}); got e.g. {float(y[bad][0])}")

    def _logits(self, free: dict[str, Tensor], xT: Tensor) -> tuple[Tensor, Tensor]:
        """Gate logits ``(k, n)`` and expert class logits ``(k, S, n)`` (class 0 pinned)."""
        free = {key: box(v, self.bound) for key, v in free.items()}  # the identity without a box
        beta1 = torch.cat([free["beta1"], free["beta1"].new_zeros(1, self.dim)], 0)
        beta0 = torch.cat([free["beta0"], free["beta0"].new_zeros(1)], 0)
        u = _linear(beta1, make_input_map(self.input_map)(xT)) + beta0.unsqueeze(-1)  # (k, n)
        z = (free["a"].unsqueeze(-1) * xT.view(1, 1, *xT.shape)).sum(2) + free["b"].unsqueeze(-1)  # (k, S-1, n)
        z = torch.cat([z.new_zeros(self.k, 1, z.shape[-1]), z], 1)  # (k, S, n)
        return u, z

    def log_density(self, free: dict[str, Tensor], xT: Tensor, y: Tensor) -> Tensor:
        u, z = self._logits(free, xT)
        logw, _ = topk_log_weights(u, None, dim=0)  # dense softmax gate (k, n)
        logf = z - torch.logsumexp(z, 1, keepdim=True)  # (k, S, n)
        onehot = y.unsqueeze(0) == torch.arange(self.n_classes, dtype=y.dtype).unsqueeze(-1)  # (S, n)
        logf_y = torch.where(onehot.unsqueeze(0), logf, 0.0).sum(1)  # (k, n)
        return torch.logsumexp(logw + logf_y, 0)

    def proba(self, flat: Tensor, X: Tensor) -> Tensor:
        """P(Y = s | x) ``(R, n, S)`` for free parameters ``(R, P)`` and inputs ``(R, n, d)``."""
        free = self.unpack(flat)
        u, z = vmap_logits(self, free, X.transpose(1, 2))
        w = topk_softmax(u, None, dim=1)  # dense softmax gate (R, k, n)
        return (w.unsqueeze(2) * torch.softmax(z, 2)).sum(1).transpose(1, 2)

    def natural(self, flat: Tensor) -> dict[str, Tensor]:
        f = {key: box(v, self.bound) for key, v in self.unpack(flat).items()}
        lead = flat.shape[:-1]
        return {"beta1": torch.cat([f["beta1"], flat.new_zeros(*lead, 1, self.dim)], -2),
                "beta0": torch.cat([f["beta0"], flat.new_zeros(*lead, 1)], -1), "a": f["a"], "b": f["b"]}

    def free(self, natural: dict[str, Tensor]) -> Tensor:
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in natural.items()}
        beta1 = t["beta1"] - t["beta1"][..., -1:, :]
        beta0 = t["beta0"] - t["beta0"][..., -1:]
        f = {"beta1": beta1[..., :-1, :], "beta0": beta0[..., :-1], "a": t["a"], "b": t["b"]}
        return self.pack({key: unbox(v, self.bound, f"multinomial parameters ({key})") for key, v in f.items()})

    def sample(self, natural: dict[str, Tensor], X: Tensor, U: Tensor) -> Tensor:
        p = self.proba(self.free(natural), X)  # (R, n, S)
        return (p.cumsum(-1) < U[..., :1]).sum(-1).clamp(max=self.n_classes - 1).to(X.dtype)


def vmap_logits(model: MultinomialLogisticMoE, free: dict[str, Tensor], xT: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`MultinomialLogisticMoE._logits` over a leading replicate dim."""
    return torch.func.vmap(model._logits)(free, xT)
