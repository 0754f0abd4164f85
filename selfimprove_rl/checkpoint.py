"""What do we learn from? The frozen record of logged calls, their evals and their action.

A :class:`Checkpoint` is the boundary between telemetry (Phoenix, files, mimic data sets) and
everything downstream (replay, evals, env, policies). It is plain pydantic v2 data: saved and
loaded losslessly as JSON, and split reproducibly into train / test / holdout.

Conventions:

* ``Sample.chat_history`` holds the conversation *after* the system prompt (user, assistant
  and tool turns, OpenAI chat-completion message dicts). The system prompt belongs to the
  :class:`Action`, because it is the thing being optimized; replay sends
  ``[system] + chat_history`` under a candidate action.
* ``Sample.output_generation`` is the assistant message that was logged.
* ``Sample.reference`` is the reference output an eval compares against, when there is one
  (for mimic data sets it is the logged output).

Programs (schema version 2): a checkpoint may hold a :class:`~selfimprove_rl.program.Program`,
several LLM calls wired by message templates, with one :class:`Action` per node in
``node_actions``. A sample is then a trace: ``chat_history`` is the trace input,
``output_generation`` and ``reference`` are the program's (end-to-end) output and expected
output, and ``node_outputs`` / ``node_references`` hold what each node logged and, when
known, what it should have said. An eval with ``EvalConstants.node`` set judges that node's
output; the others judge the end-to-end output. A checkpoint without a program is the
single-call case, exactly as in schema version 1, which still loads (:func:`migrate`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfimprove_rl.errors import CheckpointError
from selfimprove_rl.fileio import atomic_write_text
from selfimprove_rl.program import Program

CHECKPOINT_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)

EvalKind = Literal["classifier", "exact_match", "bleu", "embedding_similarity"]
SplitName = Literal["train", "test", "holdout"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "test", "holdout")


def message_text(message: dict[str, Any]) -> str:
    """Return the text of an OpenAI chat message, joining text parts of multi-part content.

    Example:
        >>> message_text({"role": "user", "content": [{"type": "text", "text": "hi"}]})
        'hi'
    """
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


class Sample(BaseModel):
    """One logged call: its conversation, its output, and the evals it received."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sample_id: str = Field(description="Stable id; the span id for Phoenix data.")
    chat_history: list[dict[str, Any]] = Field(
        description="Messages after the system prompt, as OpenAI chat-completion dicts."
    )
    output_generation: dict[str, Any] = Field(description="The logged assistant message.")
    eval_scores: dict[str, float] = Field(default_factory=dict)
    eval_labels: dict[str, str] = Field(default_factory=dict)
    eval_reasoning: dict[str, str] = Field(default_factory=dict)
    eval_variables: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per eval, the template variable values recorded with its result "
        "(reference, context...), so the eval can be re-run on a new output.",
    )
    reference: str | None = Field(default=None, description="Reference output, when known.")
    span_id: str | None = None
    trace_id: str | None = None
    timestamp: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    node_outputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Programs: node name -> the assistant message that node logged.",
    )
    node_references: dict[str, str] = Field(
        default_factory=dict,
        description="Programs: node name -> what that node should have said, when known.",
    )

    @field_validator("chat_history")
    @classmethod
    def _messages_have_roles(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(value):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"chat_history[{index}] has no 'role'; got keys {sorted(message)}")
        return value

    @property
    def input_text(self) -> str:
        """The text of the last user message (empty when there is none)."""
        for message in reversed(self.chat_history):
            if message.get("role") == "user":
                return message_text(message)
        return ""

    @property
    def output_text(self) -> str:
        """The text of the logged assistant message."""
        return message_text(self.output_generation)


