"""Ground-truth settings for MoE regression studies, as data, and sampling from them.

Model (arXiv 2410.11222):  Y = f_G*(X) + eps,  eps ~ N(0, noise_std^2) independent of X,
    f_G*(x) = sum_{i=1..k*} softmax_i(g(x; A*_i, b*_i, c*_i)) h(x; a*_i, alpha*_i),
with X ~ Uniform[-s, s]^d (``input_distribution="uniform"``, s = ``input_scale``) or
X ~ N(0, s^2 I_d) (``"normal"``). Expert 0 is the reference expert: its gating parameters are
zero in the truth and in every fit (softmax gating is invariant to a common translation).

Sigmoid gating (``normalization="sigmoid"``, arXiv 2405.13997):
    f_G*(x) = sum_{i=1..k*} sigmoid(g(x; A*_i, b*_i, c*_i)) h(x; a*_i, alpha*_i),
no normalisation across experts and so no translation invariance: every expert, expert 0
included, has free gating parameters in the truth and in every fit, and a setting's name carries
the marker ``-sig`` after the gate (``linear-sig-gelu-over``). Softmax names are unchanged.

``CORE_SETTINGS`` are the 4 gate/expert pairs {polynomial, monomial} x {linear, sigmoid} with
d = 2, k* = 3, X ~ U[-2, 2]^2, noise_std = 0.01, each exact-specified (k = k*, ``-exact``) and over-specified (k = k* + 1,
``-over``). Their true parameters (``DEFAULT_TRUE_PARAMS``) are listed in docs/estimation.md.
``sample(setting, n, seeds)`` draws replicate r from ``seeds[r]`` alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmoe.estimation.families.common import derive_seed
from attnmoe.moe import GATES, NORMALIZATIONS, ParameterLayout, make_expert, make_gate
from attnmoe.moe.experts import EXPERTS

__all__ = [
    "CORE_SETTINGS",
    "DEFAULT_TRUE_PARAMS",
    "INPUT_DISTRIBUTIONS",
    "Setting",
    "derive_seed",
    "get_setting",
    "make_setting",
    "named_settings",
    "sample",
    "sample_inputs",
    "setting_from_dict",
    "with_noise",
]

INPUT_DISTRIBUTIONS = ("uniform", "normal")
#: name marker of a sigmoid-gated setting, placed after the gate name
SIGMOID_MARKER = "-sig"

#: True parameters of the core settings (d = 2, k* = 3); expert 0 is the reference expert.
#: Gates take the keys they use (monomial: A, c; polynomial: A, b, c; linear: b, c).
DEFAULT_TRUE_PARAMS: Mapping[str, np.ndarray] = MappingProxyType(
    {
        "A": np.array(
            [[[0.0, 0.0], [0.0, 0.0]], [[-0.2, -1.0], [-1.0, 0.0]], [[1.0, 0.15], [0.15, 0.0]]]
        ),
        "b": np.array([[0.0, 0.0], [-0.2, -1.1], [0.5, 0.0]]),
        "c": np.array([0.0, -0.8, -0.8]),
        "a": np.array([[-0.8, 0.05], [-0.4, 0.65], [0.9, 0.5]]),
        "alpha": np.array([0.4, -2.1, 2.3]),
    }
)
#: Input law and noise of the core settings: X ~ U[-2, 2]^2, eps ~ N(0, 0.01^2).
DEFAULT_INPUT_SCALE = 2.0
DEFAULT_NOISE_STD = 0.01


@dataclass(frozen=True)
class Setting:
    """A ground-truth MoE regression setting.

    Args:
        name: identifier, e.g. ``"monomial-sigmoid-exact"``.
        gate: gate name (``"linear"``, ``"polynomial"``, ``"monomial"``).
        expert: expert name (``"linear"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"relu"``).
        k_true: number of true experts k*.
        k_fit: number of fitted experts k (>= k*).
        dim: input dimension d.
        params: true parameters, natural form without replicate dim: ``A`` (k*, d, d) symmetric,
            ``b`` (k*, d), ``c`` (k*,), ``a`` (k*, d), ``alpha`` (k*,) (gate keys as the gate
            uses); expert 0's gating parameters are zero.
        input_distribution: ``"uniform"`` (U[-s, s]^d) or ``"normal"`` (N(0, s^2 I)).
        input_scale: s.
        noise_std: standard deviation of the Gaussian noise.
        normalization: gating weights, ``"softmax"`` (default; expert 0 is the reference) or
            ``"sigmoid"`` (independent sigmoid weights, no reference expert).
    """

    name: str
    gate: str
    expert: str
    k_true: int
    k_fit: int
    dim: int
    params: Mapping[str, np.ndarray] = field(compare=False, repr=False)
    input_distribution: str = "uniform"
    input_scale: float = DEFAULT_INPUT_SCALE
    noise_std: float = DEFAULT_NOISE_STD
    normalization: str = "softmax"

    @property
    def fit_layout(self) -> ParameterLayout:
        """Free-parameter layout of the fitted model (k_fit experts)."""
        return ParameterLayout(self.gate, self.expert, self.k_fit, self.dim, self.normalization)

    @property
    def true_layout(self) -> ParameterLayout:
        """Free-parameter layout of the true model (k_true experts)."""
        return ParameterLayout(self.gate, self.expert, self.k_true, self.dim, self.normalization)

    @property
    def n_free_params(self) -> int:
        """Number of free parameters of the fitted model."""
        return self.fit_layout.n_params

    def true_params(self, replicates: int = 1, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
        """True natural parameters as tensors with leading ``(replicates, k*)``."""
        return {
            key: torch.tensor(np.array(value), dtype=dtype).unsqueeze(0).repeat(replicates, *([1] * value.ndim))
            for key, value in self.params.items()
        }

    def regression_function(self, x: Tensor) -> Tensor:
        """f_G*(x) ``(R, n)`` for inputs ``(R, n, d)``."""
        from attnmoe.moe import mixture_forward

        params = self.true_params(x.shape[0], x.dtype)
        gate, expert = make_gate(self.gate, self.dim), make_expert(self.expert)
        return mixture_forward(gate, expert, params, x, self.normalization)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled as its :meth:`to_dict` and rebuilt by :func:`setting_from_dict` (its true
        parameters are a read-only mapping, which pickle refuses): how a setting reaches a
        worker process."""
        return setting_from_dict, (self.to_dict(),)

    def to_dict(self) -> dict:
        """JSON-serialisable description (true parameters as nested lists)."""
        return {
            "name": self.name,
            "gate": self.gate,
            "expert": self.expert,
            "k_true": self.k_true,
            "k_fit": self.k_fit,
            "dim": self.dim,
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
            "input_distribution": self.input_distribution,
            "input_scale": self.input_scale,
            "noise_std": self.noise_std,
            "normalization": self.normalization,
        }


