"""The peers table: one line per (target, data set, row), aggregated over seeds.

Columns: holdout exact match (mean and 95% Student-t interval over seeds), the replayed and
plain-rendered scores where they differ from the headline, target calls, other LM calls,
wall time, and for our rows the target calls spent when the first promoted build scoring at
least the best peer's mean holdout was promoted (per seed; ``k/n`` seeds reached it).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peers.common import RowResult, ScoredPrompt, mean_ci95

_KIND_ORDER = {"seed": 0, "peer": 1, "ours": 2}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def calls_to_reach(result: RowResult, threshold: float) -> int | None:
    """Target calls when the first build scoring >= ``threshold`` on holdout was promoted."""
    for point in result.curve:
        if point.holdout is not None and point.holdout >= threshold - 1e-9:
            return point.calls
    return None


def aggregate(results: Sequence[RowResult]) -> list[dict[str, Any]]:
    """One dict per (target, data set, row), sorted seed prompt, peers, ours."""
    groups: dict[tuple[str, str, str], list[RowResult]] = defaultdict(list)
    for result in results:
        groups[(result.target, result.dataset, result.row)].append(result)
    rows: list[dict[str, Any]] = []
    for (target, dataset, row), members in groups.items():
        members.sort(key=lambda r: r.seed)
        mean, half = mean_ci95([r.holdout for r in members])
        rows.append(
            {
                "target": target,
                "model": members[0].model,
                "dataset": dataset,
                "row": row,
                "kind": members[0].kind,
                "seeds": len(members),
                "holdout": mean,
                "holdout_ci95": half,
                "holdout_source": members[0].holdout_source,
                "holdout_per_seed": [r.holdout for r in members],
                "holdout_replay": _mean([r.holdout_replay for r in members]),
                "holdout_native": _mean([r.holdout_native for r in members]),
                "holdout_plain": _mean([r.holdout_plain for r in members]),
                "budget_calls": members[0].budget_calls,
                "target_calls": _mean([float(r.target_calls) for r in members]),
                "other_calls": _mean([float(r.other_calls) for r in members]),
                "cached_calls": _mean([float(r.cached_calls) for r in members]),
                "wall_s": _mean([r.wall_s for r in members]),
                "calls_to_best_peer": None,
                "reached_best_peer": None,
            }
        )
    for (target, dataset), group in _by_task(rows).items():
        peers = [r for r in group if r["kind"] == "peer"]
        if not peers:
            continue
        best = max(peers, key=lambda r: r["holdout"])
        for row in group:
            row["best_peer"] = best["row"]
            row["best_peer_holdout"] = best["holdout"]
            row["best_peer_calls"] = best["target_calls"]
            if row["kind"] != "ours":
                continue
            members = groups[(target, dataset, row["row"])]
            reached = [calls_to_reach(r, best["holdout"]) for r in members]
            hits = [c for c in reached if c is not None]
            row["calls_to_best_peer"] = _mean([float(c) for c in hits])
            row["calls_to_best_peer_per_seed"] = reached
            row["reached_best_peer"] = f"{len(hits)}/{len(members)}"
    rows.sort(key=lambda r: (r["target"], r["dataset"], _KIND_ORDER[r["kind"]], r["row"]))
    return rows


def _by_task(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[(row["target"], row["dataset"])].append(row)
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _score(row: dict[str, Any]) -> str:
    if row["seeds"] < 2:
        return _fmt(row["holdout"])
    return f"{_fmt(row['holdout'])} ± {_fmt(row['holdout_ci95'])}"


def _alternatives(row: dict[str, Any]) -> str:
    parts = []
    if row["kind"] == "peer" and row["holdout_replay"] is not None:
        parts.append(f"replay {_fmt(row['holdout_replay'])}")
    if row["holdout_native"] is not None and row["holdout_source"] != "native":
        parts.append(f"own eval {_fmt(row['holdout_native'])}")
    if row["holdout_plain"] is not None:
        parts.append(f"plain {_fmt(row['holdout_plain'])}")
    return ", ".join(parts) or "–"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown, one section per (target, data set), with a verdict line."""
    out = io.StringIO()
    for (target, dataset), group in _by_task(rows).items():
        model = group[0]["model"]
        budget = next((r["budget_calls"] for r in group if r["budget_calls"]), None)
        out.write(f"\n**{dataset}** on {target} ({model}), budget {_fmt(budget)} target calls\n\n")
        out.write(
            "| row | holdout exact match | other scorings | target calls | other LM calls "
            "| wall s | calls to best peer's score |\n|---|---|---|---|---|---|---|\n"
        )
        for row in group:
            name = row["row"] if row["kind"] != "ours" else f"ours: {row['row']}"
            reach = "–"
            if row["kind"] == "ours" and row["reached_best_peer"] is not None:
                reach = f"{_fmt(row['calls_to_best_peer'], 0)} ({row['reached_best_peer']})"
            out.write(
                f"| {name} | {_score(row)} (n={row['seeds']}) | {_alternatives(row)} "
                f"| {_fmt(row['target_calls'], 0)} | {_fmt(row['other_calls'], 0)} "
                f"| {_fmt(row['wall_s'], 0)} | {reach} |\n"
            )
        out.write(_verdict(group))
    return out.getvalue()