class Demo(BaseModel):
    """A few-shot demonstration: a user turn and the assistant reply, sent before the history.

    Demonstrations as chat turns are often the strongest lever on a real model (DSPy's central
    one), so they are part of the optimized action, versioned and published with the prompt.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(description="The user turn.")
    output: str = Field(description="The assistant reply the model should imitate.")

    def messages(self) -> list[dict[str, str]]:
        """Return the demonstration as two OpenAI chat messages (user, then assistant).

        Example:
            >>> Demo(input="hi", output="Hello!").messages()[1]
            {'role': 'assistant', 'content': 'Hello!'}
        """
        return [
            {"role": "user", "content": self.input},
            {"role": "assistant", "content": self.output},
        ]


class Action(BaseModel):
    """The parameters of the optimized call: system prompt, demos, model, invocation params."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    system_prompt: str
    model: str
    demos: tuple[Demo, ...] = Field(
        default=(),
        description="Few-shot demonstrations sent as user/assistant turns after the system "
        "prompt and before the sample's conversation.",
    )
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    extra_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Other invocation parameters sent with every call (stop, response_format...).",
    )

    def invocation_parameters(self) -> dict[str, Any]:
        """Return the request parameters other than model and messages, omitting unset ones.

        Example:
            >>> Action(system_prompt="s", model="m", temperature=0.0).invocation_parameters()
            {'temperature': 0.0}
        """
        params: dict[str, Any] = {
            key: value
            for key, value in (
                ("temperature", self.temperature),
                ("top_p", self.top_p),
                ("max_tokens", self.max_tokens),
                ("seed", self.seed),
            )
            if value is not None
        }
        params.update(self.extra_parameters)
        return params

    def prefix_messages(self) -> list[dict[str, Any]]:
        """Return the messages every call starts with: the system prompt, then the demos.

        Example:
            >>> demo = Demo(input="a", output="b")
            >>> action = Action(system_prompt="Be brief.", model="m", demos=(demo,))
            >>> [m["role"] for m in action.prefix_messages()]
            ['system', 'user', 'assistant']
        """
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system_prompt}]
        for demo in self.demos:
            messages.extend(demo.messages())
        return messages


class EvalConstants(BaseModel):
    """Everything needed to re-run one eval on a new output.

    For ``kind="classifier"`` this is a Phoenix-evals classification: a prompt template whose
    ``output_variable`` receives the new output, its rails (``choices``, label to score, in
    rail order) and the judge model. Code evals (exact match, BLEU, embedding similarity)
    compare the new output with ``Sample.reference`` and need no template.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str
    kind: EvalKind = "classifier"
    template: str | None = None
    template_variables: list[str] = Field(default_factory=list)
    choices: dict[str, float] = Field(default_factory=dict)
    output_variable: str = "output"
    eval_model: str | None = None
    eval_provider: str | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    weight: float = Field(default=1.0, ge=0.0)
    template_format: Literal["string", "messages"] = Field(
        default="string",
        description='"messages": `template` holds a JSON list of {role, content} messages '
        "(the form of Phoenix's built-in metrics); see `prompt_template()`.",
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="Rail descriptions, when the choices carried them."
    )
    include_explanation: bool = True
    eval_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Invocation parameters sent to the judge model."
    )
    node: str | None = Field(
        default=None,
        description="Programs: the node whose output this eval judges (None: end to end).",
    )

    @model_validator(mode="after")
    def _classifier_has_template_and_rails(self) -> EvalConstants:
        if self.kind == "classifier":
            if not self.template:
                raise ValueError(f"eval {self.name!r}: a classifier needs a template")
            if not self.choices:
                raise ValueError(f"eval {self.name!r}: a classifier needs choices (rails)")
        return self

    @property
    def rails(self) -> list[str]:
        """The labels a classifier may answer, in order."""
        return list(self.choices)

    def prompt_template(self) -> str | list[dict[str, Any]]:
        """The template as Phoenix evals takes it: a string, or a list of chat messages.

        Example:
            >>> EvalConstants(name="e", template="Is {output} ok?", choices={"yes": 1.0}
            ...               ).prompt_template()
            'Is {output} ok?'
        """
        if self.template_format == "messages" and self.template:
            messages = json.loads(self.template)
            if not isinstance(messages, list):
                raise ValueError(f"eval {self.name!r}: template is not a JSON list of messages")
            return messages
        return self.template or ""


class Provenance(BaseModel):
    """Where a checkpoint came from, so every report can say what its numbers rest on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["mimic", "phoenix", "file", "manual"]
    description: str | None = None
    data_path: str | None = None
    endpoint: str | None = None
    project: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    created_at: datetime | None = None
    phoenix_prompt: dict[str, str] | None = Field(
        default=None, description="Phoenix prompt name / version id the traced calls used."
    )
    skipped: dict[str, int] = Field(
        default_factory=dict, description="Rows left out while building, counted by reason."
    )


class Splits(NamedTuple):
    """Samples of each split; every sample is in exactly one."""

    train: list[Sample]
    test: list[Sample]
    holdout: list[Sample]

    def by_name(self, name: SplitName) -> list[Sample]:
        """Return the samples of the split called ``name``."""
        return {"train": self.train, "test": self.test, "holdout": self.holdout}[name]


