"""How did a run go? Curves as CSV and PNG from the step log.

Both are derived from ``steps.jsonl`` lines plus the run's two ends, so they can be redrawn
for any run directory (including a resumed one) without re-running anything:

* a ``start`` row (step 0): the baseline build, its test score, and the calls spent before
  the first step (the first episode's reset);
* one ``step`` row per step, whose ``calls`` count everything since the previous row (an
  episode reset, the env step and the gate: ``gate_calls``);
* a ``report`` row: the calls of the final report, so the last ``cumulative_calls`` equals
  the run's total in ``summary.json``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CURVE_COLUMNS = (
    "kind",
    "step",
    "episode",
    "reward",
    "train_score",
    "base_train_score",
    "test_score",
    "live_version",
    "calls",
    "gate_calls",
    "failures",
    "retries",
    "cumulative_calls",
    "cumulative_tokens",
    "promoted",
)


def curve_rows(
    steps: Sequence[dict[str, Any]],
    *,
    baseline_test: float | None = None,
    live_test: float | None = None,
    live_version: str | None = None,
    report_calls: int | None = None,
    calls: int | None = None,
    tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Return the start row, one row per step, and the report row (see the module docstring).

    ``train_score`` is the new version's score on the step's train minibatch; ``test_score``
    is the live build's test score after the step's gate (empty until one is known; the
    start row carries the baseline's). The start and report rows need the run's ends (the
    keyword arguments); without them only the step rows are returned.
    """
    rows: list[dict[str, Any]] = []
    if steps and baseline_test is not None:
        first = steps[0]
        start_calls = int(first["cumulative_calls"]) - int(first["calls"])
        start_tokens = int(first["cumulative_tokens"]) - int(first["tokens"])
        rows.append(
            _row("start", 0, first["episode"], start_calls, start_calls, start_tokens)
            | {"test_score": baseline_test, "live_version": first["base_version"]}
        )
    for line in steps:
        rows.append(
            {
                "kind": "step",
                "step": line["step"],
                "episode": line["episode"],
                "reward": line["reward"],
                "train_score": line["scores"]["aggregate"],
                "base_train_score": line["base_scores"]["aggregate"],
                "test_score": "" if line["live_test"] is None else line["live_test"],
                "live_version": line["live_version"],
                "calls": line["calls"],
                "gate_calls": line.get("gate_calls", 0),
                "failures": line.get("failures", 0),
                "retries": line.get("retries", 0),
                "cumulative_calls": line["cumulative_calls"],
                "cumulative_tokens": line["cumulative_tokens"],
                "promoted": bool(line["gate"] and line["gate"]["promoted"]),
            }
        )
    if steps and report_calls is not None and calls is not None:
        last = steps[-1]
        rows.append(
            _row("report", last["step"], last["episode"], report_calls, calls, tokens or 0)
            | {"test_score": live_test, "live_version": live_version}
        )
    return rows


def _row(kind: str, step: int, episode: int, calls: int, total: int, tokens: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "step": step,
        "episode": episode,
        "reward": "",
        "train_score": "",
        "base_train_score": "",
        "calls": calls,
        "gate_calls": 0,
        "failures": "",
        "retries": "",
        "cumulative_calls": total,
        "cumulative_tokens": tokens,
        "promoted": False,
    }


def write_curves(steps: Sequence[dict[str, Any]], path: Path, **ends: Any) -> Path:
    """Write :func:`curve_rows` as CSV (``ends``: its keyword arguments); returns the path."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(curve_rows(steps, **ends))
    return path


def write_reward_plot(
    steps: Sequence[dict[str, Any]], path: Path, *, title: str = "", **ends: Any
) -> Path:
    """Draw the run into a PNG; returns the path.

    Top: the reward of each step (a paired delta against that step's base). Middle: the new
    version's minibatch score and the live build's test score per step, from the baseline at
    step 0. Bottom: the live build's test score against cumulative model calls, from the
    baseline to the final report's total.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve_rows(steps, **ends)
    step_rows = [row for row in rows if row["kind"] == "step"]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8.5))
    x = [row["step"] for row in step_rows]
    top.bar(x, [row["reward"] for row in step_rows], color="tab:blue")
    top.axhline(0.0, color="black", linewidth=0.8)
    top.set_ylabel("reward (delta vs base)")
    top.set_xlabel("env step")
    top.set_title(title or "reward curve")
    middle.plot(
        x, [row["train_score"] for row in step_rows], marker=".", label="train minibatch (new)"
    )
    tests = [
        (row["step"], row["test_score"])
        for row in rows
        if row["kind"] != "report" and row["test_score"] not in ("", None)
    ]
    if tests:
        middle.step([s for s, _ in tests], [v for _, v in tests], where="post", label="test (live)")
    for row in step_rows:
        if row["promoted"]:
            middle.axvline(row["step"], color="tab:green", alpha=0.3)
    middle.set_ylim(0.0, 1.05)
    middle.set_xlabel("env step (0: baseline)")
    middle.set_ylabel("score")
    middle.legend(loc="lower right")
    by_calls = [
        (row["cumulative_calls"], row["test_score"])
        for row in rows
        if row["test_score"] not in ("", None)
    ]
    if by_calls:
        bottom.step(
            [c for c, _ in by_calls], [v for _, v in by_calls], where="post", color="tab:orange"
        )
        bottom.plot([c for c, _ in by_calls], [v for _, v in by_calls], ".", color="tab:orange")
    bottom.set_ylim(0.0, 1.05)
    bottom.set_xlabel("model calls (cumulative, gate and final report included)")
    bottom.set_ylabel("live build test score")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
