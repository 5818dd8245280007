"""The ledger: each registered claim evaluated from the committed records by one fixed rule.

Reads ``docs/rates/<study>/records.jsonl`` (or ``records.jsonl.gz``, read directly) and
``docs/results/<comparison>/summary.json``; per claim, the per-seed numbers
(:mod:`attnmoe.claims.stats`), their t-interval, two-sided t-test p-values against the competing
and the predicted values and the exact sign-flip p-values against the same two (each
Holm-adjusted over the claim's declared family), and a verdict by :func:`decide`:

1. a claim the design cannot test (``Claim.testable``) -> **not testable by this design**;
2. a claim with a known blocker (``Claim.blocker``) -> **undecided**, with that cause;
3. fewer than :data:`MIN_CONVERGED` of the fits converged -> **undecided** (cause: software);
4. "reject v": BOTH the Holm-adjusted t-test p and the Holm-adjusted exact sign-flip p of H0
   "mean = v" are < α = 1 − LEVEL (a verdict needs the parametric and the distribution-free
   test to agree: with S seeds the sign-flip p is never below 2/2^S, so 3-4 seeds decide nothing).
   Direction claims: reject the competing value on the predicted side -> **confirmed**; on the
   other side -> **contradicted**. Value claims (predicted p, competing c): reject c on p's side
   while p is not rejected on c's side -> **confirmed**; reject p on c's side while c is not
   rejected -> **contradicted**; both rejected (the value lies between them) -> **undecided**
   (cause: method);
5. a "contradicted" of a claim a fixed truth cannot contradict (``contradictable=False``: its slow
   arm is a minimax lower bound) -> **undecided** (cause: method);
6. anything else -> **undecided** (cause: compute), with the seeds (and decades of n) that give
   80 % power at the family's Bonferroni level;
7. solver-path robustness (issue 22 item 2): an over-specified row's "confirmed" or "contradicted"
   stands only if the same claim, evaluated by steps 1-6 from refits restarted at a rounding-level
   perturbation (``docs/rates/<study>-perturbed/``, same command plus ``--perturb``; every row of
   its family taken from the perturbed records where they exist), gets the same word; otherwise
   -> **undecided** (cause: "solver-path dependent"); without such refits -> **undecided**
   (cause: compute, "robustness not checked"): a verdict that was not checked is not stated.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from attnmoe.claims import stats
from attnmoe.claims.registry import CLAIMS, NO_FAMILY, Claim, RateArm, RealArm
from attnmoe.train.stats import holm

__all__ = [
    "CONFIRMED", "CONTRADICTED", "MIN_CONVERGED", "NOT_TESTABLE", "PERTURBED", "UNDECIDED", "VERDICTS",
    "Row", "decide", "evaluate", "load_records", "perturbed",
]

CONFIRMED, CONTRADICTED, UNDECIDED = "confirmed", "contradicted", "undecided"
NOT_TESTABLE = "not testable by this design"
VERDICTS = (CONFIRMED, CONTRADICTED, UNDECIDED, NOT_TESTABLE)
#: Fewest seeds of a decisive run for an over-specified claim (issue 22 item 4).
MIN_DECISIVE_SEEDS = 24
#: Smallest converged fraction of a claim's fits for a verdict other than "undecided (software)".
MIN_CONVERGED = 0.9
#: Metrics of the real-data comparisons where lower is better (others: higher is better).
LOWER_IS_BETTER = ("test_mse", "test_mae", "val_loss", "test_loss", "val_mse")
_REQUIRED = ("setting", "n", "seed", "losses")
#: Suffix of a study folder that holds the same study refitted from starts perturbed at rounding
#: level (``attnmoe rates ... --perturb``): the solver-path robustness check of rule 7.
PERTURBED = "-perturbed"
_SD = re.compile(r"^(?P<base>.+)-sd(?P<sd>[0-9.eE+-]+)$")


@dataclass
class Row:
    """One evaluated claim (JSON-ready through :meth:`as_dict`)."""

    claim: Claim
    values: list[float]
    seeds: list[int]
    interval: stats.Interval | None
    p_competing: float | None
    p_predicted: float | None
    sign_flip: tuple[float, str] | None
    converged: float | None
    n_range: tuple[float, float] | None
    direction: str | None  # the predicted sign of (quantity - competing): "less" / "greater"
    files: list[str]
    sign_flip_predicted: float | None = None
    holm_competing: float | None = None
    holm_predicted: float | None = None
    holm_sf_competing: float | None = None
    holm_sf_predicted: float | None = None
    verdict: str = UNDECIDED
    cause: str = ""
    seeds_needed: int | None = None
    decades_needed: float | None = None
    family_size: int = 1
    metric: str | None = None  # the real-data comparison's primary metric
    command: str | None = None  # the real-data comparison's own command (its summary.json)
    robustness: str = ""  # rule 7's finding (set by :func:`evaluate`)
    seed_seconds: float | None = None  # fit seconds of one seed over the claim's cells (records' own times)
    recorded_seconds: float | None = None  # fit seconds of all the claim's records (the refit's cost)

    @property
    def seeds_to_run(self) -> int | None:
        """Seeds of the decisive run: the 80 % power count, and at least :data:`MIN_DECISIVE_SEEDS`
        for an over-specified claim (issue 22 item 4)."""
        if self.seeds_needed is None:
            return None
        return max(self.seeds_needed, MIN_DECISIVE_SEEDS) if self.claim.overspecified else self.seeds_needed

    @property
    def cpu_hours_needed(self) -> float | None:
        """Projected CPU hours of the decisive run: :attr:`seeds_to_run` times one seed's fit
        seconds (one thread each) from the records' own times, at the committed n grid, or for an
        over-specified claim spanning less than two decades at :data:`DECISIVE_GRID` (a power law in
        n fitted to the timed records); None where the records carry no times."""
        if self.seed_seconds is None or self.seeds_to_run is None:
            return None
        return self.seeds_to_run * self.seed_seconds / 3600

    @property
    def span(self) -> float | None:
        """Decades of n (or of n/σ²) the slopes span."""
        return None if self.n_range is None else math.log10(self.n_range[1] / self.n_range[0])

    def as_dict(self) -> dict[str, Any]:
        c, iv = self.claim, self.interval
        return {
            "id": c.id, "source": c.source, "statement": c.statement, "family": c.family,
            "arms": [vars(a) | {"kind": type(a).__name__} for a in c.arms],
            "predicted": c.predicted, "competing": c.competing, "direction": self.direction,
            "contradictable": c.contradictable, "testable": c.testable, "overspecified": c.overspecified,
            "seeds": self.seeds, "per_seed": self.values,
            "mean": None if iv is None else iv.mean, "ci_low": None if iv is None else iv.low,
            "ci_high": None if iv is None else iv.high, "sd": None if iv is None else iv.sd,
            "p_competing": self.p_competing, "p_predicted": self.p_predicted,
            "holm_competing": self.holm_competing, "holm_predicted": self.holm_predicted,
            "sign_flip_p": None if self.sign_flip is None else self.sign_flip[0],
            "sign_flip_p_predicted": self.sign_flip_predicted,
            "holm_sign_flip_competing": self.holm_sf_competing,
            "holm_sign_flip_predicted": self.holm_sf_predicted,
            "sign_flip_method": None if self.sign_flip is None else self.sign_flip[1],
            "converged_fraction": self.converged, "n_range": self.n_range, "decades": self.span,
            "verdict": self.verdict, "cause": self.cause, "seeds_needed_80": self.seeds_needed,
            "decades_needed_80": self.decades_needed, "robustness": self.robustness,
            "seed_seconds": self.seed_seconds, "seeds_to_run": self.seeds_to_run,
            "cpu_hours_needed": self.cpu_hours_needed,
            "decide": c.decide, "note": c.note, "files": self.files, "metric": self.metric,
            "command": self.command,
        }


def perturbed(claim: Claim) -> Claim:
    """The same claim read from the perturbed refits of its studies (rule 7)."""
    arms = tuple(replace(a, study=a.study + PERTURBED) if isinstance(a, RateArm) else a for a in claim.arms)
    return replace(claim, arms=arms)


def _records_path(root: Path, arm: RateArm) -> Path:
    path = root / "rates" / arm.study / arm.records
    if not path.exists() and not path.name.endswith(".gz") and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    return path


def load_records(path: Path) -> list[dict[str, Any]]:
    """The usable records of a ``records.jsonl`` or ``.jsonl.gz`` (first of duplicate keys kept)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such records file")
    opener = gzip.open if path.suffix == ".gz" else open
    out, seen = [], set()
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or any(k not in rec for k in _REQUIRED):
                continue
            key = (rec["setting"], rec["n"], rec["seed"])
            if key not in seen:
                seen.add(key)
                out.append(rec)
    return out