class Checkpoint(BaseModel):
    """Logged samples, the action that produced them, and the evals that scored them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = CHECKPOINT_SCHEMA_VERSION
    samples: list[Sample]
    action: Action = Field(
        description="The call's action; for a program, its output node's (see node_actions)."
    )
    eval_constants: list[EvalConstants]
    provenance: Provenance
    program: Program | None = Field(
        default=None, description="The wiring of a multi-call program (None: a single call)."
    )
    node_actions: dict[str, Action] = Field(
        default_factory=dict, description="Programs: node name -> that node's logged action."
    )

    @model_validator(mode="before")
    @classmethod
    def _action_of_output_node(cls, data: Any) -> Any:
        # A program's `action` is its output node's: filled in when left out.
        if isinstance(data, dict) and "action" not in data and data.get("program") is not None:
            program = Program.model_validate(data["program"])
            actions = data.get("node_actions") or {}
            if program.output_name in actions:
                data = {**data, "action": actions[program.output_name]}
        return data

    @model_validator(mode="after")
    def _ids_unique_and_evals_named(self) -> Checkpoint:
        id_counts = Counter(sample.sample_id for sample in self.samples)
        dupes = sorted(sample_id for sample_id, count in id_counts.items() if count > 1)
        if dupes:
            raise ValueError(f"sample ids must be unique; duplicated: {dupes[:5]}")
        names = [constants.name for constants in self.eval_constants]
        if len(set(names)) != len(names):
            raise ValueError(f"eval names must be unique; got {names}")
        self._check_program()
        return self

    def _check_program(self) -> None:
        if self.program is None:
            if self.node_actions:
                raise ValueError("node_actions needs a program; a single call uses `action`")
            nodes = sorted({c.node for c in self.eval_constants if c.node is not None})
            if nodes:
                raise ValueError(f"evals name nodes {nodes} but the checkpoint has no program")
            return
        names = set(self.program.names)
        if set(self.node_actions) != names:
            raise ValueError(
                f"node_actions must hold one action per node: expected {sorted(names)}, "
                f"got {sorted(self.node_actions)}"
            )
        if self.action != self.node_actions[self.program.output_name]:
            raise ValueError(
                f"action must be the output node's ({self.program.output_name!r}) action"
            )
        for constants in self.eval_constants:
            if constants.node is not None and constants.node not in names:
                raise ValueError(
                    f"eval {constants.name!r} judges node {constants.node!r}, which the program "
                    f"does not have (nodes: {sorted(names)})"
                )
        if not any(c.node is None for c in self.eval_constants):
            raise ValueError("a program needs at least one end-to-end eval (node = None)")

    @property
    def is_program(self) -> bool:
        """Whether the checkpoint holds a multi-call program rather than a single call."""
        return self.program is not None

    def as_program(self) -> tuple[Program, dict[str, Action]]:
        """Return the program and one action per node; a single call is a one-node program.

        Example:
            >>> checkpoint = Checkpoint(samples=[], action=Action(system_prompt="s", model="m"),
            ...                         eval_constants=[], provenance=Provenance(source="manual"))
            >>> program, actions = checkpoint.as_program()
            >>> program.names, actions["call"].model
            (('call',), 'm')
        """
        if self.program is None:
            program = Program.single()
            return program, {program.output_name: self.action}
        return self.program, dict(self.node_actions)

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint as JSON atomically; returns the path written."""
        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint written by :meth:`save`.

        The schema version is checked before the contents, so a checkpoint from another
        version of selfimprove-rl gets a version message rather than field errors.

        Raises:
            CheckpointError: the file is missing or unreadable, not JSON, of another schema
                version, or not a valid checkpoint.
        """
        target = Path(path)
        try:
            raw = target.read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointError(
                f"No checkpoint at {target}. Build one with `selfimprove-rl fetch`."
            ) from exc
        except OSError as exc:
            raise CheckpointError(f"Cannot read checkpoint {target}: {exc}") from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{target} is not a checkpoint: expected the JSON written by Checkpoint.save, "
                f"got unparseable content ({exc})."
            ) from exc
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{target} is not a checkpoint: expected a JSON object, "
                f"got a JSON {type(data).__name__}."
            )
        version = data.get("schema_version", CHECKPOINT_SCHEMA_VERSION)
        if version not in READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
            raise CheckpointError(
                f"{target} has schema_version {version!r}; this version of "
                f"selfimprove-rl reads {readable}. Rebuild the checkpoint."
            )
        try:
            return cls.model_validate(migrate(data))
        except ValidationError as exc:
            raise CheckpointError(f"{target} is not a valid checkpoint:\n{exc}") from exc

    def sample(self, sample_id: str) -> Sample:
        """Return the sample with ``sample_id``.

        Raises:
            KeyError: no such sample.
        """
        for candidate in self.samples:
            if candidate.sample_id == sample_id:
                return candidate
        raise KeyError(sample_id)

    def split(
        self,
        seed: int = 0,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        stratify: bool = True,
    ) -> Splits:
        """Split samples into train / test / holdout, reproducibly for a seed.

        Samples are ordered by a hash of their content (conversation and reference), then id,
        before shuffling, so the split depends neither on the order they were loaded in nor on
        the ids a re-fetch gives them (Phoenix span ids differ between exports of the same
        traffic). With ``stratify`` and references present, each reference output
        is divided in the same proportions, as closely as whole numbers allow, while the
        split sizes stay those of the whole (largest-remainder rounding of the total, so
        small strata cannot bias them); when references are nearly all distinct (more
        groups than a fifth of the samples) stratifying would be meaningless, and the split
        falls back to a plain shuffle.

        Args:
            seed: the split seed; the same seed always gives the same split.
            fractions: train, test and holdout shares; must be non-negative and sum to 1.
            stratify: divide each reference output proportionally.

        Returns:
            The three splits, each ordered as shuffled.

        Raises:
            CheckpointError: bad fractions, or too few samples to give every split one.
        """
        if (
            len(fractions) != 3
            or any(f < 0 for f in fractions)
            or not math.isclose(sum(fractions), 1.0)
        ):
            raise CheckpointError(
                f"Expects three non-negative split fractions summing to 1, got {fractions}"
            )
        wanted = sum(1 for f in fractions if f > 0)
        if len(self.samples) < wanted:
            raise CheckpointError(
                f"Expects at least {wanted} samples to split, got {len(self.samples)}"
            )
        rng = np.random.default_rng(seed)
        ordered = sorted(self.samples, key=_content_order)
        groups: dict[str, list[Sample]] = defaultdict(list)
        references = [s.reference for s in ordered]
        use_strata = stratify and all(r is not None for r in references)
        if use_strata and len(set(references)) > max(1, len(ordered) // 5):
            use_strata = False
        for sample in ordered:
            groups[sample.reference if use_strata and sample.reference is not None else ""].append(
                sample
            )
        keys = sorted(groups)
        allocation = _stratified_counts([len(groups[key]) for key in keys], fractions)
        parts: tuple[list[Sample], list[Sample], list[Sample]] = ([], [], [])
        for key, counts in zip(keys, allocation, strict=True):
            members = groups[key]
            order = rng.permutation(len(members))
            start = 0
            for part, count in zip(parts, counts, strict=True):
                part.extend(members[i] for i in order[start : start + count])
                start += count
        for part in parts:
            shuffle = rng.permutation(len(part))
            part[:] = [part[i] for i in shuffle]
        return Splits(*parts)


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring checkpoint JSON of an older schema version up to the current one.

    Version 1 (single calls only) differs from version 2 only by the fields version 2 added,
    which all default to "no program", so migrating sets the version number.

    Example:
        >>> migrate({"schema_version": 1, "samples": []})["schema_version"]
        2
    """
    version = data.get("schema_version", CHECKPOINT_SCHEMA_VERSION)
    if version == 1:
        data = {**data, "schema_version": 2}
    return data


