"""Which policy is better here? Run several policies over seeds on one checkpoint, at equal budgets.

``selfimprove-rl compare CONFIG --policies a,b,c --seeds N`` runs every policy on the same
checkpoint and splits (the checkpoint is frozen once into the output folder; the splits come
from the env's ``split_seed``), once per seed, each run stopped by the same budget in model
calls (the env's ``max_calls``: every replay, gate and judge call counts). Runs go to worker
processes when ``jobs`` > 1. The output folder holds:

``compare.csv`` and ``compare.md`` (per policy: runs, the mean and 95% interval of the final
test and holdout scores with n, calls and tokens; the paired difference to the reference
policy on the same seeds with its interval and p-value; and the steps and calls until the
live build's test score first reached the threshold), ``compare.png`` (the live build's test
score against model calls from the baseline at the start to the final report, and its paired
difference to the reference, each mean with its 95% band), ``runs.jsonl`` (one line per run),
``checkpoint.json``, and each run's own directory under ``runs/<policy>/seed-<n>/``.

The config is an experiment TOML (see :mod:`selfimprove_rl.config`) with a ``[compare]``
table::

    [compare]
    seeds = 5
    budget_calls = 1200       # the equal budget, in model calls
    threshold = 0.85          # for "steps to threshold"
    reference = "random"      # paired differences against this policy (default: the first)

    [[compare.policies]]
    name = "random"

    [[compare.policies]]
    name = "ucb1"
    label = "ucb1-6arms"      # optional column label
    kwargs = { arms = 6 }

A policy of your own is ``name = "package.module:ClassName"``.

Statistics (:mod:`selfimprove_rl.stats`): intervals are Student's t, ``mean ± t(0.975, n-1)
· sd / sqrt(n)``, clipped to what the value can be (scores to [0, 1]; none for one run);
differences are paired by seed (every policy runs on the same seeds, checkpoint and splits)
with the paired t-test's two-sided p-value. With 2-5 seeds they are wide: read n with them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from selfimprove_rl.config import (
    ExperimentConfig,
    parse_config,
    read_toml,
    validation_problems,
)
from selfimprove_rl.config_files import apply_settings, settings_error
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import atomic_write_text, read_jsonl
from selfimprove_rl.hooks import Integrations
from selfimprove_rl.stats import (
    COUNT_RANGE,
    DIFFERENCE_RANGE,
    SCORE_RANGE,
    band,
    paired_difference,
    t_interval,
)

_MEASURES = {"test": SCORE_RANGE, "holdout": SCORE_RANGE, "calls": COUNT_RANGE}
_MEASURES |= {"tokens": COUNT_RANGE}
_PAIRED = ("test", "holdout")
COMPARE_COLUMNS = (
    "policy",
    "runs",
    "failed",
    *(f"{key}_{part}" for key in _MEASURES for part in ("mean", "low", "high", "n")),
    "steps_mean",
    "reference",
    *(f"{key}_diff_{part}" for key in _PAIRED for part in ("mean", "low", "high", "p", "n")),
    "threshold",
    "reached",
    "steps_to_threshold_mean",
    "calls_to_threshold_mean",
)


class PolicyEntry(BaseModel):
    """One policy of a comparison: its name (or ``module:Class``), label and kwargs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registered policy name or 'module:Class'.")
    label: str | None = Field(default=None, description="Label in tables and plots.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor kwargs.")

    @property
    def title(self) -> str:
        """The label, or the name."""
        return self.label or self.name


