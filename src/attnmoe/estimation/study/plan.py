"""What a study runs: settings, validation, parallelism and the list of jobs.

Everything here is checked before anything is written or allocated (``docs/rates.md``,
"Choices"): the numbers of experts before a :class:`~attnmoe.estimation.families.least_squares.truth.Setting` is built
(a random truth with k experts costs O(k²) per draw), the sample sizes against
:data:`MAX_N` and against the free parameters of every fitted model
(:meth:`~attnmoe.moe.mixture.ParameterLayout.check_sample_size`, the one sample-size check),
and workers / threads / block size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from attnmoe.estimation.families.least_squares.truth import (
    CORE_SETTINGS,
    Setting,
    get_setting,
    make_setting,
    named_settings,
    with_noise,
)
from attnmoe.moe import NORMALIZATIONS

__all__ = [
    "MAX_EXPERTS",
    "MAX_N",
    "MAX_REPLICATES",
    "available_memory",
    "check_block_memory",
    "check_positive_int",
    "core_setting_names",
    "default_threads",
    "default_workers",
    "log_grid",
    "renormalized",
    "replicate_seeds",
    "resolve_settings",
    "validate_study",
    "with_noise_grid",
]

#: Largest number of replicate seeds of one study: far beyond any study here (40-4096), and a
#: list of them is cheap
MAX_REPLICATES = 10**6

#: bytes a fit holds per sample and replicate (inputs, features, their products, the passes'
#: temporaries, the L2 test sample): a deliberately high estimate for the memory check
BYTES_PER_SAMPLE = 8 * 96

#: bytes a fit holds per replicate and pair of free parameters (the Hessian, its eigenvectors,
#: the box's chain rule and the (Q, U) products: several (P, P) float64 arrays), so that a wide
#: fitted model (--k-fit up to MAX_EXPERTS: P in the hundreds) is counted, not only n
BYTES_PER_PARAM_PAIR = 8 * 8


def available_memory() -> int | None:
    """Bytes of memory available now (Linux; None where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_block_memory(block_size: int, starts: int, n_max: int, workers: int, n_params: int = 0) -> None:
    """Refuse, before allocating, a block that cannot fit: ``workers`` processes each fitting
    ``block_size x starts`` replicates at ``n_max`` samples with up to ``n_params`` free
    parameters (one-line error naming the fix)."""
    per_fit = n_max * BYTES_PER_SAMPLE + n_params**2 * BYTES_PER_PARAM_PAIR
    need = block_size * starts * per_fit * workers
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(f"a block of {block_size} replicate(s) x {starts} start(s) at n = {n_max} needs about "
                         f"{need / 2**30:.1f} GiB over {workers} worker(s), {have / 2**30:.1f} GiB are available; "
                         "use a smaller --block-size, fewer --workers or smaller --n-grid")


#: Largest sample size a study accepts. A fit holds several (R, k, n) float64 tensors: at
#: n = 10^7, k = 4 and a block of 40 replicates that is ~13 GB per tensor, so larger n is a typo
#: (``--n-grid 1000,1e12`` would ask for terabytes) rather than a study this code can run.
MAX_N = 10**7

#: Largest number of experts (true or fitted). The theory's settings use k <= 5; a random
#: well-separated truth for k experts is drawn by rejection on O(k²) pair distances, and the
#: fitted model's per-iteration cost grows with k. 32 leaves room for exploration while
#: refusing a typo like ``--k-true 100000`` at once.
MAX_EXPERTS = 32


def log_grid(n_min: int, n_max: int, num: int) -> tuple[int, ...]:
    """``num`` log-spaced integer sample sizes from ``n_min`` to ``n_max`` inclusive."""
    if not (1 <= n_min < n_max) or num < 2:
        raise ValueError(f"need 1 <= n_min < n_max and num >= 2, got {n_min}, {n_max}, {num}")
    return tuple(round(v) for v in np.logspace(math.log10(n_min), math.log10(n_max), num))


def with_noise_grid(settings: Sequence[Setting], noise: Sequence[float] | None) -> list[Setting]:
    """Every setting at every noise level of ``noise`` (None: unchanged), validated."""
    if noise is None:
        return list(settings)
    if not noise:
        raise ValueError("--noise is empty")
    return [with_noise(s, float(sd)) for s in settings for sd in noise]


def check_positive_int(value: object, option: str, *, maximum: int | None = None) -> int:
    """``value`` as an int >= 1 (and <= ``maximum``), else a one-line error naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{option} must be at most {maximum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def core_setting_names() -> list[str]:
    """Names of the core settings (polynomial/monomial x linear/sigmoid x exact/over)."""
    return list(CORE_SETTINGS)


def resolve_settings(
    names: Sequence[str] | None = None,
    *,
    gates: Sequence[str] | None = None,
    experts: Sequence[str] | None = None,
    k_true: Sequence[int] | None = None,
    k_fit: Sequence[int] | None = None,
    normalizers: Sequence[str] | None = None,
) -> list[Setting]:
    """Turn command-line choices into ``Setting`` objects (validated before any is built).

    ``normalizers`` (``--normalizer``; default: as chosen, softmax for the core settings)
    gives every chosen setting once per normaliser: ``"sigmoid"`` rebuilds it with the same
    true parameters under sigmoid gating (name marked ``-sig``, see
    :func:`~attnmoe.estimation.families.least_squares.truth.make_setting`).

    Either ``names`` (core-setting names) or the product ``gates x experts x k_true x k_fit``
    (missing axes default to the core values: gates polynomial,monomial; experts
    linear,sigmoid; k_true = the core k*; k_fit = k* and k*+1). Neither: all core settings.

    Raises:
        ValueError: unknown name, gate or expert; k < 1 or k > :data:`MAX_EXPERTS`;
            k_fit < k_true; both styles mixed.
    """
    if normalizers is not None:
        bad = [v for v in normalizers if v not in NORMALIZATIONS]
        if bad or not normalizers:
            raise ValueError(f"--normalizer: unknown normaliser {bad[0] if bad else ''!r}; valid: {', '.join(NORMALIZATIONS)}")
        chosen = resolve_settings(names, gates=gates, experts=experts, k_true=k_true, k_fit=k_fit)
        return _dedupe([s if s.normalization == nz else renormalized(s, nz) for s in chosen for nz in normalizers])
    product_given = any(v is not None for v in (gates, experts, k_true, k_fit))
    if names is not None and product_given:
        raise ValueError("use either --settings NAMES or --gates/--experts/--k-true/--k-fit, not both")
    core = list(CORE_SETTINGS.values())
    if not product_given:
        if names is None:
            return core
        out = []
        for name in names:
            try:
                out.append(get_setting(name))
            except (KeyError, ValueError) as err:
                raise ValueError(f"unknown setting {name!r}; known settings: {', '.join(named_settings())}") from err
        return _dedupe(out)
    k_true = list(k_true) if k_true is not None else sorted({s.k_true for s in core})
    for kt in k_true:
        _check_k(kt, "--k-true", "k*")
    pairs = [(kt, kf) for kt in k_true for kf in (list(k_fit) if k_fit is not None else [kt, kt + 1])]
    for kt, kf in pairs:
        _check_k(kf, "--k-fit", "k")
        if kf < kt:
            raise ValueError(
                f"k={kf} < k*={kt}: the fitted model must have at least as many "
                "experts as the truth (exact- or over-specified)"
            )
    gates = list(gates) if gates is not None else ["polynomial", "monomial"]
    experts = list(experts) if experts is not None else ["linear", "sigmoid"]
    out = [make_setting(g, e, kt, kf) for g in gates for e in experts for kt, kf in pairs]
    return _dedupe(out)


def renormalized(setting: Setting, normalization: str) -> Setting:
    """``setting``'s true parameters under another gating normaliser (a new truth, renamed)."""
    return make_setting(
        setting.gate, setting.expert, setting.k_true, setting.k_fit, setting.dim,
        params=setting.params, input_distribution=setting.input_distribution,
        input_scale=setting.input_scale, noise_std=setting.noise_std, normalization=normalization,
    )


def _check_k(k: int, option: str, symbol: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{option}: number of experts must be >= 1, got {symbol}={k!r}")
    if k > MAX_EXPERTS:
        raise ValueError(f"{option}: number of experts must be at most {MAX_EXPERTS}, got {symbol}={k}")


def _dedupe(settings: list[Setting]) -> list[Setting]:
    seen: dict[str, Setting] = {}
    for s in settings:
        seen.setdefault(s.name, s)
    return list(seen.values())


def validate_study(settings: Sequence[Setting], n_grid: Sequence[int], replicates: int) -> None:
    """Check a study before anything is written or allocated.

    Raises:
        TypeError: a setting that is not a :class:`~attnmoe.estimation.families.least_squares.truth.Setting`.
        ValueError: empty settings or grid, non-positive replicates, duplicate sizes,
            n > :data:`MAX_N`, k < 1, k < k*, or an n smaller than the number of free
            parameters of a fitted model.
    """
    if not settings:
        raise ValueError("no settings to run")
    if not n_grid:
        raise ValueError("the sample-size grid is empty")
    check_positive_int(replicates, "--replicates", maximum=MAX_REPLICATES)
    for n in n_grid:
        check_positive_int(n, "every sample size in --n-grid", maximum=MAX_N)
    if len(set(n_grid)) != len(n_grid):
        raise ValueError(f"the sample-size grid has duplicates: {list(n_grid)}")
    for s in settings:
        if not isinstance(s, Setting):
            raise TypeError(f"settings must be attnmoe.estimation.families.least_squares.truth.Setting, got {type(s).__name__}")
        if s.k_fit < s.k_true:
            raise ValueError(f"{s.name}: k={s.k_fit} < k*={s.k_true}")
        s.fit_layout.check_sample_size(min(n_grid), f"the fitted model of {s.name}")


# --------------------------------------------------------------------------------------------
# Parallelism
# --------------------------------------------------------------------------------------------


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch threads per worker: ``OMP_NUM_THREADS`` when set to a positive integer, else 1.

    One thread per worker is the default because OpenMP threads spin at every barrier: on a
    machine busier than its core count, two threads per worker made the ``quick`` preset tens
    of times slower, while one-thread workers only share the cores (``docs/rates.md``).
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else 1


def default_workers(n_jobs: int, threads: int) -> int:
    """Workers: as many one-thread processes as cores (``cores // threads``), at most one per job."""
    return max(1, min(available_cores() // max(1, threads), n_jobs))


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


def replicate_seeds(replicates: int, base_seed: int = 0) -> list[int]:
    """Seeds of the replicates: ``base_seed, base_seed+1, ...`` (the same at every n)."""
    return list(range(base_seed, base_seed + replicates))
