"""Which checkpoint does a pipeline data set make? Mimic JSONL for programs, and its wiring.

A *pipeline* is a program definition plus a mimic JSONL file. The definition (a JSON file)
holds the :class:`~selfimprove_rl.program.Program` wiring, each node's starting system
prompt, the data file and the kinds of eval::

    {"name": "support_pipeline",
     "description": "...",
     "data": "support_pipeline.jsonl",          # relative to the definition file
     "eval_kind": "exact_match",                # the end-to-end eval, against "output"
     "node_eval_kind": "exact_match",           # one eval per node with expected outputs
     "program": {"nodes": [...], "output": "responder"},
     "prompts": {"router": "...", "responder": "..."}}

Each JSONL line is ``{"input": ..., "output": ..., "nodes": {"router": "billing"}}``: the
trace input (the user message), the program's expected final output and, optionally, what
some nodes should say. Lines are read as mimic lines (:mod:`selfimprove_rl.mimic`: same
``id`` rule, extra keys kept as metadata); ``nodes`` becomes ``Sample.node_references``. The
checkpoint gets one end-to-end eval named ``similarity`` and, for every node that has an
expected output on at least one line, an eval ``<node>_<kind>`` judging that node
(``EvalConstants.node``).

One pipeline ships inside the package (:func:`pipeline_names`): ``support_pipeline``, the
``support_intents`` messages routed by a router (labels ``account``, ``billing``,
``shipping``, ``other``) and answered by a responder that sees only the label.

Example:
    >>> checkpoint = load_pipeline("support_pipeline", limit=3)
    >>> checkpoint.program.order, [c.name for c in checkpoint.eval_constants]
    (('router', 'responder'), ['similarity', 'router_exact_match'])
    >>> checkpoint.samples[0].node_references
    {'router': 'account'}
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfimprove_rl.checkpoint import (
    Action,
    Checkpoint,
    EvalConstants,
    EvalKind,
    Provenance,
    Sample,
)
from selfimprove_rl.errors import ConfigError, DataError, unknown_name_message
from selfimprove_rl.mimic import SIMILARITY_EVAL, _parse_line
from selfimprove_rl.program import Program

_PIPELINE_FOLDER = ("data", "pipelines")


class PipelineSpec(BaseModel):
    """A pipeline definition file: the wiring, the starting prompts, the data and the evals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    data: str = Field(description="The mimic JSONL, relative to the definition file.")
    eval_kind: EvalKind = Field(default="exact_match", description="The end-to-end eval.")
    node_eval_kind: EvalKind = Field(
        default="exact_match", description="The eval of nodes with expected outputs."
    )
    program: Program
    prompts: dict[str, str] = Field(description="Node name -> its starting system prompt.")


def pipeline_names() -> list[str]:
    """Return the names of the pipelines shipped inside the package, sorted.

    Example:
        >>> pipeline_names()
        ['support_pipeline']
    """
    folder = resources.files("selfimprove_rl").joinpath(*_PIPELINE_FOLDER)
    if not folder.is_dir():
        return []
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    )


def pipeline_path(name: str) -> Path:
    """Return the definition file of the shipped pipeline ``name``.

    Raises:
        ConfigError: no shipped pipeline has that name (the message lists them).
    """
    names = pipeline_names()
    if name not in names:
        raise ConfigError(
            unknown_name_message("pipeline", name, names)
            + " To use your own, call load_pipeline_file(path)."
        )
    resource = resources.files("selfimprove_rl").joinpath(*_PIPELINE_FOLDER, f"{name}.json")
    if not isinstance(resource, Path):
        raise DataError(
            f"Pipeline {name!r} is not a file on disk; install selfimprove-rl unzipped."
        )
    return resource


def load_pipeline(
    name: str = "support_pipeline",
    *,
    model: str = "sim-large",
    temperature: float | None = 0.0,
    limit: int | None = None,
) -> Checkpoint:
    """Load a shipped pipeline as a program checkpoint (see :func:`load_pipeline_file`)."""
    return load_pipeline_file(
        pipeline_path(name), model=model, temperature=temperature, limit=limit
    )