class CompareConfig(BaseModel):
    """The ``[compare]`` table: policies, seeds, the equal call budget, the threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: list[PolicyEntry] = Field(default_factory=list, description="Policies to compare.")
    seeds: int = Field(default=3, ge=1, description="Runs per policy (seeds first_seed...).")
    first_seed: int = Field(default=0, description="The first seed.")
    budget_calls: int | None = Field(
        default=None, ge=1, description="Model calls each run may spend (default: env.max_calls)."
    )
    threshold: float | None = Field(
        default=None, description="Test score for 'steps to threshold' (default: stopping's)."
    )
    reference: str | None = Field(
        default=None,
        description="Policy (label) the others are compared with, seed by seed (default: the "
        "first).",
    )
    jobs: int | None = Field(
        default=None, ge=1, description="Worker processes (1: this process; default: 2 or CPUs)."
    )

    @model_validator(mode="after")
    def _labels_unique(self) -> CompareConfig:
        labels = [p.title for p in self.policies]
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            raise ValueError(f"policy labels must be unique; duplicated: {duplicated}")
        return self


class RunRecord(BaseModel):
    """One finished (or failed) run of a comparison."""

    model_config = ConfigDict(frozen=True)

    policy: str
    seed: int
    run_dir: str
    error: str | None = None
    test: float | None = None
    holdout: float | None = None
    calls: int | None = None
    tokens: int | None = None
    steps: int | None = None
    baseline_test: float | None = None
    steps_to_threshold: int | None = None
    calls_to_threshold: int | None = None
    curve: list[tuple[int, float]] = Field(
        default_factory=list,
        description="(cumulative calls, live build test score): the baseline at the start, "
        "each step, and the final report (whose calls are the run's total).",
    )


class CompareResult(BaseModel):
    """Where a comparison wrote its files, its per-policy rows, and every run."""

    model_config = ConfigDict(frozen=True)

    out_dir: Path
    rows: list[dict[str, Any]]
    runs: list[RunRecord]


def load_compare_config(
    path: str | Path, *, settings: Sequence[str] = ()
) -> tuple[ExperimentConfig, CompareConfig]:
    """Read an experiment TOML with a ``[compare]`` table, with ``--set a.b=value`` settings.

    Args:
        path: a TOML file or a shipped config name (``compare_noisy``).
        settings: changes applied before validation; ``compare.*`` keys go to the
            ``[compare]`` table.

    Raises:
        ConfigError: missing file, invalid TOML, or an invalid field (named).
    """
    data = read_toml(path)
    section = data.pop("compare", {})
    ours = [s for s in settings if s.strip().startswith("compare.")]
    experiment = parse_config(
        data, source=str(path), settings=[s for s in settings if s not in ours]
    )
    if not ours:
        return experiment, parse_compare(section, source=str(path))
    section = apply_settings({"compare": section}, ours)["compare"]
    try:
        return experiment, CompareConfig.model_validate(section)
    except ValidationError as exc:
        raise settings_error(exc, CompareConfig, ours, prefix="compare.") from exc


def parse_compare(section: dict[str, Any], *, source: str = "compare") -> CompareConfig:
    """Validate a ``[compare]`` mapping.

    Raises:
        ConfigError: listing every invalid field as ``compare.a.b: message``.
    """
    try:
        return CompareConfig.model_validate(section)
    except ValidationError as exc:
        problems = validation_problems(exc, prefix="compare.")
        raise ConfigError(f"Invalid [compare] section ({source}):\n{problems}") from exc


def select_policies(compare: CompareConfig, names: Sequence[str] | None) -> list[PolicyEntry]:
    """Return the entries for ``names`` (a config entry's kwargs when its label or name matches).

    Raises:
        ConfigError: no policy to compare.
    """
    if not names:
        if not compare.policies:
            raise ConfigError(
                "No policies to compare: pass --policies a,b,c or add [[compare.policies]] "
                "entries to the config."
            )
        return list(compare.policies)
    by_label = {p.title: p for p in compare.policies}
    by_name = {p.name: p for p in compare.policies}
    chosen = [by_label.get(n) or by_name.get(n) or PolicyEntry(name=n) for n in names]
    labels = [p.title for p in chosen]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"Expects distinct policies, got {list(names)}.")
    return chosen


# ---------------------------------------------------------------------- running
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_one(
    config_json: str,
    label: str,
    run_dir: str,
    threshold: float | None,
    integrations: Integrations | None = None,
) -> RunRecord:
    """Run one experiment and summarise it (the unit of work a worker process runs)."""
    import traceback

    from selfimprove_rl.runner import run_experiment

    _one_torch_thread()
    config = parse_config(json.loads(config_json), source="compare")
    try:
        result = run_experiment(config, out=run_dir, progress=False, integrations=integrations)
    except Exception as exc:  # a failed run is recorded and counted, the others go on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return RunRecord(
            policy=label,
            seed=config.seed,
            run_dir=run_dir,
            error=f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})",
        )
    return summarise_run(label, config.seed, Path(run_dir), result.summary, threshold)


def summarise_run(
    label: str, seed: int, run_dir: Path, summary: dict[str, Any], threshold: float | None
) -> RunRecord:
    """Build a run's record from its summary and ``steps.jsonl``."""
    baseline_test = float(summary["baseline"]["test"])
    live = baseline_test
    lines = list(read_jsonl(run_dir / "steps.jsonl"))
    start = int(lines[0]["cumulative_calls"]) - int(lines[0]["calls"]) if lines else 0
    curve: list[tuple[int, float]] = [(start, baseline_test)]
    reached_step: int | None = 0 if threshold is not None and baseline_test >= threshold else None
    reached_calls: int | None = start if reached_step == 0 else None
    for line in lines:
        if line.get("live_test") is not None:
            live = float(line["live_test"])
        step, calls = int(line["step"]), int(line["cumulative_calls"])
        curve.append((calls, live))
        if threshold is not None and reached_step is None and live >= threshold:
            reached_step, reached_calls = step, calls
    curve.append((int(summary["calls"]), float(summary["test"])))
    return RunRecord(
        policy=label,
        seed=seed,
        run_dir=str(run_dir),
        test=float(summary["test"]),
        holdout=float(summary["holdout"]),
        calls=int(summary["calls"]),
        tokens=int(summary["tokens"]),
        steps=int(summary["steps"]),
        baseline_test=baseline_test,
        steps_to_threshold=reached_step,
        calls_to_threshold=reached_calls,
        curve=curve,
    )


def _budget(experiment: ExperimentConfig, compare: CompareConfig) -> int:
    budget = compare.budget_calls or experiment.env.get("max_calls")
    if not budget:
        raise ConfigError(
            "A comparison needs an equal call budget for every run: set [compare] "
            "budget_calls = N (or env.max_calls, or --budget-calls N)."
        )
    return int(budget)


def run_compare(
    experiment: ExperimentConfig,
    compare: CompareConfig,
    *,
    policies: Sequence[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    integrations: Integrations | None = None,
    executor: RunExecutor | None = None,
) -> CompareResult:
    """Run every policy over every seed at one call budget, then write the table and plot.

    Args:
        experiment: the shared experiment (data, target, env, gate, stopping).
        compare: policies, seeds, budget, threshold, jobs.
        policies: names (or labels) to run instead of the config's list.
        out: the output folder (default: ``<out_dir>/compare-<name>-<UTC time>``); it must
            not hold files yet.
        progress: show a progress bar over runs.
        integrations: the outside systems the runs may use (Phoenix data and callbacks),
            as the caller wires them (see :func:`~selfimprove_rl.runner.run_experiment`).
        executor: where the runs execute (default: :class:`LocalExecutor` with
            ``compare.jobs`` workers); the table does not depend on it.

    Returns:
        The folder, the table rows and every run's record.

    Raises:
        ConfigError: no policies, no budget, a non-empty output folder, or a worker process
            that died (with ``jobs`` > 1 a calling script needs an
            ``if __name__ == "__main__":`` guard: workers are spawned and re-import it).
    """
    entries = select_policies(compare, policies)
    budget = _budget(experiment, compare)
    threshold = compare.threshold
    if threshold is None:
        threshold = experiment.stopping.test_threshold
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(out) if out else Path(experiment.out_dir) / f"compare-{experiment.name}-{stamp}"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty; choose another --out.")
    out_dir.mkdir(parents=True, exist_ok=True)

    from selfimprove_rl.runner import load_checkpoint_for

    checkpoint_path = (out_dir / "checkpoint.json").resolve()
    load_checkpoint_for(experiment, integrations=integrations).save(checkpoint_path)
    shared = experiment.with_overrides(
        **{"data.kind": "checkpoint", "data.path": str(checkpoint_path), "env.max_calls": budget}
    )
    jobs: list[RunJob] = []
    for entry in entries:
        for seed in range(compare.first_seed, compare.first_seed + compare.seeds):
            config = shared.with_overrides(
                **{"seed": seed, "policy.name": entry.name, "policy.kwargs": entry.kwargs}
            )
            run_dir = out_dir / "runs" / _safe(entry.title) / f"seed-{seed}"
            jobs.append((config.model_dump_json(), entry.title, str(run_dir)))
    records = _execute(
        jobs, threshold, executor or LocalExecutor(compare.jobs), progress, integrations
    )
    order = {e.title: i for i, e in enumerate(entries)}
    records.sort(key=lambda r: (order[r.policy], r.seed))
    labels = [e.title for e in entries]
    reference = compare.reference or labels[0]
    if reference not in labels:
        raise ConfigError(
            f"Expects [compare] reference to be one of the compared policies {labels}, got "
            f"{reference!r}."
        )
    rows = table_rows(records, labels, threshold, reference=reference)
    title = f"{experiment.name}: {budget} calls per run"
    write_outputs(out_dir, rows, records, title=title, reference=reference)
    return CompareResult(out_dir=out_dir, rows=rows, runs=records)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


RunJob = tuple[str, str, str]
"""One run of a comparison: its experiment config as JSON, its policy label, its run dir."""


class RunExecutor(Protocol):
    """Runs a comparison's jobs somewhere and yields each record as its run finishes.

    :class:`LocalExecutor` (this process or local worker processes) is the default;
    :class:`~selfimprove_rl.ray_executor.RayExecutor` runs one Ray task per run.
    """

    def run(
        self,
        jobs: Sequence[RunJob],
        threshold: float | None,
        integrations: Integrations | None = None,
    ) -> Iterator[RunRecord]:
        """Run every job (:func:`run_one`); yield the records in the order they finish."""
        ...


class LocalExecutor:
    """Run in this process (``workers`` <= 1) or in spawned local worker processes.

    Args:
        workers: worker processes (default: :func:`default_jobs`).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_jobs()

    def run(
        self,
        jobs: Sequence[RunJob],
        threshold: float | None,
        integrations: Integrations | None = None,
    ) -> Iterator[RunRecord]:
        """Run every job; yield the records in the order they finish.

        Raises:
            ConfigError: a worker process died (see :func:`run_compare`).
        """
        if self.workers <= 1 or len(jobs) <= 1:
            for config_json, label, run_dir in jobs:
                yield run_one(config_json, label, run_dir, threshold, integrations)
            return
        import multiprocessing

        # spawn: a fresh interpreter per worker (no forked event loops or torch threads).
        context = multiprocessing.get_context("spawn")
        workers = min(self.workers, len(jobs))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(run_one, *job, threshold, integrations) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BrokenProcessPool as exc:
                raise ConfigError(
                    "A compare worker process died before finishing its run. Worker processes "
                    "are spawned: they re-import the script that called run_compare, so from a "
                    'script put the call under `if __name__ == "__main__":`, or use jobs=1 '
                    "(--jobs 1) to run in this process."
                ) from exc


def _execute(
    jobs: list[RunJob],
    threshold: float | None,
    executor: RunExecutor,
    progress: bool,
    integrations: Integrations | None = None,
) -> list[RunRecord]:
    bar = _bar(len(jobs), progress)
    records: list[RunRecord] = []
    for record in executor.run(jobs, threshold, integrations):
        records.append(record)
        _tick(bar, record.policy)
    if bar is not None:
        bar.close()
    return records


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="compare", unit="run")


def _tick(bar: Any, label: str) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(last=label)


# ---------------------------------------------------------------------- the table
def table_rows(
    records: Sequence[RunRecord],
    labels: Sequence[str],
    threshold: float | None,
    *,
    reference: str | None = None,
) -> list[dict[str, Any]]:
    """Return one row per policy (see :data:`COMPARE_COLUMNS`).

    Args:
        records: every run.
        labels: the policies, in table order.
        threshold: the test score of "steps to threshold".
        reference: the policy the paired differences are taken against (default: the first).
    """
    reference = reference or (labels[0] if labels else None)
    by_seed = {
        label: {r.seed: r for r in records if r.policy == label and r.error is None}
        for label in labels
    }
    rows = []
    for label in labels:
        runs = [r for r in records if r.policy == label]
        done = list(by_seed[label].values())
        row: dict[str, Any] = {"policy": label, "runs": len(done), "failed": len(runs) - len(done)}
        for key, bounds in _MEASURES.items():
            interval = t_interval([float(getattr(r, key)) for r in done], bounds=bounds)
            for part in ("mean", "low", "high", "n"):
                row[f"{key}_{part}"] = getattr(interval, part)
        row["steps_mean"] = t_interval([float(r.steps or 0) for r in done]).mean
        row["reference"] = reference
        for key in _PAIRED:
            if label == reference or reference is None:
                values: tuple[Any, ...] = (math.nan,) * 4 + (0,)
            else:
                values = paired_difference(
                    {seed: float(getattr(r, key)) for seed, r in by_seed[label].items()},
                    {seed: float(getattr(r, key)) for seed, r in by_seed[reference].items()},
                    bounds=DIFFERENCE_RANGE,
                )
                values = (values.mean, values.low, values.high, values.p_value, values.n)
            for part, value in zip(("mean", "low", "high", "p", "n"), values, strict=True):
                row[f"{key}_diff_{part}"] = value
        reached = [r for r in done if r.steps_to_threshold is not None]
        row["threshold"] = threshold
        row["reached"] = len(reached)
        row["steps_to_threshold_mean"] = t_interval(
            [float(r.steps_to_threshold or 0) for r in reached]
        ).mean
        row["calls_to_threshold_mean"] = t_interval(
            [float(r.calls_to_threshold or 0) for r in reached]
        ).mean
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(row: dict[str, Any], prefix: str, digits: int) -> str:
    mean, low, high = row[f"{prefix}_mean"], row[f"{prefix}_low"], row[f"{prefix}_high"]
    if _missing(low):
        return _fmt(mean, digits)
    return f"{_fmt(mean, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Return the rows as Markdown tables.

    First the scores (``mean [95% interval]``), then the paired differences to the reference.
    """
    threshold = next((r["threshold"] for r in rows if r["threshold"] is not None), None)
    reach = f"test ≥ {threshold:g}" if threshold is not None else "threshold"
    header = (
        f"| policy | runs | test | holdout | calls | tokens | steps | reached {reach} "
        f"| steps to {reach} | calls to {reach} |"
    )
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        lines.append(
            f"| {row['policy']} | {runs} | {_interval(row, 'test', 3)} "
            f"| {_interval(row, 'holdout', 3)} | {_interval(row, 'calls', 0)} "
            f"| {_interval(row, 'tokens', 0)} | {_fmt(row['steps_mean'], 1)} "
            f"| {row['reached']}/{row['runs']} | {_fmt(row['steps_to_threshold_mean'], 1)} "
            f"| {_fmt(row['calls_to_threshold_mean'], 0)} |"
        )
    reference = next((r["reference"] for r in rows if r.get("reference")), None)
    others = [r for r in rows if r["policy"] != reference]
    if reference is not None and others:
        lines += [
            "",
            f"Paired by seed against {reference} (difference [95% interval], paired t-test p):",
            "",
            "| policy | pairs | test − reference | p | holdout − reference | p |",
            "|" + "---|" * 6,
        ]
        for row in others:
            lines.append(
                f"| {row['policy']} | {row['test_diff_n']} "
                f"| {_signed(row, 'test_diff')} | {_fmt(row['test_diff_p'], 3)} "
                f"| {_signed(row, 'holdout_diff')} | {_fmt(row['holdout_diff_p'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def _signed(row: dict[str, Any], prefix: str) -> str:
    mean, low, high = row[f"{prefix}_mean"], row[f"{prefix}_low"], row[f"{prefix}_high"]
    if _missing(mean):
        return "–"
    text = f"{mean:+.3f}"
    return text if _missing(low) else f"{text} [{low:+.3f}, {high:+.3f}]"


def write_outputs(
    out_dir: Path,
    rows: Sequence[dict[str, Any]],
    records: Sequence[RunRecord],
    *,
    title: str,
    reference: str | None = None,
) -> list[Path]:
    """Write ``compare.csv``, ``compare.md``, ``runs.jsonl`` and ``compare.png``."""
    csv_path = out_dir / "compare.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COMPARE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if _missing(row[k]) else row[k] for k in COMPARE_COLUMNS})
    md_path = atomic_write_text(out_dir / "compare.md", f"# {title}\n\n" + markdown_table(rows))
    runs_path = atomic_write_text(
        out_dir / "runs.jsonl",
        "".join(r.model_dump_json(exclude={"curve"}) + "\n" for r in records),
    )
    png_path = plot_curves(
        records,
        [str(r["policy"]) for r in rows],
        out_dir / "compare.png",
        title=title,
        reference=reference,
    )
    return [csv_path, md_path, runs_path, png_path]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------------- the plot
def _on_grid(curve: Sequence[tuple[int, float]], grid: Any) -> Any:
    """A run's live test score at each grid point of calls (held after the run ends)."""
    import numpy as np

    calls = np.asarray([c for c, _ in curve], dtype=float)
    scores = np.asarray([v for _, v in curve], dtype=float)
    index = np.searchsorted(calls, grid, side="right") - 1
    return np.where(index >= 0, scores[np.maximum(index, 0)], np.nan)


def plot_curves(
    records: Sequence[RunRecord],
    labels: Sequence[str],
    path: Path,
    *,
    title: str = "",
    reference: str | None = None,
) -> Path:
    """Draw each policy's live test score against model calls, and its paired difference.

    Top: the live build's test score against cumulative model calls (the baseline's from the
    calls of the first reset, the final build's at the run's total, report included), mean
    over seeds with its 95% band clipped to [0, 1]. Bottom: seed by seed, that score minus
    the reference policy's at the same number of calls, mean with its band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    done = [r for r in records if r.error is None and r.curve]
    max_calls = max((r.curve[-1][0] for r in done), default=1) or 1
    grid = np.linspace(0, max_calls, 200)
    reference = reference or (labels[0] if labels else None)
    reference_runs = {r.seed: r for r in done if r.policy == reference}
    for index, label in enumerate(labels):
        runs = [r for r in done if r.policy == label]
        if not runs:
            continue
        color = f"C{index % 10}"
        tests = np.vstack([_on_grid(run.curve, grid) for run in runs])
        mean, low, high = band(tests)
        top.plot(grid, mean, color=color, label=f"{label} (n={len(runs)})")
        top.fill_between(grid, low, high, color=color, alpha=0.2)
        paired = [r for r in runs if r.seed in reference_runs]
        if label == reference or not paired:
            continue
        diffs = np.vstack(
            [
                _on_grid(run.curve, grid) - _on_grid(reference_runs[run.seed].curve, grid)
                for run in paired
            ]
        )
        mean, low, high = band(diffs, bounds=DIFFERENCE_RANGE)
        bottom.plot(grid, mean, color=color, label=f"{label} − {reference} (pairs={len(paired)})")
        bottom.fill_between(grid, low, high, color=color, alpha=0.2)
    top.set_ylabel("live build test score")
    top.set_ylim(0.0, 1.05)
    top.set_title(title or "policy comparison")
    top.legend(loc="lower right", fontsize="small")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_xlabel("model calls (replay, gate, judge and final report)")
    bottom.set_ylabel(f"test score − {reference}'s, same seed")
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def default_jobs() -> int:
    """Worker processes by default: the CPU count, at most 2."""
    return max(1, min(2, os.cpu_count() or 1))
