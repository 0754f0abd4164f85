"""What would a program say now? Replay every node of every trace, in order, and score it.

:class:`ProgramReplayer` runs a :class:`~selfimprove_rl.program.Program` over logged traces
under one :class:`~selfimprove_rl.checkpoint.Action` per node. Nodes run in topological
order; each node's messages are its templates rendered with the trace input and the outputs
its upstream nodes just produced (or, for a node without templates, the trace's
conversation). Every node goes through the one :class:`~selfimprove_rl.replay.Replayer`, so
everything it guarantees holds per node: bounded concurrency, retries, timeouts, accounting,
and the content-addressed response cache. Because a request is keyed by its content, a node
whose prompt and inputs did not change is answered from the cache at no cost: changing the
last node of a pipeline re-runs only that node, and changing the first re-runs the first and
every downstream request whose input actually changed.

Invariants: ``report.nodes[name].outcomes[i]`` and ``report.outcomes[i]`` belong to
``samples[i]``; a node whose upstream node failed for a sample is not called for it and is
recorded as failed with ``error_type="UpstreamFailed"`` (counted, never raised); only a
systemic fault raises (:class:`~selfimprove_rl.errors.ReplayError`, from the replayer).

:func:`score_program` scores the program's output with the end-to-end evaluators, and each
node's output with that node's evaluators against the node's expected outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from selfimprove_rl.aio import BackgroundLoop
from selfimprove_rl.checkpoint import Action, Sample
from selfimprove_rl.errors import ProgramError
from selfimprove_rl.evals.base import Evaluator, ScoreTable
from selfimprove_rl.evals.scoring import score_outcomes
from selfimprove_rl.program import Program
from selfimprove_rl.replay import Replayer, ReplayOutcome, ReplayReport, ReplayUsage

UPSTREAM_FAILED = "UpstreamFailed"


class ProgramReport(BaseModel):
    """Every node's replay of every trace, the program's outcomes and what it cost."""

    model_config = ConfigDict(frozen=True)

    order: tuple[str, ...]
    output_node: str
    nodes: dict[str, ReplayReport]
    usage: ReplayUsage

    @property
    def outcomes(self) -> list[ReplayOutcome]:
        """The program's (output node's) outcome per trace, in sample order."""
        return self.nodes[self.output_node].outcomes

    @property
    def texts(self) -> list[str]:
        """The program's output text per trace ("" for a failed trace)."""
        return [outcome.text for outcome in self.outcomes]

    @property
    def failed(self) -> dict[str, str]:
        """Sample id -> error, for the traces whose program output failed."""
        return self.nodes[self.output_node].failed

    @property
    def failures_by_node(self) -> dict[str, dict[str, int]]:
        """Node -> error type -> how many traces failed there (upstream failures included)."""
        return {name: dict(report.failures_by_type) for name, report in self.nodes.items()}


class ProgramPlan(NamedTuple):
    """What replaying a program would cost now (see :meth:`ProgramReplayer.plan`)."""

    calls: int
    texts: dict[str, list[str | None]]


class ProgramScores(BaseModel):
    """A program version scored on a set of traces: end to end, and per node where judged."""

    model_config = ConfigDict(frozen=True)

    end_to_end: ScoreTable
    nodes: dict[str, ScoreTable]


