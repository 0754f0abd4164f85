"""Where does the telemetry come from? A Phoenix project, or a file exported from one.

Both sources answer one question, ``fetch(since, until=None) -> TelemetryFrames``, keep the
last frames and summary on the object (``source.frames``, ``source.summary``), and hand the
frames to :func:`selfimprove_rl.telemetry.builder.build_checkpoint` via
``source.checkpoint()``.

Times: ``since`` and ``until`` must be timezone-aware (``datetime(2025, 1, 1,
tzinfo=UTC)``, or any zone); naive datetimes are rejected, because the Phoenix client
would read them as the machine's local time. The window is ``since <= start_time < until``.

Paging: the Phoenix client returns the newest spans first and silently drops the oldest past
its ``limit``. :class:`PhoenixSource` asks for ``page_size`` spans at a time and walks back
from the oldest start time it has seen, de-duplicating by span id, until a page comes back
short; when a whole page shares one timestamp it doubles the page size instead of looping.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pandas as pd

from selfimprove_rl.errors import ConfigError, NoUsableSamplesError, TelemetryError
from selfimprove_rl.telemetry.frames import (
    FetchInfo,
    FetchSummary,
    TelemetryFrames,
    conform,
    empty_frame,
    filter_window,
    summarize,
)
from selfimprove_rl.telemetry.instrument import ATTR, META_CONSTANTS_ID
from selfimprove_rl.telemetry.tracing import split_endpoint

if TYPE_CHECKING:
    from selfimprove_rl.checkpoint import Checkpoint

_ANNOTATION_BATCH = 100
_ONE_TICK = timedelta(microseconds=1)


def require_aware(value: datetime | None, name: str) -> datetime | None:
    """Return ``value`` in UTC; reject naive datetimes.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> require_aware(datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), "since")
        datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)

    Raises:
        ConfigError: ``value`` is naive.
    """
    if value is None:
        return None
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigError(
            f"Expects a timezone-aware `{name}`, got the naive datetime {value.isoformat()}. "
            f"Add a zone, e.g. {value.replace(tzinfo=UTC).isoformat()} for UTC."
        )
    return value.astimezone(UTC)


@runtime_checkable
class TelemetrySource(Protocol):
    """Anything that turns a time window into telemetry frames."""

    def fetch(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> TelemetryFrames:
        """Return the LLM spans that started in ``[since, until)``, their evals and constants."""
        ...


class _SourceBase:
    """Keeps the last frames and summary; builds checkpoints from them."""

    _frames: TelemetryFrames | None = None

    @property
    def frames(self) -> TelemetryFrames:
        """The frames of the last :meth:`fetch`.

        Raises:
            TelemetryError: nothing was fetched yet.
        """
        if self._frames is None:
            raise TelemetryError("Nothing fetched yet; call fetch(since=...) first.")
        return self._frames

    @property
    def summary(self) -> FetchSummary:
        """The summary of the last :meth:`fetch`."""
        return self.frames.summary

    def checkpoint(self, **options: Any) -> Checkpoint:
        """Build a checkpoint from the last fetch (options go to ``build_checkpoint``).

        The summary then also holds the sample count and the rows skipped while building.
        """
        from selfimprove_rl.telemetry.builder import build_checkpoint

        frames = self.frames
        try:
            checkpoint = build_checkpoint(frames, **options)
        except NoUsableSamplesError:
            frames.summary = frames.summary.model_copy(update={"samples": 0})
            raise
        frames.summary = frames.summary.model_copy(
            update={
                "samples": len(checkpoint.samples),
                "build_skipped": dict(checkpoint.provenance.skipped),
            }
        )
        return checkpoint


class FileSource(_SourceBase):
    """Telemetry frames read from an export written by ``TelemetryFrames.save``.

    Args:
        path: a ``.jsonl`` file or ``.parquet`` folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def fetch(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> TelemetryFrames:
        """Load the export and keep the spans that started in ``[since, until)``."""
        started = time.perf_counter()
        since_utc = require_aware(since, "since")
        until_utc = require_aware(until, "until")
        loaded = TelemetryFrames.load(self.path)
        frames = filter_window(loaded, since_utc, until_utc)
        frames.info = loaded.info.model_copy(
            update={
                "source": "file",
                "data_path": str(self.path),
                "since": since_utc or loaded.info.since,
                "until": until_utc or loaded.info.until,
            }
        )
        frames.summary = summarize(
            frames, loaded.summary.skipped, seconds=time.perf_counter() - started
        )
        self._frames = frames
        return frames


class PhoenixSource(_SourceBase):
    """LLM spans, their eval annotations and the recorded eval constants of a Phoenix project.

    Args:
        endpoint: the Phoenix base URL, e.g. ``http://127.0.0.1:6006``.
        project: the project the traced calls go to.
        eval_project: the project the eval instrumentor's evaluator spans go to (default:
            ``project``).
        page_size: spans per request while paging.
        progress: show tqdm progress bars.
        timeout: seconds per HTTP request.
        api_key: for a Phoenix with authentication.
        roots: also fetch the root span of every trace (any kind), where a multi-call
            application's end-to-end evals sit (see
            :mod:`selfimprove_rl.telemetry.program_builder`).

    Example:
        >>> source = PhoenixSource("http://127.0.0.1:6006", "support-bot")  # doctest: +SKIP
        >>> frames = source.fetch(since=datetime(2025, 1, 1, tzinfo=UTC))  # doctest: +SKIP
        >>> print(source.summary)  # doctest: +SKIP
        >>> checkpoint = source.checkpoint()  # doctest: +SKIP
    """

    def __init__(
        self,
        endpoint: str,
        project: str,
        *,
        eval_project: str | None = None,
        page_size: int = 2000,
        progress: bool = True,
        timeout: int = 60,
        api_key: str | None = None,
        roots: bool = False,
    ) -> None:
        if page_size < 1:
            raise ConfigError(f"Expects page_size >= 1, got {page_size}.")
        if not project:
            raise ConfigError("Expects a Phoenix project name, got ''.")
        self.endpoint = split_endpoint(endpoint)[0]
        self.project = project
        self.eval_project = eval_project or project
        self.page_size = page_size
        self.progress = progress
        self.timeout = timeout
        self._api_key = api_key
        self.roots = roots
        self._client: Any = None
        self.pages = 0

    @property
    def client(self) -> Any:
        """The ``phoenix.client.Client`` used (created on first use)."""
        if self._client is None:
            from phoenix.client import Client

            self._client = Client(base_url=self.endpoint, api_key=self._api_key)
        return self._client

    def fetch(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> TelemetryFrames:
        """Download the LLM spans that started in ``[since, until)``, annotations, constants.

        Every LLM span in the window (paged past the client's limit), the annotations on
        them, and the eval constants those annotations refer to.

        Args:
            since: timezone-aware start (inclusive); required.
            until: timezone-aware end (exclusive); default: now.

        Returns:
            The frames (also kept as ``self.frames``; counts in ``self.summary``).

        Raises:
            ConfigError: naive or inverted times.
            TelemetryError: Phoenix cannot be reached or answers with an error.
        """
        import httpx

        started = time.perf_counter()
        since_utc = require_aware(since, "since")
        until_utc = require_aware(until, "until")
        if since_utc is None:
            raise ConfigError("Expects `since` (the start of the window), got None.")
        if until_utc is not None and until_utc <= since_utc:
            raise ConfigError(
                f"Expects since < until, got since={since_utc.isoformat()} "
                f"until={until_utc.isoformat()}."
            )
        info = FetchInfo(
            source="phoenix",
            endpoint=self.endpoint,
            project=self.project,
            eval_project=self.eval_project,
            since=since_utc,
            until=until_utc,
            fetched_at=datetime.now(UTC),
        )
        skipped: Counter[str] = Counter()
        steps: dict[str, float] = {}
        try:
            spans = self._fetch_spans(since_utc, until_utc)
            steps["spans"] = time.perf_counter() - started
            annotations = self._fetch_annotations(list(spans["span_id"]))
            steps["annotations"] = time.perf_counter() - started - steps["spans"]
            evals = self._fetch_constants(annotations, skipped)
            steps["constants"] = time.perf_counter() - started - sum(steps.values())
        except httpx.HTTPError as exc:
            raise TelemetryError(
                f"Could not read project {self.project!r} from Phoenix at {self.endpoint}: "
                f"{exc}. Check the URL and that the server is running (GET /healthz)."
            ) from exc
        frames = TelemetryFrames(spans, annotations, evals, info)
        frames.summary = summarize(
            frames,
            skipped,
            pages=self.pages,
            seconds=time.perf_counter() - started,
            step_seconds={k: round(v, 3) for k, v in steps.items()},
        )
        self._frames = frames
        return frames

    # -- spans ---------------------------------------------------------------------------

    def _pages(self, since: datetime, until: datetime | None) -> Iterator[pd.DataFrame]:
        from phoenix.client.types.spans import SpanQuery

        wanted = "span_kind == 'LLM' or parent_id is None" if self.roots else "span_kind == 'LLM'"
        query = SpanQuery().where(wanted)
        end = until
        size = self.page_size
        seen: set[str] = set()
        self.pages = 0
        while True:
            page = self.client.spans.get_spans_dataframe(
                query=query,
                project_identifier=self.project,
                start_time=since,
                end_time=end,
                limit=size,
                timeout=self.timeout,
            )
            self.pages += 1
            if page.empty:
                return
            page = _span_rows(page)
            fresh = page[~page["span_id"].isin(seen)]
            seen.update(fresh["span_id"])
            if len(fresh):
                yield fresh
            if len(page) < size:
                return
            if fresh.empty:
                size *= 2  # a whole page shares one timestamp: widen instead of looping
                continue
            end = page["start_time"].min().to_pydatetime() + _ONE_TICK

    def _fetch_spans(self, since: datetime, until: datetime | None) -> pd.DataFrame:
        from tqdm.auto import tqdm

        parts: list[pd.DataFrame] = []
        with tqdm(desc="LLM spans", unit="span", disable=not self.progress) as bar:
            for page in self._pages(since, until):
                parts.append(page)
                bar.update(len(page))
        if not parts:
            return empty_frame("spans")
        spans = pd.concat(parts, ignore_index=True)
        return conform(spans.sort_values("start_time", kind="stable"), "spans")

    # -- annotations ---------------------------------------------------------------------

    def _fetch_annotations(self, span_ids: Sequence[str]) -> pd.DataFrame:
        from tqdm.auto import tqdm

        if not span_ids:
            return empty_frame("annotations")
        batches = [
            list(span_ids[i : i + _ANNOTATION_BATCH])
            for i in range(0, len(span_ids), _ANNOTATION_BATCH)
        ]
        rows: list[dict[str, Any]] = []
        with (
            tqdm(
                total=len(span_ids), desc="annotations", unit="span", disable=not self.progress
            ) as bar,
            ThreadPoolExecutor(max_workers=4) as pool,
        ):
            for batch, found in zip(batches, pool.map(self._annotations_of, batches), strict=True):
                rows.extend(found)
                bar.update(len(batch))
        if not rows:
            return empty_frame("annotations")
        frame = pd.DataFrame(rows)
        frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
        return conform(frame, "annotations")

    def _annotations_of(self, span_ids: list[str]) -> list[dict[str, Any]]:
        found = self.client.spans.get_span_annotations(
            span_ids=span_ids,
            project_identifier=self.project,
            exclude_annotation_names=["note"],
            timeout=self.timeout,
        )
        rows = []
        for annotation in found:
            result = annotation.get("result") or {}
            rows.append(
                {
                    "span_id": annotation.get("span_id"),
                    "name": annotation.get("name"),
                    "label": result.get("label"),
                    "score": result.get("score"),
                    "explanation": result.get("explanation"),
                    "annotator_kind": annotation.get("annotator_kind"),
                    "identifier": annotation.get("identifier") or "",
                    "metadata": annotation.get("metadata") or {},
                    "source": annotation.get("source"),
                    "created_at": annotation.get("created_at"),
                    "updated_at": annotation.get("updated_at"),
                }
            )
        return rows

    # -- eval constants ------------------------------------------------------------------

    def _fetch_constants(self, annotations: pd.DataFrame, skipped: Counter[str]) -> pd.DataFrame:
        wanted: list[str] = []
        for metadata in annotations["metadata"]:
            cid = metadata.get(META_CONSTANTS_ID) if isinstance(metadata, dict) else None
            if isinstance(cid, str) and cid not in wanted:
                wanted.append(cid)
        import httpx

        rows = []
        for cid in wanted:
            try:
                spans = self.client.spans.get_spans(
                    project_identifier=self.eval_project,
                    span_kind="EVALUATOR",
                    attributes={ATTR + "constants_id": cid},
                    limit=1,
                    timeout=self.timeout,
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404:  # 404: no such eval project
                    raise
                spans = []
            if not spans:
                skipped["eval_constants_not_found"] += 1
                continue
            raw = (spans[0].get("attributes") or {}).get(ATTR + "constants")
            try:
                constants = json.loads(raw) if isinstance(raw, str) else None
            except json.JSONDecodeError:
                constants = None
            if not isinstance(constants, dict) or "name" not in constants:
                skipped["malformed_eval_constants"] += 1
                continue
            rows.append({"constants_id": cid, "name": constants["name"], "constants": constants})
        return conform(pd.DataFrame(rows), "evals") if rows else empty_frame("evals")


def _span_rows(page: pd.DataFrame) -> pd.DataFrame:
    """Turn a ``get_spans_dataframe`` page into canonical span rows."""
    if "context.span_id" not in page.columns:
        page = page.reset_index()
    attribute_columns = [c for c in page.columns if c.startswith("attributes.")]
    names = [c[len("attributes.") :] for c in attribute_columns]
    attributes = [
        {name: value for name, value in zip(names, values, strict=True) if _has_value(value)}
        for values in page[attribute_columns].itertuples(index=False, name=None)
    ]
    rows = pd.DataFrame(
        {
            "span_id": page["context.span_id"].astype(str).to_numpy(),
            "trace_id": page["context.trace_id"].astype(str).to_numpy(),
            "parent_id": _column(page, "parent_id"),
            "name": _column(page, "name"),
            "span_kind": _column(page, "span_kind"),
            "start_time": pd.to_datetime(page["start_time"], utc=True).to_numpy(),
            "end_time": pd.to_datetime(page["end_time"], utc=True).to_numpy(),
            "status_code": _column(page, "status_code"),
            "status_message": _column(page, "status_message"),
            "attributes": attributes,
        }
    )
    rows["start_time"] = pd.to_datetime(rows["start_time"], utc=True)
    rows["end_time"] = pd.to_datetime(rows["end_time"], utc=True)
    return rows


def _column(page: pd.DataFrame, name: str) -> list[Any]:
    if name not in page.columns:
        return [None] * len(page)
    return [value if _has_value(value) else None for value in page[name]]


def _has_value(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return value == value
    return True
