"""What was downloaded? The telemetry frames, their summary, and their file form.

:class:`TelemetryFrames` holds three pandas DataFrames, the same whether they came from a
Phoenix server or a file:

* ``spans`` — one row per LLM span: ``span_id``, ``trace_id``, ``parent_id``, ``name``,
  ``span_kind``, ``start_time`` / ``end_time`` (UTC), ``status_code``, ``status_message`` and
  ``attributes`` (a dict of the span's OpenInference attributes as Phoenix returns them, e.g.
  ``llm.input_messages`` is a list of ``{"message.role", "message.content", ...}`` dicts);
* ``annotations`` — one row per span annotation: ``span_id``, ``name``, ``label``,
  ``score``, ``explanation``, ``annotator_kind``, ``identifier``, ``metadata`` (dict), ...;
* ``evals`` — one row per recorded set of eval constants: ``constants_id``, ``name``,
  ``constants`` (dict, see :func:`selfimprove_rl.telemetry.instrument.constants_of`).

Files: ``save("x.jsonl")`` writes one JSONL file (a header line, then one line per row);
``save("x.parquet")`` writes a folder ``x.parquet/`` holding ``spans.parquet``,
``annotations.parquet``, ``evals.parquet`` and ``info.json`` (dict columns as JSON text).
"""

from __future__ import annotations

import json
import math
import numbers
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from selfimprove_rl.errors import DataError
from selfimprove_rl.fileio import atomic_write_text

FRAMES_SCHEMA_VERSION = 1
SPAN_COLUMNS = [
    "span_id",
    "trace_id",
    "parent_id",
    "name",
    "span_kind",
    "start_time",
    "end_time",
    "status_code",
    "status_message",
    "attributes",
]
ANNOTATION_COLUMNS = [
    "span_id",
    "name",
    "label",
    "score",
    "explanation",
    "annotator_kind",
    "identifier",
    "metadata",
    "source",
    "created_at",
    "updated_at",
]
EVAL_COLUMNS = ["constants_id", "name", "constants"]
_DICT_COLUMNS = {"spans": ["attributes"], "annotations": ["metadata"], "evals": ["constants"]}
_TIME_COLUMNS = {"spans": ["start_time", "end_time"], "annotations": [], "evals": []}
FrameName = Literal["spans", "annotations", "evals"]
FRAME_NAMES: tuple[FrameName, ...] = ("spans", "annotations", "evals")
_COLUMNS: dict[str, list[str]] = {
    "spans": SPAN_COLUMNS,
    "annotations": ANNOTATION_COLUMNS,
    "evals": EVAL_COLUMNS,
}


class FetchInfo(BaseModel):
    """Where and for which window the frames were fetched."""

    source: Literal["phoenix", "file"] = "phoenix"
    endpoint: str | None = None
    project: str | None = None
    eval_project: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    fetched_at: datetime | None = None
    data_path: str | None = None


class FetchSummary(BaseModel):
    """Counts a developer checks after a fetch (also printed by ``selfimprove-rl fetch``)."""

    project: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    spans: int = Field(0, description="LLM spans in the window.")
    evaluated_spans: int = Field(0, description="LLM spans with at least one annotation.")
    annotations: int = 0
    evals_by_name: dict[str, int] = Field(default_factory=dict)
    replayable_evals: list[str] = Field(
        default_factory=list, description="Evals whose constants were recovered from Phoenix."
    )
    evals_without_constants: list[str] = Field(
        default_factory=list,
        description="Annotation names with no recorded constants (not re-runnable).",
    )
    skipped: dict[str, int] = Field(
        default_factory=dict, description="Rows the fetch dropped, by reason."
    )
    samples: int | None = Field(
        default=None, description="Samples of the last checkpoint built from these frames."
    )
    build_skipped: dict[str, int] = Field(
        default_factory=dict, description="Rows the last checkpoint build skipped, by reason."
    )
    pages: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = Field(
        default_factory=dict, description="Seconds spent on spans, annotations and constants."
    )

    def __str__(self) -> str:
        window = f"{_iso(self.since)} .. {_iso(self.until) if self.until else 'now'}"
        lines = [
            f"project:          {self.project or '-'}",
            f"window:           {window}",
            f"LLM spans:        {self.spans}",
            f"evaluated spans:  {self.evaluated_spans}",
            f"annotations:      {self.annotations}",
        ]
        for name, count in sorted(self.evals_by_name.items()):
            mark = "replayable" if name in self.replayable_evals else "no constants"
            lines.append(f"  eval {name}: {count} ({mark})")
        if self.skipped:
            lines.append("skipped while fetching:")
            lines.extend(f"  {reason}: {count}" for reason, count in sorted(self.skipped.items()))
        if self.samples is not None:
            lines.append(f"checkpoint samples: {self.samples}")
        if self.build_skipped:
            lines.append("skipped while building:")
            lines.extend(
                f"  {reason}: {count}" for reason, count in sorted(self.build_skipped.items())
            )
        lines.append(f"fetched in {self.seconds:.2f} s ({self.pages} span pages)")
        return "\n".join(lines)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else "-"