def read_pipeline_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a pipeline definition file.

    Raises:
        DataError: the file is missing, not JSON, or not a valid definition (fields named).
    """
    source = Path(path)
    try:
        raw: Any = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"No pipeline definition at {source}.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source} is not a pipeline definition (JSON): {exc}") from exc
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise DataError(f"{source} is not a valid pipeline definition:\n{exc}") from exc
    missing = sorted(set(spec.program.names) - set(spec.prompts))
    extra = sorted(set(spec.prompts) - set(spec.program.names))
    if missing or extra:
        raise DataError(
            f"{source}: expected one starting prompt per node {list(spec.program.names)}; "
            f"missing {missing}, unknown {extra}."
        )
    return spec


def load_pipeline_file(
    path: str | Path,
    *,
    model: str = "sim-large",
    temperature: float | None = 0.0,
    limit: int | None = None,
) -> Checkpoint:
    """Turn a pipeline definition and its mimic JSONL into a program checkpoint.

    Args:
        path: the definition file (JSON).
        model: every node's starting model.
        temperature: every node's temperature (``None`` leaves it unset).
        limit: keep only the first ``limit`` lines of the data.

    Returns:
        The checkpoint (``mimic`` provenance).

    Raises:
        DataError: a malformed definition or data line (file and line named), or a line whose
            ``nodes`` names a node the program does not have.
    """
    source = Path(path)
    spec = read_pipeline_spec(source)
    data_path = source.parent / spec.data
    samples = _read_program_samples(data_path, spec.program, limit)
    actions = {
        name: Action(system_prompt=spec.prompts[name], model=model, temperature=temperature)
        for name in spec.program.names
    }
    evals = [EvalConstants(name=SIMILARITY_EVAL, kind=spec.eval_kind)]
    for name in spec.program.order:
        if any(name in sample.node_references for sample in samples):
            evals.append(
                EvalConstants(
                    name=f"{name}_{spec.node_eval_kind}", kind=spec.node_eval_kind, node=name
                )
            )
    scores = {constants.name: 1.0 for constants in evals}
    samples = [
        sample.model_copy(
            update={
                "eval_scores": {
                    name: score for name, score in scores.items() if _judged(evals, name, sample)
                }
            }
        )
        for sample in samples
    ]
    return Checkpoint(
        samples=samples,
        action=actions[spec.program.output_name],
        eval_constants=evals,
        provenance=Provenance(
            source="mimic",
            description=f"pipeline {spec.name}: {len(samples)} traces; {spec.description}".strip(),
            data_path=str(data_path.resolve()),
        ),
        program=spec.program,
        node_actions=actions,
    )


def _judged(evals: list[EvalConstants], name: str, sample: Sample) -> bool:
    node = next(c.node for c in evals if c.name == name)
    return node is None or node in sample.node_references


def _read_program_samples(source: Path, program: Program, limit: int | None) -> list[Sample]:
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"Expects limit to be a positive int or None, got {limit!r}")
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(
            f"No pipeline data at {source} (named by the definition's 'data')."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read pipeline data {source}: {exc}") from exc
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        if limit is not None and len(samples) >= limit:
            break
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        sample = _parse_line(line, source, number)
        if sample.sample_id in seen:
            raise DataError(
                f"{source}:{number}: sample id {sample.sample_id!r} was already used on line "
                f"{seen[sample.sample_id]}; ids must be unique."
            )
        seen[sample.sample_id] = number
        metadata = dict(sample.metadata)
        references = _node_references(metadata.pop("nodes", {}), program, f"{source}:{number}")
        samples.append(
            sample.model_copy(update={"metadata": metadata, "node_references": references})
        )
    if not samples:
        raise DataError(f'{source} holds no traces; expected {{"input", "output"}} lines.')
    return samples


def _node_references(raw: Any, program: Program, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(key, str) and isinstance(value, str) and value.strip()
        for key, value in raw.items()
    ):
        raise DataError(
            f'{where}: expected "nodes" to map node names to non-empty expected outputs, '
            f"got {json.dumps(raw)[:80]}."
        )
    for key in raw:
        if key not in program.names:
            raise DataError(f"{where}: " + unknown_name_message("node", key, program.names))
    return dict(raw)