def _verdict(group: Sequence[dict[str, Any]]) -> str:
    peers = [r for r in group if r["kind"] == "peer"]
    ours = [r for r in group if r["kind"] == "ours"]
    if not peers or not ours:
        return ""
    best_ours = max(ours, key=lambda r: r["holdout"])
    best_peer = max(peers, key=lambda r: r["holdout"])
    beats = all(best_ours["holdout"] >= p["holdout"] for p in peers)
    reach = best_ours["calls_to_best_peer"]
    half = best_peer["target_calls"] / 2 if best_peer["target_calls"] else None
    fast = reach is not None and half is not None and reach <= half
    return (
        f"\nBest of ours: {best_ours['row']} {_fmt(best_ours['holdout'])}; best peer: "
        f"{best_peer['row']} {_fmt(best_peer['holdout'])} in {_fmt(best_peer['target_calls'], 0)}"
        f" calls. At or above every peer: {'yes' if beats else 'no'}; reached the best peer's "
        f"score in ≤ half its calls: {'yes' if fast else 'no'}"
        f" ({_fmt(reach, 0)} calls, {best_ours['reached_best_peer']} seeds).\n"
    )


def _fidelity_keys(result: RowResult, prompt: ScoredPrompt) -> dict[str, Any]:
    """``data`` / ``holdout`` / ``sim_large``: the pair bench_real.py's rank correlation reads.

    Only for a prompt replayed on a real model and on sim-large alike; a simulated target's
    prompts carry none (sim against sim is no evidence of fidelity).
    """
    if result.target == "sim" or prompt.sim is None or prompt.how != "replay":
        return {}
    return {"data": result.dataset, "holdout": prompt.score, "sim_large": prompt.sim}


def write_outputs(rows: Sequence[dict[str, Any]], results: Sequence[RowResult], out: Path) -> None:
    """Write ``peers_table.csv``, ``peers_table.md`` and ``peers_prompts.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    columns = [
        "target",
        "model",
        "dataset",
        "row",
        "kind",
        "seeds",
        "holdout",
        "holdout_ci95",
        "holdout_source",
        "holdout_replay",
        "holdout_native",
        "holdout_plain",
        "budget_calls",
        "target_calls",
        "other_calls",
        "cached_calls",
        "wall_s",
        "calls_to_best_peer",
        "reached_best_peer",
    ]
    with (out / "peers_table.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "peers_table.md").write_text(markdown(rows), encoding="utf-8")
    prompts = [
        {
            "target": result.target,
            "model": result.model,
            "dataset": result.dataset,
            "row": result.row,
            "kind": result.kind,
            "seed": result.seed,
            **prompt.model_dump(mode="json", exclude={"outputs"}),
            **_fidelity_keys(result, prompt),
        }
        for result in results
        for prompt in result.prompts
    ]
    (out / "peers_prompts.json").write_text(json.dumps(prompts, indent=1), encoding="utf-8")
