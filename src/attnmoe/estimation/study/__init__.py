"""Convergence-rate study: settings x sample sizes x replicate seeds -> records -> slopes.

The study behind ``attnmoe rates`` (arXiv 2410.11222, ``docs/rates.md``). It measures how fast
the least-squares estimator of a softmax-gated mixture of experts recovers the truth as the
sample size n grows, by fitting many replicates on a grid of n and regressing log(loss) on
log(n). Modules, from the bottom up:

* :mod:`~attnmoe.estimation.study.plan` — presets, settings, validation (before anything is
  written), default workers and threads, the list of ``(setting, n, seeds)`` jobs;
* :mod:`~attnmoe.estimation.study.records` — ``records.jsonl`` (read back with bad lines
  skipped and named, appended block by block) and ``study.json`` (the fit options);
* :mod:`~attnmoe.estimation.study.backends` — the unit of work :func:`fit_block` and where it
  runs: in this process, on a process pool, on Ray;
* :mod:`~attnmoe.estimation.study.summary` — slopes with CIs that resample whole seeds;
* :mod:`~attnmoe.estimation.study.report` — ``summary.md`` and ``rates.png``;
* :mod:`~attnmoe.estimation.study.run` — :func:`run_study` and :func:`resummarize`.

Files written in ``out`` (the output contract): ``study.json``, ``records.jsonl``,
``summary.json``, ``rates.png``, ``summary.md``.
"""

from attnmoe.estimation.options import FitOptions
from attnmoe.estimation.study.backends import (
    BACKENDS,
    fit_block,
    fit_one,
    setting_from_spec,
    setting_spec,
)
from attnmoe.estimation.study.plan import (
    MAX_EXPERTS,
    MAX_N,
    PRESETS,
    Job,
    Preset,
    core_setting_names,
    default_threads,
    default_workers,
    log_grid,
    plan_jobs,
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
from attnmoe.estimation.study.report import plot_rates, summary_markdown, write_outputs
from attnmoe.estimation.study.run import StudyResult, resummarize, run_study
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
    "MAX_EXPERTS",
    "MAX_N",
    "PRESETS",
    "RECORDS_FILE",
    "REQUIRED_KEYS",
    "STUDY_FILE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "BadLine",
    "FitOptions",
    "Job",
    "Preset",
    "RecordWriter",
    "StudyResult",
    "core_setting_names",
    "default_threads",
    "default_workers",
    "fit_block",
    "fit_one",
    "log_grid",
    "ols_slope",
    "plan_jobs",
    "plot_rates",
    "read_records",
    "record_key",
    "replicate_seeds",
    "resolve_settings",
    "resummarize",
    "run_study",
    "setting_from_spec",
    "setting_rng",
    "setting_spec",
    "slope_with_ci",
    "split_noise_name",
    "summarize_records",
    "summary_markdown",
    "sweep_summary",
    "validate_study",
    "with_noise_grid",
    "write_outputs",
]
