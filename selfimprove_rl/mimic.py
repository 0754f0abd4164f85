r"""Which checkpoint does a mimic data set make? One sample per line, replies as references.

A mimic data set is a JSONL file of ``{"input": ..., "output": ...}`` lines: what a user said
and what a small deterministic agent answered. It stands in for Phoenix telemetry when there
is none: each line becomes a :class:`~selfimprove_rl.checkpoint.Sample` whose logged output
is also its reference, scored by one similarity eval (1.0 for every logged output), and the
starting action is a placeholder SOP prompt that says nothing useful yet. Optimizing that
prompt until replays reproduce the logged outputs is the task.

Two data sets ship inside the package (``dataset_names()``): ``coffee_sports`` (200 lines,
two replies) and ``support_intents`` (160 lines, four canned support replies).

Line format: ``input`` and ``output`` are non-empty strings; an optional ``id`` (string or
integer) becomes the sample id, otherwise the id is derived from the line number and a hash
of the content; every other key goes to ``Sample.metadata``. Blank lines are skipped; any
other malformed line raises :class:`~selfimprove_rl.errors.DataError` naming the file, the
line and the fix; no line is skipped silently or changed on the way in. Besides the JSON
syntax and the fields above, a line is malformed when it holds a key twice, ``NaN`` or
``Infinity`` (not JSON; a checkpoint would turn them into ``null``), a number of more than
:data:`MAX_NUMBER_DIGITS` digits, a lone surrogate escape (``"\ud800"``, not text), or
values nested deeper than :data:`MAX_JSON_DEPTH`. A file is read as UTF-8 (a leading byte
order mark is allowed).

Example:
    >>> checkpoint = load_dataset("coffee_sports", limit=4)
    >>> len(checkpoint.samples), checkpoint.action.model, checkpoint.provenance.source
    (4, 'sim-large', 'mimic')
    >>> checkpoint.samples[0].eval_scores
    {'similarity': 1.0}
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from selfimprove_rl.checkpoint import (
    Action,
    Checkpoint,
    EvalConstants,
    EvalKind,
    Provenance,
    Sample,
)
from selfimprove_rl.errors import ConfigError, DataError, unknown_name_message

PLACEHOLDER_SOP_PROMPT = (
    "You are a friendly assistant. Reply to the user's message.\n"
    "\n"
    "## SOP\n"
    "Answer the user in a way that fits what they said."
)
"""The starting action's system prompt: a general block and a vague, rule-free SOP block."""

