"""How did a run go? Curves as CSV and PNG from the step log.

Both are derived from ``steps.jsonl`` lines alone, so they can be redrawn for any run
directory (including a resumed one) without re-running anything.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CURVE_COLUMNS = (
    "step",
    "episode",
    "reward",
    "train_score",
    "base_train_score",
    "test_score",
    "live_version",
    "calls",
    "cumulative_calls",
    "cumulative_tokens",
    "promoted",
)


def curve_rows(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one row per step: reward, minibatch train score, the live build's test score.

    ``train_score`` is the new version's score on the step's train minibatch; ``test_score``
    is the live build's test score after the step's gate (empty until one is known).
    """
    rows = []
    for line in steps:
        rows.append(
            {
                "step": line["step"],
                "episode": line["episode"],
                "reward": line["reward"],
                "train_score": line["scores"]["aggregate"],
                "base_train_score": line["base_scores"]["aggregate"],
                "test_score": "" if line["live_test"] is None else line["live_test"],
                "live_version": line["live_version"],
                "calls": line["calls"],
                "cumulative_calls": line["cumulative_calls"],
                "cumulative_tokens": line["cumulative_tokens"],
                "promoted": bool(line["gate"] and line["gate"]["promoted"]),
            }
        )
    return rows


def write_curves(steps: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write :func:`curve_rows` as CSV; returns the path."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(curve_rows(steps))
    return path


def write_reward_plot(steps: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Draw reward per step and train/test scores against steps into a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve_rows(steps)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    x = [row["step"] for row in rows]
    top.bar(x, [row["reward"] for row in rows], color="tab:blue")
    top.axhline(0.0, color="black", linewidth=0.8)
    top.set_ylabel("reward (score delta)")
    top.set_title(title or "reward curve")
    bottom.plot(x, [row["train_score"] for row in rows], marker=".", label="train minibatch (new)")
    tests = [(row["step"], row["test_score"]) for row in rows if row["test_score"] != ""]
    if tests:
        bottom.step([s for s, _ in tests], [v for _, v in tests], where="post", label="test (live)")
    promoted = [row["step"] for row in rows if row["promoted"]]
    for step in promoted:
        bottom.axvline(step, color="tab:green", alpha=0.3)
    bottom.set_ylim(0.0, 1.05)
    bottom.set_xlabel("env step")
    bottom.set_ylabel("score")
    bottom.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