class _Cache:
    def __init__(self, root: Path) -> None:
        self.root, self.rates, self.results = root, {}, {}

    def records(self, arm: RateArm) -> tuple[list[dict[str, Any]], Path]:
        path = _records_path(self.root, arm)
        if path not in self.rates:
            self.rates[path] = load_records(path)
        return self.rates[path], path

    def result(self, name: str) -> tuple[dict[str, Any], Path]:
        path = self.root / "results" / name / "summary.json"
        if path not in self.results:
            if not path.is_file():
                raise ValueError(f"{path}: no such comparison summary")
            self.results[path] = json.loads(path.read_text(encoding="utf-8"))
        return self.results[path], path


def _arm_records(cache: _Cache, arm: RateArm) -> Iterator[tuple[dict[str, Any], float]]:
    """The records ``arm`` reads, each with its x: n, or n/σ² for a sweep (every
    ``<setting>-sd<σ>`` except the σ of ``drop_sd``)."""
    for r in cache.records(arm)[0]:
        name, n = str(r["setting"]), float(r["n"])
        if arm.sweep:
            m = _SD.match(name)
            if m is None or m["base"] != arm.setting or any(math.isclose(float(m["sd"]), d) for d in arm.drop_sd):
                continue
            yield r, n / float(m["sd"]) ** 2
        elif name == arm.setting:
            yield r, n


