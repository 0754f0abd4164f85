"""What does a ProgramEnv show? A program version's evaluation, observations and rows.

:class:`ProgramEvaluation` is one program version replayed and scored on one set of traces.
:func:`node_observation` is one node's part of an observation (the single-call keys, from
:func:`envs.observation.build_observation`). :func:`trace_rows` are the traces as the program
saw them (``info["examples"]``); :func:`node_rows` are the traces as each node saw them
(``info["node_examples"]``): the node's rendered input, its output, what it should have said
(its expected output, or the program's for the output node) and its score, plus, for a
failing trace, a *teacher-forced* row with the input the node would have seen had its
upstream nodes said what the data expects of them (:func:`teacher_forced_input`; no model
call), so a downstream node can learn labels its upstream node does not emit yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from envs.observation import build_observation
from selfimprove_rl.checkpoint import Sample, message_text
from selfimprove_rl.evals import ScoreTable
from selfimprove_rl.program import Program, ProgramNode
from selfimprove_rl.program_replay import UPSTREAM_FAILED, ProgramReport, ProgramScores
from selfimprove_rl.prompt import PromptState
from selfimprove_rl.registry import SplitScore

Observation = dict[str, Any]


class ProgramEvaluation(BaseModel):
    """One program version replayed and scored on one set of traces."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    samples: list[Sample]
    report: ProgramReport
    scores: ProgramScores

    @property
    def table(self) -> ScoreTable:
        """The end-to-end score table."""
        return self.scores.end_to_end

    def node_aggregates(self) -> dict[str, float]:
        """Judged node -> its aggregate node-eval score."""
        return {name: table.aggregate() for name, table in self.scores.nodes.items()}

    @property
    def split_score(self) -> SplitScore:
        """The end-to-end score as the registry records it."""
        # End to end only: the gate judges what the program answers; node scores are in info.
        per_eval = dict(self.table.per_eval())
        return SplitScore(
            aggregate=self.table.aggregate(),
            per_eval=per_eval,
            n=len(self.samples),
            failed=len(self.table.failed),
        )

    @property
    def mean_prompt_tokens(self) -> float:
        """Prompt tokens per trace, summed over its nodes, averaged over the traces."""
        per_trace = [0] * len(self.samples)
        for report in self.report.nodes.values():
            for index, outcome in enumerate(report.outcomes):
                per_trace[index] += outcome.prompt_tokens
        return float(np.mean(per_trace)) if per_trace else 0.0

    @property
    def tokens(self) -> int:
        """Every node's prompt and completion tokens (cache hits included)."""
        return sum(
            o.prompt_tokens + o.completion_tokens
            for report in self.report.nodes.values()
            for o in report.outcomes
        )

    @property
    def requests(self) -> int:
        """Node requests made (cache hits included), so equal seeds give equal counts."""
        return sum(
            1
            for report in self.report.nodes.values()
            for o in report.outcomes
            if o.error_type != UPSTREAM_FAILED
        )


def node_rows(
    program: Program, evaluation: ProgramEvaluation, *, limit: int, teacher_forcing: bool
) -> dict[str, list[dict[str, Any]]]:
    """Per node, every trace as that node saw it, worst first (by the node's own score).

    Args:
        program: the wiring.
        evaluation: the replayed and scored version.
        limit: rows kept per node.
        teacher_forcing: add the teacher-forced rows (see the module docstring).
    """
    end_to_end = evaluation.table.per_sample()
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in program.order:
        report = evaluation.report.nodes[name]
        node = program.node(name)
        judged = evaluation.scores.nodes.get(name)
        own = judged.per_sample() if judged is not None else None
        node_rows = []
        for index, (sample, outcome) in enumerate(
            zip(evaluation.samples, report.outcomes, strict=True)
        ):
            upstream = {u: evaluation.report.nodes[u].outcomes[index].text for u in node.upstream}
            messages = node.render(sample.input_text, upstream)
            node_input = sample.input_text if messages is None else _last_user(messages)
            reference = sample.node_references.get(name)
            if reference is None and name == program.output_name:
                reference = sample.reference
            row = {
                "sample_id": sample.sample_id,
                "input": node_input,
                "output": outcome.text,
                "reference": reference,
                "score": own[index] if own is not None else end_to_end[index],
                "end_to_end_score": end_to_end[index],
                "scores": {
                    n: v[index] for n, v in (judged.scores if judged is not None else {}).items()
                },
                "explanations": {},
                "failed": not outcome.ok,
                "teacher_forced": False,
            }
            node_rows.append(row)
            forced = teacher_forced_input(node, sample)
            if (
                teacher_forcing
                and forced is not None
                and forced != node_input
                and end_to_end[index] < 1.0
            ):
                node_rows.append({**row, "input": forced, "output": "", "teacher_forced": True})
        node_rows.sort(key=lambda row: (row["score"], row["teacher_forced"], row["sample_id"]))
        rows[name] = node_rows[:limit]
    return rows


def teacher_forced_input(node: ProgramNode, sample: Sample) -> str | None:
    """The input ``node`` would see had every upstream node said what it should have."""
    if not node.upstream or node.messages is None:
        return None
    expected = {u: sample.node_references.get(u) for u in node.upstream}
    if any(value is None for value in expected.values()):
        return None
    messages = node.render(sample.input_text, {u: v or "" for u, v in expected.items()})
    return _last_user(messages or [])


def trace_rows(
    program: Program, evaluation: ProgramEvaluation, *, limit: int
) -> list[dict[str, Any]]:
    """Every trace as the program saw it (end-to-end scores, every node's output), worst first."""
    table = evaluation.table
    per_sample = table.per_sample()
    rows: list[dict[str, Any]] = []
    for index, sample in enumerate(evaluation.samples):
        rows.append(
            {
                "sample_id": sample.sample_id,
                "input": sample.input_text,
                "output": evaluation.report.outcomes[index].text,
                "reference": sample.reference,
                "score": per_sample[index],
                "scores": {name: values[index] for name, values in table.scores.items()},
                "explanations": {
                    name: values[index] for name, values in table.explanations.items()
                },
                "failed": sample.sample_id in table.failed,
                "nodes": {
                    name: evaluation.report.nodes[name].outcomes[index].text
                    for name in program.order
                },
            }
        )
    rows.sort(key=lambda row: (row["score"], row["sample_id"]))
    return rows[:limit]


def node_observation(state: PromptState) -> Observation:
    """One node's part of a program observation: ``prompt``, ``blocks``, ``demos``, ``model``.

    The same keys, built by the same function, as a single call's observation
    (:func:`envs.observation.build_observation`) without its version and scores.
    """
    full = build_observation(state, "", [])
    return {key: full[key] for key in ("prompt", "blocks", "demos", "model")}


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""