SIMILARITY_EVAL = "similarity"
MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays and objects a line may hold (checkpoints serialize it)."""
MAX_NUMBER_DIGITS = 1000
"""Longest integer a line may hold, in digits."""
_DATA_PACKAGE = "selfimprove_rl"
_DATA_FOLDER = "data"
_RESERVED_KEYS = frozenset({"input", "output", "id"})
_REFERENCE_EVAL_KINDS: tuple[EvalKind, ...] = tuple(
    kind for kind in get_args(EvalKind) if kind != "classifier"
)


def dataset_names() -> list[str]:
    """Return the names of the mimic data sets shipped inside the package, sorted.

    Example:
        >>> dataset_names()
        ['coffee_sports', 'support_intents']
    """
    folder = resources.files(_DATA_PACKAGE).joinpath(_DATA_FOLDER)
    if not folder.is_dir():
        return []
    return sorted(
        entry.name.removesuffix(".jsonl")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".jsonl")
    )


def dataset_path(name: str) -> Path:
    """Return the path of the shipped mimic data set called ``name``.

    Args:
        name: a data set name, e.g. ``"coffee_sports"`` (see :func:`dataset_names`).

    Returns:
        The JSONL file inside the installed package.

    Raises:
        ConfigError: no shipped data set has that name; the message lists the shipped ones.
    """
    names = dataset_names()
    if name not in names:
        raise ConfigError(
            unknown_name_message("mimic data set", name, names)
            + " To use your own file, call load_mimic_jsonl(path)."
        )
    resource = resources.files(_DATA_PACKAGE).joinpath(_DATA_FOLDER, f"{name}.jsonl")
    if not isinstance(resource, Path):
        raise DataError(
            f"Mimic data set {name!r} is not a file on disk (the package is installed as "
            f"{type(resource).__name__}); install selfimprove-rl unzipped."
        )
    return resource


def load_dataset(
    name: str = "coffee_sports",
    *,
    model: str = "sim-large",
    system_prompt: str | None = None,
    temperature: float | None = 0.0,
    eval_kind: EvalKind = "embedding_similarity",
    limit: int | None = None,
) -> Checkpoint:
    """Load a shipped mimic data set as a checkpoint (see :func:`load_mimic_jsonl`).

    Raises:
        ConfigError: unknown data set name, or a bad option.
        DataError: the file is malformed.
    """
    return load_mimic_jsonl(
        dataset_path(name),
        model=model,
        system_prompt=system_prompt,
        temperature=temperature,
        eval_kind=eval_kind,
        limit=limit,
    )


def load_mimic_jsonl(
    path: str | os.PathLike[str],
    *,
    model: str = "sim-large",
    system_prompt: str | None = None,
    temperature: float | None = 0.0,
    eval_kind: EvalKind = "embedding_similarity",
    limit: int | None = None,
) -> Checkpoint:
    """Turn a mimic JSONL file into a checkpoint whose eval is similarity to the logged output.

    Args:
        path: the JSONL file.
        model: the model of the starting action.
        system_prompt: the starting system prompt; ``None`` uses
            :data:`PLACEHOLDER_SOP_PROMPT`.
        temperature: the starting action's temperature (``None`` leaves it unset).
        eval_kind: how the ``similarity`` eval compares a new output with the reference:
            ``embedding_similarity``, ``exact_match`` or ``bleu``.
        limit: keep only the first ``limit`` samples of the file.

    Returns:
        A checkpoint with one sample per non-blank line (in file order), the starting action,
        one eval named ``similarity`` and ``mimic`` provenance.

    Raises:
        ConfigError: ``eval_kind`` needs more than a reference, or ``limit`` is not positive.
        DataError: the file is missing, unreadable, empty or has a malformed line.
    """
    if eval_kind not in _REFERENCE_EVAL_KINDS:
        raise ConfigError(
            f"Expects eval_kind to compare with the reference "
            f"({', '.join(_REFERENCE_EVAL_KINDS)}), got {eval_kind!r}; a classifier eval "
            "needs a template and rails, which a mimic data set does not have."
        )
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"Expects limit to be a positive int or None, got {limit!r}")
    source = Path(path)
    samples = _read_samples(source, limit)
    return Checkpoint(
        samples=samples,
        action=Action(
            system_prompt=PLACEHOLDER_SOP_PROMPT if system_prompt is None else system_prompt,
            model=model,
            temperature=temperature,
        ),
        eval_constants=[EvalConstants(name=SIMILARITY_EVAL, kind=eval_kind)],
        provenance=Provenance(
            source="mimic",
            description=(
                f"mimic data set {source.name}: {len(samples)} samples; "
                "the logged output is the reference"
            ),
            data_path=str(source.resolve()),
        ),
    )


def _read_samples(source: Path, limit: int | None) -> list[Sample]:
    try:
        text = source.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(
            f"No mimic data set at {source}. Pass a JSONL file of "
            f'{{"input": ..., "output": ...}} lines, or a shipped name to load_dataset '
            f"({', '.join(dataset_names())})."
        ) from exc
    except UnicodeDecodeError as exc:
        line_number = source.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{source}:{line_number}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
            "file as UTF-8."
        ) from exc
    except OSError as exc:
        raise DataError(f"Cannot read mimic data set {source}: {exc}") from exc
    samples: list[Sample] = []
    first_line_of: dict[str, int] = {}
    # Split on "\n" only: str.splitlines would also split inside strings holding U+2028.
    for number, raw in enumerate(text.split("\n"), start=1):
        if limit is not None and len(samples) >= limit:
            break
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        sample = _parse_line(line, source, number)
        if sample.sample_id in first_line_of:
            raise DataError(
                f"{source}:{number}: sample id {sample.sample_id!r} was already used on line "
                f"{first_line_of[sample.sample_id]}; ids must be unique."
            )
        first_line_of[sample.sample_id] = number
        samples.append(sample)
    if not samples:
        raise DataError(
            f'{source} holds no samples; expected one {{"input": ..., "output": ...}} '
            "object per line."
        )
    return samples


class _LineProblem(ValueError):
    """Raised by the JSON hooks below; its message completes "<file>:<line>: "."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _LineProblem(f"key {key!r} appears twice in one object; keep one.")
            seen.add(key)
    return record