def _arm_slopes(cache: _Cache, arm: RateArm) -> tuple[dict[int, float], list[bool], tuple[float, float], str,
                                                      list[tuple[float, float]] | None]:
    """Per-seed slopes, convergence flags, x range, records path and the (n, fit seconds) of every
    record the arm reads (None when a record carries no time)."""
    path = cache.records(arm)[1]
    points: dict[int, list[tuple[float, float]]] = {}
    conv, xs = [], []
    timing: list[tuple[float, float]] | None = []
    for r, x in _arm_records(cache, arm):
        conv.append(bool(r.get("converged", True)))
        sec = r.get("seconds")
        if not isinstance(sec, (int, float)):
            timing = None
        elif timing is not None:
            timing.append((float(r["n"]), float(sec)))
        v = r["losses"].get(arm.loss)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            points.setdefault(int(r["seed"]), []).append((math.log(x), math.log(v)))
            xs.append(x)
    if not xs:
        raise ValueError(f"{path}: no usable '{arm.loss}' values for setting {arm.setting!r}")
    return stats.per_seed_slopes(points), conv, (min(xs), max(xs)), str(path), timing


def _real_values(cache: _Cache, arm: RealArm) -> tuple[dict[int, float], str, str, str, str | None]:
    summary, path = cache.result(arm.result)
    metric = summary["primary_metric"]

    def per_seed(variant: str) -> dict[int, float]:
        if variant not in summary["variants"]:
            raise ValueError(f"{path}: no variant {variant!r}")
        return {int(run["seed"]): float(run[metric]) for run in summary["variants"][variant]["runs"]}

    a, b = per_seed(arm.variant), per_seed(arm.baseline)
    direction = "less" if metric in LOWER_IS_BETTER else "greater"
    diffs = {s: a[s] - b[s] for s in sorted(set(a) & set(b))}
    return diffs, direction, str(path), metric, summary.get("command")