class ProgramReplayer:
    """Replays programs through one :class:`~selfimprove_rl.replay.Replayer`.

    Args:
        replayer: the replayer (its client, cache, concurrency and accounting are used).
        program: the wiring.
    """

    def __init__(self, replayer: Replayer, program: Program) -> None:
        self.replayer = replayer
        self.program = program
        self._background: BackgroundLoop | None = None

    @property
    def usage(self) -> ReplayUsage:
        """Cumulative usage of the underlying replayer."""
        return self.replayer.usage

    async def replay(
        self, samples: Sequence[Sample], actions: Mapping[str, Action]
    ) -> ProgramReport:
        """Run every node over every trace, in topological order.

        Args:
            samples: the logged traces.
            actions: node name -> the action (system prompt, model, parameters) to run it with.

        Returns:
            Per-node reports (outcomes in sample order), the output node, and the total usage.

        Raises:
            ProgramError: ``actions`` lacks a node.
            ReplayError: a systemic fault in some node (see the replayer).
        """
        missing = [name for name in self.program.names if name not in actions]
        if missing:
            raise ProgramError(f"Expects an action for every node, missing {missing}.")
        samples = list(samples)
        reports: dict[str, ReplayReport] = {}
        usage = ReplayUsage()
        for name in self.program.order:
            report = await self._replay_node(name, samples, actions[name], reports)
            reports[name] = report
            usage = usage + report.usage
        return ProgramReport(
            order=self.program.order,
            output_node=self.program.output_name,
            nodes=reports,
            usage=usage,
        )

    async def _replay_node(
        self,
        name: str,
        samples: list[Sample],
        action: Action,
        upstream_reports: Mapping[str, ReplayReport],
    ) -> ReplayReport:
        node = self.program.node(name)
        outcomes: list[ReplayOutcome | None] = [None] * len(samples)
        runnable: list[int] = []
        node_samples: list[Sample] = []
        for index, sample in enumerate(samples):
            broken = next(
                (
                    (upstream, upstream_reports[upstream].outcomes[index])
                    for upstream in node.upstream
                    if not upstream_reports[upstream].outcomes[index].ok
                ),
                None,
            )
            if broken is not None:
                upstream, outcome = broken
                outcomes[index] = ReplayOutcome(
                    sample_id=sample.sample_id,
                    error=f"upstream node {upstream!r} failed: {outcome.error}",
                    error_type=UPSTREAM_FAILED,
                )
                continue
            outputs = {u: upstream_reports[u].outcomes[index].text for u in node.upstream}
            messages = node.render(sample.input_text, outputs)
            runnable.append(index)
            # model_construct: the replayer reads only the id and the messages of a sample.
            node_samples.append(
                sample
                if messages is None
                else Sample.model_construct(
                    sample_id=sample.sample_id,
                    chat_history=messages,
                    output_generation=sample.node_outputs.get(name, {}),
                )
            )
        report = (
            await self.replayer.replay(node_samples, action)
            if node_samples
            else ReplayReport(outcomes=[], usage=ReplayUsage())
        )
        for index, outcome in zip(runnable, report.outcomes, strict=True):
            outcomes[index] = outcome
        final = [outcome for outcome in outcomes if outcome is not None]
        failures = Counter(o.error_type or "unknown" for o in final if not o.ok)
        usage = report.usage.model_copy(update={"failures": sum(failures.values())})
        return ReplayReport(outcomes=final, usage=usage, failures_by_type=dict(failures))

    def plan(self, samples: Sequence[Sample], actions: Mapping[str, Action]) -> ProgramPlan:
        """Say what replaying the program would cost now, sending nothing.

        A node's request is known only where every upstream output is (cached): then the
        replayer's plan prices it exactly; elsewhere it counts one call (an upper bound).

        Returns:
            The calls to charge, and per node each trace's output where already cached.
        """
        samples = list(samples)
        calls = 0
        texts: dict[str, list[str | None]] = {}
        for name in self.program.order:
            node = self.program.node(name)
            node_texts: list[str | None] = [None] * len(samples)
            positions: list[int] = []
            node_samples: list[Sample] = []
            for index, sample in enumerate(samples):
                upstream = {u: texts[u][index] for u in node.upstream}
                if any(text is None for text in upstream.values()):
                    calls += 1
                    continue
                messages = node.render(sample.input_text, upstream)  # type: ignore[arg-type]
                positions.append(index)
                node_samples.append(
                    sample
                    if messages is None
                    else Sample.model_construct(
                        sample_id=sample.sample_id, chat_history=messages, output_generation={}
                    )
                )
            plan = self.replayer.plan(node_samples, actions[name])
            calls += plan.calls
            for index, outcome in zip(positions, plan.outcomes, strict=True):
                node_texts[index] = None if outcome is None else outcome.text
            texts[name] = node_texts
        return ProgramPlan(calls=calls, texts=texts)

    def replay_sync(
        self, samples: Sequence[Sample], actions: Mapping[str, Action]
    ) -> ProgramReport:
        """Blocking :meth:`replay`, on a private event-loop thread kept across calls.

        The same loop serves every call, so the client's pooled connections stay valid; call
        :meth:`close` when done.
        """
        if self._background is None:
            self._background = BackgroundLoop()
        return self._background.run(self.replay(samples, actions))

    def close(self) -> None:
        """Stop the private loop thread of :meth:`replay_sync` (the client stays open)."""
        if self._background is not None:
            self._background.close()
            self._background = None


def node_samples(samples: Sequence[Sample], node: str) -> list[Sample]:
    """Return the samples as a node's evals see them: the node's expected output as reference.

    A sample without an expected output for ``node`` keeps ``reference=None`` (a reference
    grader then scores it 0 and records why).
    """
    return [
        sample.model_copy(update={"reference": sample.node_references.get(node)})
        for sample in samples
    ]


async def score_program(
    end_to_end: Sequence[Evaluator],
    node_evaluators: Mapping[str, Sequence[Evaluator]],
    samples: Sequence[Sample],
    report: ProgramReport,
) -> ProgramScores:
    """Score a program replay: its outputs end to end, and each judged node's outputs.

    Args:
        end_to_end: evaluators of the program's output (against ``Sample.reference``).
        node_evaluators: node name -> evaluators of that node's output (against
            ``Sample.node_references[node]``); nodes without evaluators are left out.
        samples: the traces, in the report's order.
        report: the replay.

    Returns:
        The end-to-end table and one table per judged node.
    """
    table = await score_outcomes(end_to_end, samples, report.outcomes)
    nodes: dict[str, ScoreTable] = {}
    for name, evaluators in node_evaluators.items():
        if evaluators:
            nodes[name] = await score_outcomes(
                evaluators, node_samples(samples, name), report.nodes[name].outcomes
            )
    return ProgramScores(end_to_end=table, nodes=nodes)