def empty_frame(name: FrameName) -> pd.DataFrame:
    """An empty frame with the canonical columns of ``name``."""
    frame = pd.DataFrame({column: pd.Series(dtype=object) for column in _COLUMNS[name]})
    for column in _TIME_COLUMNS[name]:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def conform(
    frame: pd.DataFrame, name: FrameName, *, skipped: Counter[str] | None = None
) -> pd.DataFrame:
    """Return ``frame`` with the canonical columns of ``name`` (missing ones added as None).

    Extra columns are kept after the canonical ones; times become UTC timestamps (a missing
    time becomes ``NaT``).

    Args:
        frame: the rows.
        name: which frame they are.
        skipped: when given, rows whose time is present but not an ISO 8601 time are dropped
            and counted here as ``malformed_<column>``; when None, such rows raise.

    Raises:
        DataError: a time that is not ISO 8601 (and ``skipped`` is None).
    """
    out = frame.copy()
    for column in _COLUMNS[name]:
        if column not in out.columns:
            out[column] = None
    bad = pd.Series(False, index=out.index)
    for column in _TIME_COLUMNS[name]:
        raw = out[column]
        parsed, malformed = _utc_times(raw)
        out[column] = parsed
        if malformed.any():
            if skipped is None:
                positions = [i for i, flag in enumerate(malformed) if flag]
                values = ", ".join(_short(raw.iloc[i]) for i in positions[:3])
                raise DataError(
                    f"{name} rows {positions[:3]}: {column} {values} is not an ISO 8601 time "
                    f"({len(positions)} rows in all); fix or drop those rows."
                )
            skipped[f"malformed_{column}"] += int((malformed & ~bad).sum())
            bad |= malformed
    extras = [c for c in out.columns if c not in _COLUMNS[name]]
    return out.loc[~bad, _COLUMNS[name] + extras].reset_index(drop=True)