#: n grid of a decisive over-specified run (issue 22 item 4: two decades of n, up to 1e5), as the
#: paper preset's over-specified half uses it
DECISIVE_GRID = tuple(round(v) for v in np.logspace(3, 5, 9))


def _extrapolated_seed_seconds(per_setting: Sequence[Sequence[tuple[float, float]]]) -> float | None:
    """One seed's fit seconds over :data:`DECISIVE_GRID` for each setting: a least-squares power
    law seconds = c n^b fitted to the setting's timed records (b >= 1 enforced: a fit's cost does
    not grow slower than its data), summed over the settings; None if a setting spans one n."""
    total = 0.0
    for cells in per_setting:
        ns = np.log([n for n, _ in cells])
        if len(set(ns.tolist())) < 2:
            return None
        ts = np.log([max(t, 1e-9) for _, t in cells])
        b, a = np.polyfit(ns, ts, 1)
        b = max(float(b), 1.0)
        a = float(np.mean(ts - b * ns))
        total += float(sum(math.exp(a + b * math.log(n)) for n in DECISIVE_GRID))
    return total


def _measure(cache: _Cache, claim: Claim) -> Row:
    files: list[str] = []
    converged: float | None = None
    seed_seconds: float | None = None
    recorded_seconds: float | None = None
    n_range = None
    direction = claim.predicted if isinstance(claim.predicted, str) else None
    metric = command = None
    if not claim.arms:  # a claim no committed study measures (its ``testable`` says why)
        return Row(claim, [], [], None, None, None, None, None, None, direction, [])
    if isinstance(claim.arms[0], RealArm):
        values, better, f, metric, command = _real_values(cache, claim.arms[0])
        files.append(f)
        direction = better
    else:
        per_arm, conv_all = [], []
        per_setting: dict[tuple[str, str], list[tuple[float, float]] | None] = {}  # each (file, setting) once
        for arm in claim.arms:
            slopes, conv, rng_, f, cells = _arm_slopes(cache, arm)
            per_setting[(f, arm.setting)] = cells
            per_arm.append(slopes)
            conv_all += conv
            files.append(f)
            n_range = rng_ if n_range is None else (min(n_range[0], rng_[0]), max(n_range[1], rng_[1]))
        common = sorted(set.intersection(*(set(s) for s in per_arm)))
        values = {s: per_arm[0][s] - (per_arm[1][s] if len(per_arm) > 1 else 0.0) for s in common}
        converged = float(np.mean(conv_all)) if conv_all else None
        n_seeds = len({s for slopes in per_arm for s in slopes})
        if all(cells is not None for cells in per_setting.values()):
            recorded_seconds = sum(t for cells in per_setting.values() for _, t in cells)
            seed_seconds = recorded_seconds / n_seeds if n_seeds else None
            if claim.overspecified and n_range and math.log10(n_range[1] / n_range[0]) < 2 - 1e-9:
                seed_seconds = _extrapolated_seed_seconds(list(per_setting.values()))
    seeds = sorted(values)
    vals = [values[s] for s in seeds]
    rel = sorted({Path(f).relative_to(cache.root).as_posix() for f in files})
    row = Row(claim, vals, seeds, None, None, None, None, converged, n_range, direction, rel, metric=metric,
              command=command, seed_seconds=seed_seconds, recorded_seconds=recorded_seconds)
    if len(vals) >= 2:
        row.interval = stats.t_interval(vals)
        row.p_competing = stats.t_test_p(vals, claim.competing)
        if isinstance(claim.predicted, float):
            row.p_predicted = stats.t_test_p(vals, claim.predicted)
            row.sign_flip_predicted = stats.sign_flip_p(vals, claim.predicted)[0]
        row.sign_flip = stats.sign_flip_p(vals, claim.competing)
    return row


def _side(value: float, ref: float) -> str:
    return "less" if value < ref else "greater"


def _rejects(t_p: float | None, sf_p: float | None, alpha: float) -> bool:
    return t_p is not None and sf_p is not None and t_p < alpha and sf_p < alpha


