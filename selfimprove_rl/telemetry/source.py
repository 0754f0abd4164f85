"""Where does the telemetry come from? A Phoenix project, or a file exported from one.

Both sources answer one question, ``fetch(since, until=None) -> TelemetryFrames``, keep the
last frames and summary on the object (``source.frames``, ``source.summary``), and hand the
frames to :func:`selfimprove_rl.telemetry.builder.build_checkpoint` via
``source.checkpoint()``.

Times: ``since`` and ``until`` must be timezone-aware (``datetime(2025, 1, 1,
tzinfo=UTC)``, or any zone); naive datetimes are rejected, because the Phoenix client
would read them as the machine's local time. The window is ``since <= start_time < until``.

Paging: :class:`PhoenixSource` reads Phoenix's REST span listing (``GET
/v1/projects/{project}/spans``, LLM spans in start-time order, up to 1,000 a page, with a
cursor) and its span-annotation listing. One cursor walk is sequential, and each of its pages
costs the server a sort of the whole remaining window, so the window is cut while it is read:
after a full page, the next stretch of time is split into windows as wide as that page's, the
first continuing the cursor, and the rest beyond them is one more window. Windows never
overlap, spans are de-duplicated by id anyway, and the annotations of each page are requested
while further span pages are still coming, ``workers`` requests in flight at once. (The
query-DSL dataframe the Phoenix client's ``get_spans_dataframe`` returns cost the server
about twice the CPU per span, measured on Phoenix 20.26, and pages only by walking back from
the newest span.)
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

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

# Span ids per annotation request. Phoenix 20.26 on SQLite looks up to 35 ids by index
# (~10 ms a request, measured); from about 40 ids on, its query plan scans every annotation
# in the database instead (~125 ms a request with 110,000 annotations, growing with the
# database). The Phoenix client's own batch is 100.
_ANNOTATION_BATCH = 32
_MAX_SPLIT = 8  # one-page windows cut ahead of the cursor at a time
MAX_PAGE_SIZE = 1000  # the most spans Phoenix's REST listing returns per request
JSON_STRING_ATTRIBUTES = (
    "metadata",
    "llm.prompt_template.variables",
    "tool.parameters",
    "document.metadata",
)
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
        page_size: spans per request while paging (at most :data:`MAX_PAGE_SIZE`).
        workers: requests in flight at once (span pages of different time windows, and
            annotations of pages already read).
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
        page_size: int = MAX_PAGE_SIZE,
        workers: int = 4,
        progress: bool = True,
        timeout: int = 60,
        api_key: str | None = None,
        roots: bool = False,
    ) -> None:
        if page_size < 1:
            raise ConfigError(f"Expects page_size >= 1, got {page_size}.")
        if workers < 1:
            raise ConfigError(f"Expects workers >= 1, got {workers}.")
        if not project:
            raise ConfigError("Expects a Phoenix project name, got ''.")
        self.endpoint = split_endpoint(endpoint)[0]
        self.project = project
        self.eval_project = eval_project or project
        self.page_size = min(page_size, MAX_PAGE_SIZE)
        self.workers = workers
        self.progress = progress
        self.timeout = timeout
        self._api_key = api_key
        self.roots = roots
        self._client: Any = None
        self._http: Any = None
        self.pages = 0

    @property
    def client(self) -> Any:
        """The ``phoenix.client.Client`` used (created on first use).

        Its ``httpx.Client`` (headers from ``api_key`` or the ``PHOENIX_*`` environment, and
        one connection pool sized for ``workers``) also serves the REST pages read here.
        """
        if self._client is None:
            import httpx
            from phoenix.client import Client
            from phoenix.client.utils.config import get_env_client_headers

            headers = get_env_client_headers()
            if self._api_key:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                headers["Authorization"] = f"Bearer {self._api_key}"
            http = httpx.Client(
                base_url=self.endpoint,
                headers=headers,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.workers + 2),
            )
            self._http = http
            self._client = Client(http_client=http)
        return self._client

    def fetch(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> TelemetryFrames:
        """Download the LLM spans that started in ``[since, until)``, annotations, constants.

        Every LLM span in the window (paged, several windows at once), the annotations on
        them, and the eval constants those annotations refer to.

        Args:
            since: timezone-aware start (inclusive); required.
            until: timezone-aware end (exclusive); default: no end.

        Returns:
            The frames (also kept as ``self.frames``; counts in ``self.summary``;
            ``summary.step_seconds`` splits the time into reading pages, building the
            frames, and reading eval constants).

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
            span_rows, annotation_rows = self._crawl(since_utc, until_utc)
            steps["pages"] = time.perf_counter() - started
            spans = _spans_frame(span_rows)
            annotations = _annotations_frame(annotation_rows)
            steps["frames"] = time.perf_counter() - started - steps["pages"]
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

    # -- spans and annotations -----------------------------------------------------------

    def _crawl(
        self, since: datetime, until: datetime | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Read every span page and the annotations of every span, ``workers`` at a time."""
        from tqdm.auto import tqdm

        spans: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        seen: set[str] = set()
        unannotated: list[str] = []
        now = datetime.now(UTC)
        self.pages = 0
        _ = self.client  # the shared HTTP client exists before the threads start
        with (
            tqdm(desc="spans", unit="span", disable=not self.progress) as bar,
            ThreadPoolExecutor(max_workers=self.workers) as pool,
        ):
            windows: dict[Future[Any], _Window] = {}
            batches: set[Future[Any]] = set()
            for first in [
                _Window(since, until),
                *([_Window(since, until, roots=True)] * self.roots),
            ]:
                windows[pool.submit(self._span_page, first)] = first
            try:
                while windows or batches:
                    done, _ = wait([*windows, *batches], return_when=FIRST_COMPLETED)
                    for future in done:
                        if future in batches:
                            batches.discard(future)
                            annotations.extend(future.result())
                            continue
                        window = windows.pop(future)
                        page, cursor = future.result()
                        self.pages += 1
                        fresh = [row for row in page if row["span_id"] not in seen]
                        seen.update(row["span_id"] for row in fresh)
                        spans.extend(fresh)
                        unannotated.extend(row["span_id"] for row in fresh)
                        bar.update(len(fresh))
                        if cursor:
                            idle = len(windows) + 1 < self.workers
                            for part in window.rest(page, cursor, now, idle=idle):
                                windows[pool.submit(self._span_page, part)] = part
                    while len(unannotated) >= _ANNOTATION_BATCH or (unannotated and not windows):
                        batch = unannotated[:_ANNOTATION_BATCH]
                        del unannotated[:_ANNOTATION_BATCH]
                        batches.add(pool.submit(self._annotations_of, batch))
            except BaseException:
                for future in [*windows, *batches]:
                    future.cancel()
                raise
        return spans, annotations

    def _span_page(self, window: _Window) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``window``'s LLM (or root) spans, as canonical rows, and the next cursor."""
        params: dict[str, Any] = {
            "limit": self.page_size,
            "sort": "start_time",
            "order": "asc",
            "start_time": window.start.isoformat(),
        }
        if window.roots:
            params["parent_id"] = "null"
        else:
            params["span_kind"] = "LLM"
        if window.end is not None:
            params["end_time"] = window.end.isoformat()
        if window.cursor:
            params["cursor"] = window.cursor
        _ = self.client
        response = self._http.get(
            f"v1/projects/{quote(self.project, safe='')}/spans",
            params=params,
            headers={"accept": "application/json"},
            timeout=self.timeout,
        )
        if response.status_code == 404:
            return [], None  # no such project: nothing was logged to it
        response.raise_for_status()
        body = response.json()
        rows = [_span_row(span) for span in body.get("data") or []]
        if window.roots:
            return [row for row in rows if row["parent_id"] is None], body.get("next_cursor")
        return [row for row in rows if row["span_kind"] == "LLM"], body.get("next_cursor")

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


@dataclass(frozen=True)
class _Window:
    """Spans that started in ``[start, end)`` (``end`` None: no end), after ``cursor``.

    ``roots``: the traces' root spans (any kind) instead of the LLM spans.
    """

    start: datetime
    end: datetime | None
    cursor: str | None = None
    roots: bool = False

    def rest(
        self, page: Sequence[Mapping[str, Any]], cursor: str, now: datetime, *, idle: bool
    ) -> list[_Window]:
        """What remains after a full ``page``: windows of about one page each, then the rest.

        The page's duration (its first to last start time) is the width of the next few
        windows, up to :data:`_MAX_SPLIT` of them, the first continuing the cursor; whatever
        lies beyond is one more window, cut the same way once its first page is read. Narrow
        windows keep every request cheap: Phoenix sorts the whole window for each page (a page
        of a 100,000-span window cost the server 0.8 s, of a narrow one 0.3 s). A page whose
        spans share one start time says nothing about width; the rest is then halved if a
        worker is idle.
        """
        whole = [replace(self, cursor=cursor)]
        if not page:
            return whole
        first, last = page[0]["start_time"], page[-1]["start_time"]
        upper = self.end or max(now, last)
        if upper - last <= len(page) * _ONE_TICK:
            return whole
        width = last - first
        if width <= timedelta(0):
            if not idle:
                return whole
            width = (upper - last) / 2
        cuts = [last + width * i for i in range(1, _MAX_SPLIT + 1)]
        cuts = [cut for cut in cuts if cut < upper]
        if not cuts:
            return whole
        windows = [replace(self, end=cuts[0], cursor=cursor)]
        windows += [_Window(low, high, roots=self.roots) for low, high in itertools.pairwise(cuts)]
        windows.append(_Window(cuts[-1], self.end, roots=self.roots))
        return windows


def _span_row(span: Mapping[str, Any]) -> dict[str, Any]:
    """A span of Phoenix's REST listing as a canonical spans row."""
    context = span.get("context") or {}
    attributes = unflatten_attributes(span.get("attributes") or {})
    if span.get("span_kind"):
        attributes.setdefault("openinference.span.kind", span["span_kind"])
    return {
        "span_id": str(context.get("span_id")),
        "trace_id": str(context.get("trace_id")),
        "parent_id": span.get("parent_id") or None,
        "name": span.get("name"),
        "span_kind": span.get("span_kind"),
        "start_time": datetime.fromisoformat(span["start_time"]).astimezone(UTC),
        "end_time": span.get("end_time"),
        "status_code": span.get("status_code"),
        "status_message": span.get("status_message"),
        "attributes": attributes,
        "_row": _rowid(span.get("id")),
    }


def _rowid(global_id: Any) -> int:
    """Phoenix's row id (insertion order) from a span's global id (``base64("Span:<id>")``)."""
    try:
        return int(base64.b64decode(str(global_id)).decode().rsplit(":", 1)[1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return 0


def unflatten_attributes(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Undo the flattening of span attributes in Phoenix's REST span listing.

    The listing flattens nested attributes into dotted keys with list positions as numeric
    segments (``llm.input_messages.0.message.role``); the query-DSL dataframe keeps lists
    and flattens only the dicts inside them (``llm.input_messages`` → ``[{"message.role":
    ...}]``), which is the form the checkpoint builder reads. Numeric segments become lists
    again, dotted names between them stay keys, and the attributes OpenInference stores as
    JSON text (``metadata``, ``llm.prompt_template.variables``, ``tool.parameters``,
    ``document.metadata``) are decoded, as the DSL does. One difference remains: the DSL
    nests custom (non-OpenInference) attributes by their dots (``{"custom": {"flag": 1}}``),
    here they keep their dotted names (``{"custom.flag": 1}``); the builder reads only
    OpenInference attributes, so checkpoints are the same.

    Example:
        >>> unflatten_attributes({"llm.input_messages.0.message.role": "user",
        ...                       "llm.input_messages.0.message.content": "hi",
        ...                       "tag.tags.1": "b", "tag.tags.0": "a", "llm.model_name": "m"})
        {'llm.input_messages': [{'message.role': 'user', 'message.content': 'hi'}],
         'tag.tags': ['a', 'b'], 'llm.model_name': 'm'}
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        _put(out, key.split("."), value)
    return out


def _put(container: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``value`` at a flattened key inside ``container`` (see unflatten_attributes)."""
    for i, part in enumerate(parts):
        name = ".".join(parts[:i])
        if i and part.isdigit():
            index, rest = int(part), parts[i + 1 :]
            items = container.setdefault(name, [])
            if not isinstance(items, list):
                break  # a scalar already holds this name: keep the flat key
            items.extend([None] * (index + 1 - len(items)))
            if not rest:
                items[index] = value
                return
            if not isinstance(items[index], dict):
                items[index] = {}
            _put(items[index], rest, value)
            return
        if i and name in JSON_STRING_ATTRIBUTES:
            # stored decoded (e.g. metadata sent over OTLP): its keys are the stored keys
            inner = container.setdefault(name, {})
            if not isinstance(inner, dict):
                break
            _put(inner, parts[i:], value)
            return
    name = ".".join(parts)
    if isinstance(value, str) and name in JSON_STRING_ATTRIBUTES:
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = None
        value = value if decoded is None else decoded
    container[name] = value


def _spans_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The spans frame: rows in start-time order, ties in the order Phoenix recorded them."""
    if not rows:
        return empty_frame("spans")
    rows.sort(key=lambda row: (row["start_time"], row["_row"]))
    frame = pd.DataFrame(rows).drop(columns="_row")
    frame["start_time"] = pd.to_datetime(frame["start_time"], utc=True)
    return conform(frame, "spans")


def _annotations_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return empty_frame("annotations")
    frame = pd.DataFrame(rows)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    return conform(frame, "annotations")