def _random_true_params(gate: str, k: int, d: int, seed: int, reference: bool = True) -> dict[str, np.ndarray]:
    """Well-separated random true parameters (minimum pairwise atom distance >= 1); with
    ``reference`` (softmax gating) expert 0's gating parameters are zero."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        A = rng.normal(0.0, 1.5, size=(k, d, d))
        A = 0.5 * (A + A.transpose(0, 2, 1))
        b = rng.normal(0.0, 1.0, size=(k, d))
        c = rng.uniform(-0.5, 0.5, size=k)
        a = rng.normal(0.0, 1.5, size=(k, d))
        alpha = rng.uniform(-1.0, 1.0, size=k)
        if reference:
            A[0], b[0], c[0] = 0.0, 0.0, 0.0
        atoms = np.concatenate([A.reshape(k, -1), b, a, alpha[:, None]], axis=1)
        dist = min(
            (np.linalg.norm(atoms[i] - atoms[j]) for i, j in itertools.combinations(range(k), 2)),
            default=np.inf,
        )
        if dist >= 1.0:
            break
    params = {"A": A, "b": b, "c": c, "a": a, "alpha": alpha}
    return {key: params[key] for key in (*GATES[gate].param_names, "a", "alpha")}


def make_setting(
    gate: str,
    expert: str,
    k_true: int = 3,
    k_fit: int | None = None,
    dim: int = 2,
    *,
    params: Mapping[str, np.ndarray] | None = None,
    input_distribution: str = "uniform",
    input_scale: float = DEFAULT_INPUT_SCALE,
    noise_std: float = DEFAULT_NOISE_STD,
    name: str | None = None,
    seed: int = 0,
    normalization: str = "softmax",
) -> Setting:
    """Build and validate a :class:`Setting`.

    Without ``params``: the documented ``DEFAULT_TRUE_PARAMS`` when (k_true, dim) == (3, 2),
    else well-separated random parameters drawn from ``seed``. Given ``params`` (natural form,
    shapes as in :class:`Setting`), they are translated so expert 0's gating is zero and each A
    is symmetrised (neither changes f_G*).
    """
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; valid gates: {sorted(GATES)}")
    if expert not in EXPERTS:
        raise ValueError(f"unknown expert {expert!r}; valid experts: {list(EXPERTS)}")
    for label, value in (("k_true", k_true), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an int >= 1, got {value!r}")
    k_fit = k_true if k_fit is None else k_fit
    if isinstance(k_fit, bool) or not isinstance(k_fit, int) or k_fit < 1:
        raise ValueError(f"k_fit must be an int >= 1, got {k_fit!r}")
    if k_fit < k_true:
        raise ValueError(f"k_fit ({k_fit}) must be >= k_true ({k_true}): under-specified fits are not supported")
    if input_distribution not in INPUT_DISTRIBUTIONS:
        raise ValueError(
            f"unknown input_distribution {input_distribution!r}; valid: {list(INPUT_DISTRIBUTIONS)}"
        )
    if not (input_scale > 0 and np.isfinite(input_scale)):
        raise ValueError(f"input_scale must be positive and finite, got {input_scale!r}")
    if not (noise_std >= 0 and np.isfinite(noise_std)):
        raise ValueError(f"noise_std must be >= 0 and finite, got {noise_std!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {list(NORMALIZATIONS)}")
    softmax = normalization == "softmax"
    keys = (*GATES[gate].param_names, "a", "alpha")
    if params is None:
        if (k_true, dim) == (3, 2):
            params = {key: DEFAULT_TRUE_PARAMS[key] for key in keys}
        else:
            params = _random_true_params(gate, k_true, dim, seed, reference=softmax)
    shapes = {"A": (k_true, dim, dim), "b": (k_true, dim), "c": (k_true,), "a": (k_true, dim), "alpha": (k_true,)}
    clean: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in params:
            raise ValueError(f"params is missing {key!r} (gate {gate!r} with expert {expert!r})")
        value = np.array(params[key], dtype=np.float64)
        if value.shape != shapes[key]:
            raise ValueError(f"params[{key!r}] must have shape {shapes[key]}, got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"params[{key!r}] contains NaN or inf")
        if key in GATES[gate].param_names and softmax:
            value = value - value[:1]
        if key == "A":
            value = 0.5 * (value + value.transpose(0, 2, 1))
        value.setflags(write=False)
        clean[key] = value
    if name is None:
        spec = "exact" if k_fit == k_true else ("over" if k_fit == k_true + 1 else f"over{k_fit - k_true}")
        name = f"{gate}{'' if softmax else SIGMOID_MARKER}-{expert}-{spec}"
        if (k_true, dim) != (3, 2):
            name += f"-k{k_true}-d{dim}"
    return Setting(
        name=name,
        gate=gate,
        expert=expert,
        k_true=k_true,
        k_fit=k_fit,
        dim=dim,
        params=MappingProxyType(clean),
        input_distribution=input_distribution,
        input_scale=float(input_scale),
        noise_std=float(noise_std),
        normalization=normalization,
    )


CORE_SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {
        s.name: s
        for s in (
            make_setting(gate, expert, 3, 3 + extra)
            for gate in ("monomial", "polynomial")
            for expert in ("sigmoid", "linear")
            for extra in (0, 1)
        )
    }
)


def setting_from_dict(spec: Mapping[str, Any]) -> Setting:
    """The setting :meth:`Setting.to_dict` describes (``normalization`` defaults to softmax for
    descriptions written before it existed)."""
    return make_setting(
        spec["gate"],
        spec["expert"],
        spec["k_true"],
        spec["k_fit"],
        spec["dim"],
        params=spec["params"],
        input_distribution=spec["input_distribution"],
        input_scale=spec["input_scale"],
        noise_std=spec["noise_std"],
        name=spec["name"],
        normalization=spec.get("normalization", "softmax"),
    )


def with_noise(setting: Setting, noise_std: float) -> Setting:
    """``setting`` with another noise level, named ``<name>-sd<noise_std>`` (records of different
    noise levels never share a key). Same truth, inputs and seeds: only the noise is rescaled."""
    if not (isinstance(noise_std, (int, float)) and np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"--noise must be a finite number >= 0, got {noise_std!r}")
    from dataclasses import replace

    base = setting.name.split("-sd")[0]
    return replace(setting, noise_std=float(noise_std), name=f"{base}-sd{float(noise_std):g}")


def named_settings() -> Mapping[str, Setting]:
    """Every named setting: the core ones and the gating family's
    (:mod:`attnmoe.estimation.families.least_squares.gating_truths`)."""
    from attnmoe.estimation.families.least_squares.gating_truths import GATING_SETTINGS

    return {**CORE_SETTINGS, **GATING_SETTINGS}


def get_setting(name: str) -> Setting:
    """A named setting, e.g. ``"monomial-sigmoid-exact"`` or ``"sgate-r1-gelu-sig"``."""
    known = named_settings()
    if name not in known:
        raise ValueError(f"unknown setting {name!r}; valid settings: {sorted(known)}")
    return known[name]


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not seeds:
        raise ValueError("seeds must be a non-empty sequence of ints")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"seeds must be ints, got {s!r}")
    return [int(s) for s in seeds]


def sample_inputs(setting: Setting, n: int, seeds: Sequence[int], stream: int = 0) -> Tensor:
    """Inputs X ``(R, n, d)`` (float64), replicate r drawn from ``derive_seed(seeds[r], stream)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    xs = []
    for s in _check_seeds(seeds):
        gen = torch.Generator().manual_seed(derive_seed(s, stream))
        if setting.input_distribution == "uniform":
            x = (2.0 * torch.rand(int(n), setting.dim, generator=gen, dtype=torch.float64) - 1.0)
        else:
            x = torch.randn(int(n), setting.dim, generator=gen, dtype=torch.float64)
        xs.append(x * setting.input_scale)
    return torch.stack(xs)  # (R, n, d)


def sample(setting: Setting, n: int, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Training sample: X ``(R, n, d)``, y ``(R, n)``; replicate r depends only on ``seeds[r]``."""
    seeds = _check_seeds(seeds)
    X = sample_inputs(setting, n, seeds, stream=0)
    noise = []
    for s in seeds:
        gen = torch.Generator().manual_seed(derive_seed(s, 3))
        noise.append(torch.randn(int(n), generator=gen, dtype=torch.float64))
    # f one replicate at a time: element-wise kernels round a tensor's tail differently, so a
    # batched call would make a replicate's y depend on its place in the batch
    f = torch.cat([setting.regression_function(X[r : r + 1]) for r in range(len(seeds))])
    y = f + setting.noise_std * torch.stack(noise)  # (R, n)
    return X, y