def decide(row: Row, alpha: float = 1 - stats.LEVEL) -> tuple[str, str]:
    """The verdict and its cause for an evaluated row (the rule of the module docstring)."""
    c = row.claim
    if c.testable is not None:
        return NOT_TESTABLE, c.testable
    if c.blocker is not None:
        return UNDECIDED, f"{c.blocker[0]}: {c.blocker[1]}"
    if row.interval is None:
        return UNDECIDED, f"compute: {len(row.values)} seed(s), a t-interval needs 2"
    if row.converged is not None and row.converged < MIN_CONVERGED:
        return UNDECIDED, (f"software: {100 * row.converged:.1f} % of the fits converged "
                           f"(< {100 * MIN_CONVERGED:.0f} %)")
    mean = row.interval.mean
    rej_c = _rejects(row.holm_competing, row.holm_sf_competing, alpha)
    if isinstance(c.predicted, float):
        want = _side(c.predicted, c.competing)
        rej_p = (_rejects(row.holm_predicted, row.holm_sf_predicted, alpha)
                 and _side(mean, c.predicted) != want)  # rejected on c's side of p
        beyond_c = _side(mean, c.competing) != want
        if rej_c and not beyond_c and not rej_p:
            verdict = CONFIRMED
        elif rej_p and (not rej_c or beyond_c):
            verdict = CONTRADICTED
        elif rej_c and rej_p:
            return UNDECIDED, ("method: the value lies between the predicted and the competing one "
                               "(both excluded): neither exponent describes this range of n")
        else:
            verdict = UNDECIDED
    else:
        want = row.direction or "less"
        verdict = UNDECIDED
        if rej_c:
            verdict = CONFIRMED if _side(mean, c.competing) == want else CONTRADICTED
    if verdict == CONTRADICTED and not c.contradictable:
        return UNDECIDED, ("method: the data point against the claim, but its slow arm is a local-minimax "
                           "lower bound that a fixed-truth study cannot contradict")
    if verdict == CONFIRMED and isinstance(c.predicted, float) and _rejects(
            row.holm_predicted, row.holm_sf_predicted, alpha):
        return verdict, ("beyond the prediction: the predicted value is excluded on the far side "
                         "(faster than predicted on this range of n)")
    if verdict != UNDECIDED:
        return verdict, ""
    floor = min(1.0, row.family_size * 2.0 / 2 ** row.interval.seeds)  # smallest Holm-adjusted sign-flip p
    what = "both the predicted and the competing value" if isinstance(c.predicted, float) else "the competing value"
    if floor >= alpha:
        return UNDECIDED, (f"compute: {row.interval.seeds} seeds: the smallest Holm-adjusted exact sign-flip p "
                           f"in this family of {row.family_size} is {floor:.3g}, so no data at this count can decide")
    return UNDECIDED, f"compute: the tests do not exclude {what} (after Holm over the family)"


def _power(row: Row, family_size: int) -> None:
    c, iv = row.claim, row.interval
    if iv is None:
        return
    effect = (c.predicted - c.competing) if isinstance(c.predicted, float) else (iv.mean - c.competing)
    alpha = (1 - stats.LEVEL) / max(1, family_size)
    needed = stats.seeds_for_power(effect, iv.sd, alpha=alpha)
    floor = math.ceil(math.log2(2 / alpha))  # fewest seeds whose exact sign-flip p can be < alpha
    row.seeds_needed = None if needed is None else max(needed, floor + (2.0 / 2**floor >= alpha))
    span = row.span
    if row.seeds_needed is not None and span:
        row.decades_needed = span * math.sqrt(row.seeds_needed / iv.seeds)