def _stratified_counts(sizes: list[int], fractions: tuple[float, float, float]) -> list[list[int]]:
    """Divide strata of ``sizes`` among three splits.

    Each split gets exactly the largest-remainder share of the total. Each stratum gets the
    floor of its share per split, and its leftover items (at most one per split) go to the
    splits with the most room left, neediest stratum first (Ryser's greedy construction). With
    the default 60/20/20 every stratum then stays within one item of its exact share per
    split; with unusual fractions a stratum can, rarely, be off by up to two.
    """
    targets = _largest_remainder(sum(sizes), fractions)
    exact = [[size * f for f in fractions] for size in sizes]
    counts = [[math.floor(x) for x in row] for row in exact]
    room = [targets[s] - sum(row[s] for row in counts) for s in range(3)]
    for g in sorted(range(len(sizes)), key=lambda g: (sum(counts[g]) - sizes[g], g)):
        need = sizes[g] - sum(counts[g])
        ranked = sorted(
            range(3),
            key=lambda s: (room[s] > 0, exact[g][s] > counts[g][s], room[s], -s),
            reverse=True,
        )
        for s in ranked[:need]:
            counts[g][s] += 1
            room[s] -= 1
    return counts


def _content_order(sample: Sample) -> tuple[str, str]:
    """Sort key of a sample by content: a hash of its conversation and reference, then id."""
    content = json.dumps([sample.chat_history, sample.reference], sort_keys=True, default=str)
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest(), sample.sample_id


def _largest_remainder(total: int, fractions: tuple[float, float, float]) -> list[int]:
    """Divide ``total`` items by ``fractions`` into whole counts that sum to ``total``."""
    raw = [total * f for f in fractions]
    counts = [math.floor(x) for x in raw]
    remainders = sorted(range(3), key=lambda i: (raw[i] - counts[i], -i), reverse=True)
    for i in remainders[: total - sum(counts)]:
        counts[i] += 1
    return counts
