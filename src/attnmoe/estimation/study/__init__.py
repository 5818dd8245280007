"""Convergence-rate studies: settings x sample sizes x replicate seeds -> records -> slopes.

The study behind ``attnmoe rates`` (arXiv 2410.11222, ``docs/rates.md``) and every other
family's rate study. It measures how fast an estimator recovers the truth as the sample size n
grows, by fitting many replicates on a grid of n and regressing log(loss) on log(n). Modules,
from the bottom up:

* :mod:`~attnmoe.estimation.study.plan` — limits, validation (before anything is written),
  default workers and threads, the least-squares settings;
* :mod:`~attnmoe.estimation.study.records` — ``records.jsonl`` (read back with bad lines
  skipped and named, appended block by block), ``study.json`` and the records' identity;
* :mod:`~attnmoe.estimation.study.backends` — where jobs run: this process, a process pool, Ray;
* :mod:`~attnmoe.estimation.study.summary` / :mod:`~.sweep` — slopes with CIs that resample
  whole seeds;
* :mod:`~attnmoe.estimation.study.report` — the one writer of ``summary.json``, ``summary.md``
  and ``rates.png``;
* :mod:`~attnmoe.estimation.study.engine` — THE run / resume / jobs loop of every preset;
* :mod:`~attnmoe.estimation.study.registry` — THE table of presets of every family;
* :mod:`~attnmoe.estimation.study.presets.least_squares` — the least-squares preset table
  (:data:`LEAST_SQUARES_PRESETS`) and entries (:func:`run_study`, :func:`resummarize`).

Every family's fit defaults are ONE table, :data:`attnmoe.estimation.families.options.FIT_DEFAULTS`.

Files written in ``out`` (the output contract): ``study.json``, ``records.jsonl``,
``summary.json``, ``rates.png``, ``summary.md``.
"""

from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.study.backends import BACKENDS, map_jobs
from attnmoe.estimation.study.engine import (
    OUTPUT_FILES,
    StudyArgs,
    StudyPlan,
    StudyResult,
    StudySummary,
    run_plan,
)
from attnmoe.estimation.study.plan import (
    MAX_EXPERTS,
    MAX_N,
    core_setting_names,
    default_threads,
    default_workers,
    log_grid,
    replicate_seeds,
    resolve_settings,
    validate_study,
    with_noise_grid,
)
from attnmoe.estimation.study.records import (
    FIGURE_FILE,
    RECORDS_FILE,
    REQUIRED_KEYS,
    STUDY_FILE,
    SUMMARY_JSON,
    SUMMARY_MD,
    BadLine,
    RecordWriter,
    read_records,
    record_key,
)
from attnmoe.estimation.study.registry import PRESETS, StudyPreset, preset_table, register_preset, run_preset
from attnmoe.estimation.study.report import plot_rates, summary_markdown, write_outputs
from attnmoe.estimation.study.presets.least_squares import (
    LEAST_SQUARES_PRESETS,
    Preset,
    fit_block,
    fit_one,
    least_squares_plan,
    resummarize,
    run_study,
)
from attnmoe.estimation.study.summary import (
    ols_slope,
    setting_rng,
    slope_with_ci,
    summarize_records,
)
from attnmoe.estimation.study.sweep import split_noise_name, sweep_summary

__all__ = [
    "BACKENDS",
    "FIGURE_FILE",
    "LEAST_SQUARES_PRESETS",
    "MAX_EXPERTS",
    "MAX_N",
    "OUTPUT_FILES",
    "PRESETS",
    "RECORDS_FILE",
    "REQUIRED_KEYS",
    "STUDY_FILE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "BadLine",
    "FitOptions",
    "Preset",
    "RecordWriter",
    "StudyArgs",
    "StudyPlan",
    "StudyPreset",
    "StudyResult",
    "StudySummary",
    "core_setting_names",
    "default_threads",
    "default_workers",
    "fit_block",
    "fit_one",
    "least_squares_plan",
    "log_grid",
    "map_jobs",
    "ols_slope",
    "plot_rates",
    "preset_table",
    "read_records",
    "record_key",
    "register_preset",
    "replicate_seeds",
    "resolve_settings",
    "resummarize",
    "run_plan",
    "run_preset",
    "run_study",
    "setting_rng",
    "slope_with_ci",
    "split_noise_name",
    "summarize_records",
    "summary_markdown",
    "sweep_summary",
    "validate_study",
    "with_noise_grid",
    "write_outputs",
]