def _decide_all(cache: _Cache, claims: Sequence[Claim]) -> list[Row]:
    """Rules 1-6 for every claim: measure, Holm over each family, decide."""
    rows = [_measure(cache, c) for c in claims]
    for fam in sorted({r.claim.family for r in rows}):
        members = [r for r in rows if r.claim.family == fam]
        if fam == NO_FAMILY:  # each row its own test
            for r in members:
                r.holm_competing, r.holm_predicted = r.p_competing, r.p_predicted
                r.holm_sf_competing = None if r.sign_flip is None else r.sign_flip[0]
                r.holm_sf_predicted = r.sign_flip_predicted
            continue
        adj = [holm({r.claim.id: get(r) for r in members}) for get in (
            lambda r: r.p_competing, lambda r: r.p_predicted,
            lambda r: None if r.sign_flip is None else r.sign_flip[0], lambda r: r.sign_flip_predicted)]
        for r in members:
            (r.holm_competing, r.holm_predicted, r.holm_sf_competing,
             r.holm_sf_predicted) = (a[r.claim.id] for a in adj)
    for r in rows:
        r.family_size = 1 if r.claim.family == NO_FAMILY else sum(x.claim.family == r.claim.family for x in rows)
        r.verdict, r.cause = decide(r)
    return rows


def _cells(cache: _Cache, arm: RateArm) -> set[tuple[str, int, int]]:
    """The (setting, n, seed) keys of the records ``arm`` reads."""
    return {(str(r["setting"]), int(r["n"]), int(r["seed"])) for r, _ in _arm_records(cache, arm)}


def _has_perturbed(cache: _Cache, claim: Claim) -> bool:
    """Whether the perturbed refits hold every (setting, n, seed) the claim reads (rule 7)."""
    if not claim.arms or not all(isinstance(a, RateArm) for a in claim.arms):
        return False
    return all(_records_path(cache.root, moved).is_file() and _cells(cache, arm) <= _cells(cache, moved)
               for arm, moved in zip(claim.arms, perturbed(claim).arms))


def _robustness(row: Row, other: Row | None) -> None:
    """Rule 7 on ``row`` given its evaluation from the perturbed refits (None: none committed)."""
    c = row.claim
    if not c.arms or isinstance(c.arms[0], RealArm):
        row.robustness = "n/a (real data: deterministic runs)" if c.arms else "n/a (no records)"
        return
    if not c.overspecified:
        row.robustness = "not needed: exact-specified records moved < 1 % between solver versions (issue 22)"
        return
    folders = ", ".join(sorted({f"{a.study}{PERTURBED}" for a in c.arms if isinstance(a, RateArm)}))
    if other is None:
        cost = "" if row.recorded_seconds is None else f"; the refit costs ≈ {row.recorded_seconds / 3600:.2g} CPU-h"
        row.robustness = f"not checked: no perturbed refits ({folders}{cost})"
        if row.verdict in (CONFIRMED, CONTRADICTED):
            row.cause = (f"compute: '{row.verdict}' from these records, but solver-path robustness is not checked "
                         f"(rule 7: refit the study with --perturb into {folders})")
            row.verdict = UNDECIDED
        return
    row.robustness = f"checked ({folders}): '{other.verdict}' from the perturbed refits"
    if row.verdict in (CONFIRMED, CONTRADICTED) and other.verdict != row.verdict:
        row.cause = (f"solver-path dependent: '{row.verdict}' from these records, '{other.verdict}' from the "
                     f"refits perturbed at rounding level ({folders})")
        row.verdict = UNDECIDED


def evaluate(root: Path, claims: Sequence[Claim] = CLAIMS) -> list[Row]:
    """Every claim measured from the records under ``root`` (the ``docs`` folder) and decided
    (rules 1-7 of the module docstring)."""
    cache = _Cache(Path(root))
    rows = _decide_all(cache, claims)
    swap = {c.id: _has_perturbed(cache, c) for c in claims if c.overspecified}
    others: dict[str, Row] = {}
    if any(swap.values()):
        alt = _decide_all(cache, [perturbed(c) if swap.get(c.id) else c for c in claims])
        others = {r.claim.id: r for r in alt if swap.get(r.claim.id)}
    for r in rows:
        _robustness(r, others.get(r.claim.id))
        if r.verdict == UNDECIDED:
            _power(r, r.family_size)
    return rows