def _non_finite(token: str) -> float:
    raise _LineProblem(f"{token} is not a JSON number; write null or a string instead.")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _LineProblem(f"{text[:20]} overflows a float; write a smaller number or a string.")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _LineProblem(
            f"a number has {len(text.lstrip('-'))} digits (at most {MAX_NUMBER_DIGITS}); "
            "write it as a string."
        )
    return int(text)


def _loads(line: str) -> Any:
    """``json.loads`` that rejects what a checkpoint could not keep exactly."""
    try:
        return json.loads(
            line,
            object_pairs_hook=_object,
            parse_constant=_non_finite,
            parse_float=_float,
            parse_int=_int,
        )
    except RecursionError as exc:
        raise _LineProblem(
            f"values are nested too deeply (at most {MAX_JSON_DEPTH} levels); flatten them."
        ) from exc


def _check_values(record: Any) -> None:
    """Reject lone surrogates (in keys or strings) and nesting deeper than MAX_JSON_DEPTH."""
    stack: list[tuple[Any, str, int]] = [(record, "the line", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _LineProblem(
                f"values are nested too deeply (at most {MAX_JSON_DEPTH} levels); flatten them."
            )
        if isinstance(value, str):
            if any("\ud800" <= char <= "\udfff" for char in value):
                raise _LineProblem(
                    f"{where} holds a lone surrogate escape (like \\ud800), which is not "
                    "text; fix the escape or drop it."
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, f"a key in {where}", depth + 1))
                stack.append((item, f"{key!r}" if depth == 0 else where, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, where, depth + 1) for item in value)


def _parse_line(line: str, source: Path, number: int) -> Sample:
    where = f"{source}:{number}"
    try:
        record: Any = _loads(line)
        _check_values(record)
    except json.JSONDecodeError as exc:
        raise DataError(
            f'{where}: expected a JSON object like {{"input": "...", "output": "..."}}, '
            f"got invalid JSON ({exc.msg} at column {exc.colno})."
        ) from exc
    except _LineProblem as exc:
        raise DataError(f"{where}: {exc}") from exc
    if not isinstance(record, dict):
        raise DataError(
            f'{where}: expected a JSON object like {{"input": "...", "output": "..."}}, '
            f"got a JSON {_json_type(record)}."
        )
    user_text = _required_text(record, "input", where)
    reply_text = _required_text(record, "output", where)
    return Sample(
        sample_id=_sample_id(record, user_text, reply_text, where, number),
        chat_history=[{"role": "user", "content": user_text}],
        output_generation={"role": "assistant", "content": reply_text},
        eval_scores={SIMILARITY_EVAL: 1.0},
        reference=reply_text,
        metadata={key: value for key, value in record.items() if key not in _RESERVED_KEYS},
    )


def _required_text(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise DataError(
            f"{where}: expected a non-empty string under {key!r}, but the key is missing "
            f"(keys present: {', '.join(sorted(record)) or 'none'})."
        )
    value = record[key]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: expected {key!r} to be a non-empty string, got a JSON "
            f"{_json_type(value)} ({json.dumps(value)[:60]})."
        )
    if not value.strip():
        raise DataError(f"{where}: expected {key!r} to be a non-empty string, got {value!r}.")
    return value


def _sample_id(
    record: dict[str, Any], user_text: str, reply_text: str, where: str, number: int
) -> str:
    if "id" in record:
        value = record["id"]
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            raise DataError(
                f"{where}: expected 'id' to be a non-empty string or an integer, got "
                f"{json.dumps(value)[:60]}; drop the key to derive an id from the line."
            )
        return str(value)
    digest = hashlib.sha256(f"{user_text}\n{reply_text}".encode()).hexdigest()[:10]
    return f"line{number:04d}-{digest}"


def _json_type(value: object) -> str:
    """Name the JSON type of a decoded value (``object``, ``array``, ``number``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string" if isinstance(value, str) else type(value).__name__