def _utc_times(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse a column of times; return the UTC times and which present values did not parse."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return pd.to_datetime(column, utc=True), pd.Series(False, index=column.index)
    texts: list[str | None] = []
    invalid: list[bool] = []
    for value in column:
        missing = value is None or value is pd.NaT or (isinstance(value, float) and value != value)
        if isinstance(value, datetime):
            value = value.isoformat()
        ok = isinstance(value, str) and value.isascii()  # ISO 8601 is ASCII
        texts.append(value if ok else None)
        invalid.append(not ok and not missing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(
            pd.Series(texts, index=column.index, dtype=object),
            utc=True,
            format="ISO8601",
            errors="coerce",
        )
    present = pd.Series([text is not None for text in texts], index=column.index)
    return parsed, (parsed.isna() & present) | pd.Series(invalid, index=column.index)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize(
    frames: TelemetryFrames, skipped: Mapping[str, int] | None = None, **extra: Any
) -> FetchSummary:
    """Compute the summary of ``frames`` (``skipped``: rows the source dropped, by reason)."""
    spans, annotations, evals = frames.spans, frames.annotations, frames.evals
    span_ids = set(spans["span_id"])
    own = annotations[annotations["span_id"].isin(span_ids)] if len(annotations) else annotations
    by_name = Counter(str(n) for n in own["name"]) if len(own) else Counter()
    replayable = sorted(set(evals["name"])) if len(evals) else []
    return FetchSummary(
        project=frames.info.project,
        since=frames.info.since,
        until=frames.info.until,
        spans=len(spans),
        evaluated_spans=int(own["span_id"].nunique()) if len(own) else 0,
        annotations=len(own),
        evals_by_name=dict(sorted(by_name.items())),
        replayable_evals=replayable,
        evals_without_constants=sorted(set(by_name) - set(replayable)),
        skipped=dict(sorted((skipped or {}).items())),
        **extra,
    )


@dataclass
class TelemetryFrames:
    """Spans, annotations and eval constants of one fetch (see the module docstring)."""

    spans: pd.DataFrame
    annotations: pd.DataFrame
    evals: pd.DataFrame
    info: FetchInfo = field(default_factory=FetchInfo)
    summary: FetchSummary = field(default_factory=FetchSummary)

    @classmethod
    def empty(cls, info: FetchInfo | None = None) -> TelemetryFrames:
        """Frames with no rows."""
        return cls(
            empty_frame("spans"),
            empty_frame("annotations"),
            empty_frame("evals"),
            info or FetchInfo(),
        )

    def frame(self, name: FrameName) -> pd.DataFrame:
        """The frame called ``name``."""
        return {"spans": self.spans, "annotations": self.annotations, "evals": self.evals}[name]

    def save(self, path: str | Path) -> Path:
        """Write the frames to ``path`` (``.jsonl`` file, or ``.parquet`` folder).

        Returns:
            The path written.

        Raises:
            DataError: an unsupported suffix.
        """
        target = Path(path)
        header = {
            "kind": "selfimprove-telemetry",
            "schema_version": FRAMES_SCHEMA_VERSION,
            "info": self.info.model_dump(mode="json"),
            "summary": self.summary.model_dump(mode="json"),
        }
        if target.suffix == ".jsonl":
            lines = [json.dumps(header)]
            for name in FRAME_NAMES:
                records = _to_records(self.frame(name))
                lines.extend(json.dumps({"frame": name, **row}, default=str) for row in records)
            return atomic_write_text(target, "\n".join(lines) + "\n")
        if target.suffix == ".parquet":
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in FRAME_NAMES:
                frame = self.frame(name).copy()
                for column in _DICT_COLUMNS[name]:
                    frame[column] = [_dumps_or_none(v) for v in frame[column]]
                for column in frame.columns:
                    if column not in _TIME_COLUMNS[name] and frame[column].dtype == object:
                        frame[column] = [_scalar_text(v) for v in frame[column]]
                frame.to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / "info.json").write_text(json.dumps(header, indent=1), encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            return target
        raise DataError(
            f"Expects a telemetry export path ending in .jsonl or .parquet, got {target}."
        )

    @classmethod
    def load(cls, path: str | Path) -> TelemetryFrames:
        """Read frames written by :meth:`save`.

        Raises:
            DataError: missing, unreadable or not a telemetry export.
        """
        target = Path(path)
        if not target.exists():
            raise DataError(f"No telemetry export at {target}. Write one with frames.save().")
        if target.is_dir():
            return _load_parquet(target)
        return _load_jsonl(target)


def _to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for row in frame.to_dict("records"):
        records.append({str(k): _json_value(v) for k, v in row.items()})
    return records


def _json_value(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT:
        return None
    return value


def _dumps_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return json.dumps(value, default=str)


def _scalar_text(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _check_header(header: Mapping[str, Any], where: Path) -> None:
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise DataError(f"{where} has a header that is not valid text: {exc}") from exc
    if header.get("kind") != "selfimprove-telemetry":
        raise DataError(
            f"{where} is not a selfimprove-rl telemetry export (its header has kind "
            f"{header.get('kind')!r}). Write one with TelemetryFrames.save()."
        )
    if header.get("schema_version") != FRAMES_SCHEMA_VERSION:
        raise DataError(
            f"{where} has schema_version {header.get('schema_version')}; this version reads "
            f"{FRAMES_SCHEMA_VERSION}. Fetch again and re-export."
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); it is not a "
            "telemetry export written by frames.save()."
        ) from exc
    except OSError as exc:
        raise DataError(f"Cannot read telemetry export {path}: {exc}") from exc


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, 4,300-digit ints, nesting
        raise DataError(f"{where} is not valid JSON: {_short(str(exc), 120)}") from exc


def _load_jsonl(path: Path) -> TelemetryFrames:
    lines = _read_text(path).split("\n")
    rows: dict[str, list[dict[str, Any]]] = {"spans": [], "annotations": [], "evals": []}
    header: dict[str, Any] | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _json(line, f"{path}:{number}")
        if not isinstance(record, dict):
            raise DataError(
                f"{path}:{number} is a JSON {type(record).__name__}; expected an object per line."
            )
        if header is None:
            header = record
            _check_header(header, path)
            continue
        frame = record.pop("frame", None)
        if frame not in rows:
            raise DataError(
                f"{path}:{number} names frame {frame!r}; expected spans/annotations/evals"
            )
        rows[frame].append(record)
    if header is None:
        raise DataError(f"{path} is empty; expected a telemetry export.")
    # dtype=object: pandas would store text columns as Arrow strings, which cannot hold a lone
    # surrogate from a "\ud800" escape; the builder counts such rows as invalid_text instead.
    return _assemble(header, {k: pd.DataFrame(v, dtype=object) for k, v in rows.items()}, path)


def _load_parquet(path: Path) -> TelemetryFrames:
    info_path = path / "info.json"
    if not info_path.exists():
        raise DataError(f"{path} has no info.json; expected a folder written by frames.save().")
    header = _json(_read_text(info_path), str(info_path))
    if not isinstance(header, dict):
        raise DataError(
            f"{info_path} is not a JSON object; expected the header frames.save() writes."
        )
    _check_header(header, path)
    loaded: dict[str, pd.DataFrame] = {}
    for name, columns in _DICT_COLUMNS.items():
        try:
            frame = pd.read_parquet(path / f"{name}.parquet")
        except Exception as exc:  # pyarrow raises its own types for a missing or broken file
            raise DataError(f"Cannot read {path / f'{name}.parquet'}: {exc}") from exc
        for column in columns:
            if column not in frame.columns:
                continue
            frame[column] = [
                _json(v, f"{path / f'{name}.parquet'} column {column}")
                if isinstance(v, str)
                else None
                for v in frame[column]
            ]
        loaded[name] = frame
    return _assemble(header, loaded, path)


def _assemble(
    header: Mapping[str, Any], frames: Mapping[str, pd.DataFrame], path: Path
) -> TelemetryFrames:
    try:
        info = FetchInfo.model_validate(header.get("info") or {})
        summary = FetchSummary.model_validate(header.get("summary") or {})
    except ValidationError as exc:
        raise DataError(f"{path} has a malformed header: {_short(str(exc), 200)}") from exc
    skipped: Counter[str] = Counter(summary.skipped)
    conformed = {
        name: conform(frame, name, skipped=skipped) if len(frame.columns) else empty_frame(name)  # type: ignore[arg-type]
        for name, frame in frames.items()
    }
    summary = summary.model_copy(update={"skipped": dict(sorted(skipped.items()))})
    scores = conformed["annotations"]["score"]
    if len(scores) and all(_is_number_or_missing(v) for v in scores):
        # Numbers and nulls become one float column; anything else stays for the builder to
        # count as a malformed eval result.
        conformed["annotations"]["score"] = pd.to_numeric(scores, errors="coerce")
    result = TelemetryFrames(
        conformed["spans"], conformed["annotations"], conformed["evals"], info, summary
    )
    result.info = info.model_copy(update={"data_path": str(path)})
    return result


def _is_number_or_missing(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def filter_window(
    frames: TelemetryFrames, since: datetime | None, until: datetime | None
) -> TelemetryFrames:
    """Keep the spans that started in ``[since, until)`` and their annotations."""
    spans = frames.spans
    mask = pd.Series(True, index=spans.index)
    if since is not None:
        mask &= spans["start_time"] >= pd.Timestamp(since)
    if until is not None:
        mask &= spans["start_time"] < pd.Timestamp(until)
    kept = spans[mask].reset_index(drop=True)
    annotations = frames.annotations
    if len(annotations):
        annotations = annotations[annotations["span_id"].isin(set(kept["span_id"]))]
    return TelemetryFrames(
        kept, annotations.reset_index(drop=True), frames.evals, frames.info, frames.summary
    )


def map_rows(frame: pd.DataFrame, fn: Callable[[dict[str, Any]], Any]) -> Iterable[Any]:
    """Apply ``fn`` to each row as a dict (NaN turned into None)."""
    for row in frame.to_dict("records"):
        yield fn({str(k): _json_value(v) for k, v in row.items()})
