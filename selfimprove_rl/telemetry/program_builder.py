"""Which traces can we learn a program from? Telemetry frames → a program :class:`Checkpoint`.

:func:`build_program_checkpoint` groups the LLM spans of the frames by ``trace_id``, orders
each trace's calls (by start time, a parent before its children), recognises which node every
call is, infers the template of every node's messages, and turns each complete trace into one
sample whose evals sit on the root span (end to end) or on the nodes' spans.

**Nodes.** With a :class:`~selfimprove_rl.program.Program` given, a call is the node whose
:class:`~selfimprove_rl.program.NodeMatch` it meets (span name, Phoenix prompt name or version
id, or exact system prompt; a node with no criterion matches its own name as span name or as
``metadata.node``). Without one, calls are named by, in order: ``metadata["node"]`` on the span
(set it with ``openinference.instrumentation.using_metadata({"node": "router"})``), the Phoenix
prompt name the call used, the span name when the spans of a trace have distinct names, and
otherwise the call's position in its trace (``call_1``, ``call_2``...).

**Templates.** A node's messages after its system prompt are turned into a template by
replacing, literally, the trace input with ``{{input}}`` and each earlier node's output with
``{{nodes.NAME.output}}`` (longest first). The template most traces agree on is the node's
(unless the program gives one); the first node's messages are the trace's conversation, so
its template is ``None``. Nodes run in the order their calls first appear.

**Traces and evals.** The trace input is the first node's last user message; the end-to-end
output is the output node's reply. Evals annotated on the trace's root span (a non-LLM span
with no parent, fetched with ``PhoenixSource(..., roots=True)``) judge the program end to end;
evals on a node's span judge that node (``EvalConstants.node``). When no eval sits on a root
span, the output node's evals serve as the end-to-end evals. References come from the evals'
recorded template variables, as for single calls.

Skipped traces are counted by reason in ``provenance.skipped`` (plus the span reasons of
:mod:`selfimprove_rl.telemetry.builder`): ``incomplete_trace`` (a node's call is missing),
``repeated_node`` (a node called twice in one trace), ``other_template`` (a node's messages do
not fit its template), ``missing_evals``, ``unscored_eval``, ``other_eval_constants``; and
``unmatched_call`` counts calls no node of a given program matches.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from selfimprove_rl.checkpoint import Checkpoint, Provenance, Sample, message_text
from selfimprove_rl.errors import NoUsableSamplesError, ProgramError
from selfimprove_rl.program import (
    INPUT_REFERENCE,
    NODE_NAME_PATTERN,
    MessageTemplate,
    Program,
    ProgramNode,
    output_reference,
)
from selfimprove_rl.telemetry.builder import (
    REFERENCE_VARIABLE_NAMES,
    _action,
    _annotations_by_span,
    _choose_evals,
    _constants_by_name,
    _EvalSpec,
    _parse_span,
    _Row,
    _row_evals,
    _Skip,
)
from selfimprove_rl.telemetry.frames import TelemetryFrames

_GENERIC_SPAN_NAMES = frozenset({"chatcompletion", "completion", "chat", "llm", "openai.chat"})


@dataclass
class _Trace:
    trace_id: str
    calls: list[tuple[str, _Row]] = field(default_factory=list)
    hints: dict[str, str] = field(default_factory=dict)
    root_span_id: str | None = None
    root_evals: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_program_checkpoint(
    frames: TelemetryFrames,
    *,
    program: Program | None = None,
    evals: Sequence[str] | None = None,
    min_eval_coverage: float = 0.5,
    description: str | None = None,
) -> Checkpoint:
    """Build a program checkpoint from traced multi-call telemetry (see the module docstring).

    Args:
        frames: spans (LLM spans, and the traces' root spans for end-to-end evals),
            annotations and eval constants.
        program: the wiring, when known (node names, match criteria, templates); default:
            inferred from the traces.
        evals: eval names to keep (default: every eval with recorded constants covering at
            least ``min_eval_coverage`` of the traces where it can sit).
        min_eval_coverage: see ``evals``.
        description: a line for ``provenance.description``.

    Returns:
        The checkpoint (schema version 2, ``program`` and ``node_actions`` set).

    Raises:
        NoUsableSamplesError: no complete, evaluated trace.
        ProgramError: the inferred wiring is invalid (e.g. a template the language cannot
            express).
    """
    skipped: Counter[str] = Counter()
    constants = _constants_by_name(frames.evals, frames.annotations)
    annotations = _annotations_by_span(frames.annotations)
    traces = _traces(frames, skipped)
    for trace in traces.values():
        if trace.root_span_id is not None:
            trace.root_evals = _row_evals(annotations.get(trace.root_span_id, []), constants)
        for _, row in trace.calls:
            row.evals = _row_evals(annotations.get(row.span_id, []), constants)
    names = _name_calls(traces, program)
    _drop_unmatched(traces, names, skipped)
    order = list(program.order) if program is not None else _node_order(traces, names)
    complete = _complete_traces(traces, names, order, skipped)
    wiring = program or _infer_program(complete, names, order)
    complete = _fitting(complete, names, wiring, skipped)
    output = wiring.output_name
    root_based = any(trace.root_evals for trace in complete)
    chosen = _choose_program_evals(
        complete, names, output, root_based, constants, evals, min_eval_coverage, skipped
    )
    samples: list[Sample] = []
    for trace in complete:
        try:
            samples.append(_sample(trace, names, wiring, chosen, root_based))
        except _Skip as skip:
            skipped[skip.reason] += 1
    if not samples:
        reasons = ", ".join(f"{k}: {v}" for k, v in skipped.most_common()) or "no traces"
        raise NoUsableSamplesError(
            f"None of {len(traces)} traces makes a usable program sample ({reasons}). Group the "
            "calls of one request under one trace, and score them with recorded evals."
        )
    kept = {s.trace_id for s in samples}
    rows_by_node: dict[str, list[_Row]] = defaultdict(list)
    for trace in complete:
        if trace.trace_id in kept:
            for _, row in trace.calls:
                rows_by_node[names[row.span_id]].append(row)
    actions = {node: _node_action(rows_by_node[node]) for node in wiring.names}
    info = frames.info
    return Checkpoint(
        samples=samples,
        action=actions[output],
        eval_constants=[spec.constants for spec in chosen.values()],
        provenance=Provenance(
            source="phoenix" if info.source == "phoenix" else "file",
            description=description
            or f"{len(samples)} program traces ({', '.join(wiring.order)}) from "
            f"{len(traces)} traces",
            data_path=info.data_path,
            endpoint=info.endpoint,
            project=info.project,
            since=info.since,
            until=info.until,
            created_at=datetime.now(UTC),
            skipped=dict(sorted(skipped.items())),
        ),
        program=wiring,
        node_actions=actions,
    )


def _drop_unmatched(
    traces: Mapping[str, _Trace], names: Mapping[str, str], skipped: Counter[str]
) -> None:
    """Drop the calls no node matches from their traces (counted as ``unmatched_call``)."""
    for trace in traces.values():
        unmatched = [call for call in trace.calls if call[1].span_id not in names]
        if unmatched:
            skipped["unmatched_call"] += len(unmatched)
        trace.calls = [call for call in trace.calls if call[1].span_id in names]


def _complete_traces(
    traces: Mapping[str, _Trace],
    names: Mapping[str, str],
    order: list[str],
    skipped: Counter[str],
) -> list[_Trace]:
    """The traces that call every node once, their calls in node order (others are counted)."""
    complete: list[_Trace] = []
    for trace in traces.values():
        seen = [names[row.span_id] for _, row in trace.calls]
        if len(set(seen)) != len(seen):
            skipped["repeated_node"] += 1
        elif set(seen) != set(order):
            skipped["incomplete_trace"] += 1
        else:
            trace.calls.sort(key=lambda item: order.index(names[item[1].span_id]))
            complete.append(trace)
    return complete


def _traces(frames: TelemetryFrames, skipped: Counter[str]) -> dict[str, _Trace]:
    traces: dict[str, _Trace] = {}
    parents: dict[str, str | None] = {}
    for raw in frames.spans.to_dict("records"):
        record = cast(dict[str, Any], raw)
        parent = record.get("parent_id")
        parent = None if parent is None or parent != parent or not str(parent) else str(parent)
        parents[str(record["span_id"])] = parent  # (None, NaN and "" all mean no parent)
        trace_id = str(record.get("trace_id") or "")
        if not trace_id:
            skipped["no_trace_id"] += 1
            continue
        trace = traces.setdefault(trace_id, _Trace(trace_id))
        if str(record.get("span_kind") or "").upper() != "LLM":
            if parent is None:
                trace.root_span_id = str(record["span_id"])
            continue
        try:
            row = _parse_span(record)
        except _Skip as skip:
            skipped[skip.reason] += 1
            continue
        trace.calls.append((str(record.get("name") or ""), row))
        hint = _node_hint(record)
        if hint is not None:
            trace.hints[row.span_id] = hint

    def depth(span_id: str) -> int:
        count, current = 0, parents.get(span_id)
        while current is not None and count <= len(parents):
            count, current = count + 1, parents.get(current)
        return count

    def order(item: tuple[str, _Row]) -> tuple[float, int, str]:
        # By start time; at the same instant a parent call before the calls it made.
        stamp = item[1].timestamp
        return (stamp.timestamp() if stamp else 0.0, depth(item[1].span_id), item[1].span_id)

    for trace in traces.values():
        trace.calls.sort(key=order)
    return {trace_id: t for trace_id, t in traces.items() if t.calls}


def _node_hint(record: Mapping[str, Any]) -> str | None:
    """``metadata["node"]`` of a span, when the application named the call's node."""
    attributes = record.get("attributes")
    metadata = attributes.get("metadata") if isinstance(attributes, Mapping) else None
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            return None
    node = metadata.get("node") if isinstance(metadata, Mapping) else None
    return str(node) if isinstance(node, str | int) and str(node) else None


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not slug or not slug[0].isalpha():
        slug = f"node_{slug}" if slug else "node"
    return slug


def _name_calls(traces: Mapping[str, _Trace], program: Program | None) -> dict[str, str]:
    """Span id -> node name, for every call of every trace."""
    names: dict[str, str] = {}
    if program is not None:
        for trace in traces.values():
            for span_name, row in trace.calls:
                node = _match(program, span_name, row, trace.hints.get(row.span_id))
                if node is not None:
                    names[row.span_id] = node
        return names
    keys = ("metadata", "prompt", "span")
    distinct_spans = all(
        len({span for span, _ in t.calls}) == len(t.calls)
        and not any(span.lower() in _GENERIC_SPAN_NAMES for span, _ in t.calls)
        for t in traces.values()
    )
    for trace in traces.values():
        for position, (span_name, row) in enumerate(trace.calls, start=1):
            found = {
                "metadata": trace.hints.get(row.span_id),
                "prompt": (row.prompt_ref or {}).get("name"),
                "span": span_name if distinct_spans else None,
            }
            label = next((found[k] for k in keys if found[k]), None)
            names[row.span_id] = _slug(label) if label else f"call_{position}"
    return names


def _match(program: Program, span_name: str, row: _Row, hint: str | None) -> str | None:
    ref = row.prompt_ref or {}
    for node in program.nodes:
        match = node.match
        if match.span_name is not None and span_name == match.span_name:
            return node.name
        if match.prompt_id is not None and match.prompt_id in (
            ref.get("name"),
            ref.get("version_id"),
        ):
            return node.name
        if match.system_prompt is not None and row.system_prompt == match.system_prompt:
            return node.name
        criteria = (match.span_name, match.prompt_id, match.system_prompt)
        if all(c is None for c in criteria) and node.name in (span_name, hint):
            return node.name
    return None


def _node_order(traces: Mapping[str, _Trace], names: Mapping[str, str]) -> list[str]:
    """Nodes by their usual position in a trace (mean rank), ties by first appearance."""
    ranks: dict[str, list[int]] = defaultdict(list)
    for trace in traces.values():
        for rank, (_, row) in enumerate(trace.calls):
            if row.span_id in names:
                ranks[names[row.span_id]].append(rank)
    return sorted(ranks, key=lambda node: (sum(ranks[node]) / len(ranks[node]), node))


def _template(row: _Row, values: Mapping[str, str]) -> tuple[MessageTemplate, ...] | None:
    """The node's messages with the known values replaced by references (None: not literal)."""
    templates = []
    pairs = sorted(((v, k) for k, v in values.items() if v.strip()), key=lambda p: -len(p[0]))
    for message in row.history:
        if message["role"] not in ("user", "assistant"):
            return None
        text = message_text(message)
        if "{{" in text or "}}" in text:
            return None
        for value, reference in pairs:
            text = text.replace(value, "{{" + reference + "}}")
        templates.append(MessageTemplate(role=message["role"], content=text))
    return tuple(templates)


def _trace_values(trace: _Trace, names: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per node of a trace: the values its template may reference (input, earlier outputs)."""
    first = trace.calls[0][1]
    user_input = next((message_text(m) for m in reversed(first.history) if m["role"] == "user"), "")
    values: dict[str, dict[str, str]] = {}
    known = {INPUT_REFERENCE: user_input}
    for _, row in trace.calls:
        node = names[row.span_id]
        values[node] = dict(known)
        known[output_reference(node)] = message_text(row.output)
    return values


def _infer_program(
    traces: Sequence[_Trace], names: Mapping[str, str], order: Sequence[str]
) -> Program:
    if not traces:
        raise NoUsableSamplesError("No complete trace to infer the program from.")
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for trace in traces:
        values = _trace_values(trace, names)
        for index, (_, row) in enumerate(trace.calls):
            node = names[row.span_id]
            if index == 0:
                continue
            template = _template(row, values[node])
            if template is not None:
                votes[node][json.dumps([m.model_dump() for m in template])] += 1
    nodes = []
    for index, node in enumerate(order):
        if not re.fullmatch(NODE_NAME_PATTERN, node):
            raise ProgramError(f"Cannot name a node {node!r}; name it with metadata['node'].")
        if index == 0 or not votes[node]:
            nodes.append(ProgramNode(name=node))
            continue
        best = json.loads(votes[node].most_common(1)[0][0])
        messages = tuple(MessageTemplate.model_validate(m) for m in best)
        nodes.append(ProgramNode(name=node, messages=messages))
    return Program(nodes=tuple(nodes), output=order[-1])


def _fitting(
    traces: list[_Trace], names: Mapping[str, str], program: Program, skipped: Counter[str]
) -> list[_Trace]:
    """The traces whose every node's messages are what its template renders."""
    kept = []
    for trace in traces:
        values = _trace_values(trace, names)
        ok = True
        for _, row in trace.calls:
            node = program.node(names[row.span_id])
            if node.messages is None:
                continue
            outputs = {
                ref[len("nodes.") : -len(".output")]: text
                for ref, text in values[node.name].items()
                if ref != INPUT_REFERENCE
            }
            try:
                rendered = node.render(values[node.name][INPUT_REFERENCE], outputs)
            except ProgramError:
                ok = False
                break
            logged = [{"role": m["role"], "content": message_text(m)} for m in row.history]
            if rendered != logged:
                ok = False
                break
        if ok:
            kept.append(trace)
        else:
            skipped["other_template"] += 1
    return kept


def _choose_program_evals(
    traces: Sequence[_Trace],
    names: Mapping[str, str],
    output: str,
    root_based: bool,
    constants: Mapping[str, Mapping[str, Any]],
    requested: Sequence[str] | None,
    min_coverage: float,
    skipped: Counter[str],
) -> dict[str, _EvalSpec]:
    """Pick the evals of the root spans (end to end) and of each node's spans."""
    where: dict[str, list[_Row]] = defaultdict(list)
    for trace in traces:
        if trace.root_evals:
            where["<root>"].append(_root_row(trace))
        for _, row in trace.calls:
            where[names[row.span_id]].append(row)
    chosen: dict[str, _EvalSpec] = {}
    for place, rows in where.items():
        found = _choose_evals(rows, constants, None, min_coverage, {}, {}, skipped)
        for name, spec in found.items():
            if requested is not None and name not in requested:
                continue
            if name in chosen:
                continue  # an eval judges one place: the root first, then nodes in order
            node: str | None = None if place == "<root>" else place
            if not root_based and node == output:
                node = None
            chosen[name] = _EvalSpec(
                spec.constants.model_copy(update={"node": node}), spec.constants_id
            )
    return chosen


def _root_row(trace: _Trace) -> _Row:
    """The root span as a row whose output is the program's output (for eval choice)."""
    last = trace.calls[-1][1]
    row = _Row(
        span_id=trace.root_span_id or trace.trace_id,
        trace_id=trace.trace_id,
        timestamp=last.timestamp,
        system_prompt="",
        history=last.history,
        output=last.output,
        model=last.model,
        parameters={},
        prompt_ref=None,
    )
    row.evals = trace.root_evals
    return row


def _eval_result(
    spec: _EvalSpec, result: Mapping[str, Any] | None
) -> tuple[float, str | None, str | None, dict[str, str]]:
    if result is None:
        raise _Skip("missing_evals")
    if "other_constants" in result:
        raise _Skip("other_eval_constants")
    score, label = result["score"], result["label"]
    if score is None and label is not None:
        score = spec.constants.choices.get(str(label))
    if score is None:
        raise _Skip("unscored_eval")
    return float(score), label, result["explanation"], dict(result["variables"])


def _reference(variables: Mapping[str, str]) -> str | None:
    return next((variables[k] for k in REFERENCE_VARIABLE_NAMES if k in variables), None)


def _sample(
    trace: _Trace,
    names: Mapping[str, str],
    program: Program,
    chosen: Mapping[str, _EvalSpec],
    root_based: bool,
) -> Sample:
    rows = {names[row.span_id]: row for _, row in trace.calls}
    output_row = rows[program.output_name]
    scores: dict[str, float] = {}
    labels: dict[str, str] = {}
    reasons: dict[str, str] = {}
    variables: dict[str, dict[str, str]] = {}
    reference: str | None = None
    node_references: dict[str, str] = {}
    for name, spec in chosen.items():
        node = spec.constants.node
        if node is None:
            source = trace.root_evals if root_based else output_row.evals
        else:
            source = rows[node].evals
        score, label, explanation, recorded = _eval_result(spec, source.get(name))
        scores[name] = score
        if label is not None:
            labels[name] = str(label)
        if explanation is not None:
            reasons[name] = str(explanation)
        variables[name] = recorded
        found = _reference(recorded)
        if found is not None:
            if node is None:
                reference = reference or found
            else:
                node_references.setdefault(node, found)
    if not any(spec.constants.node is None for spec in chosen.values()):
        raise _Skip("missing_evals")
    first = rows[program.order[0]]
    return Sample(
        sample_id=trace.trace_id,
        chat_history=first.history,
        output_generation=output_row.output,
        eval_scores=scores,
        eval_labels=labels,
        eval_reasoning=reasons,
        eval_variables=variables,
        reference=reference,
        span_id=trace.root_span_id or output_row.span_id,
        trace_id=trace.trace_id,
        timestamp=first.timestamp,
        metadata={"spans": {node: row.span_id for node, row in rows.items()}},
        node_outputs={node: row.output for node, row in rows.items()},
        node_references=node_references,
    )


def _node_action(rows: Sequence[_Row]) -> Any:
    prompts = Counter(row.system_prompt for row in rows)
    prompt = prompts.most_common(1)[0][0]
    models = Counter(row.model for row in rows if row.system_prompt == prompt)
    return _action(prompt, models.most_common(1)[0][0], rows)
