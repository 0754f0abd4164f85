"""How is a file written so that a crash never leaves it half-written? Atomically.

Every persisted artefact (checkpoints, registries, run directories, caches) goes through these
helpers: whole files are written to a temporary sibling and renamed into place; JSONL logs
are appended one complete line at a time and flushed to disk. A crash mid-append can leave a
torn last line (no trailing newline): readers skip it and the next append cuts it off first.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from selfimprove_rl.errors import DataError


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: destination file; its folder is created when missing.
        text: the whole new content.

    Returns:
        The destination as a ``Path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON object as one line, flushed and fsynced before returning.

    A reader never sees a partial record except a torn last line after a crash, which
    :func:`read_jsonl` skips and this function removes before appending (otherwise the new
    record would be glued to the fragment and lost).

    Args:
        path: the JSONL file; created with its folder when missing.
        record: a JSON-serialisable mapping.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
    with open(target, "ab") as handle:
        _cut_torn_tail(handle)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _cut_torn_tail(handle: BinaryIO) -> None:
    """Truncate an append-mode file after its last newline when it does not end with one."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    with open(handle.name, "rb") as reader:
        reader.seek(size - 1)
        if reader.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            reader.seek(start)
            chunk = reader.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                return
            end = start
    handle.truncate(0)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file, skipping a torn final line left by a crash.

    Only a final line without a trailing newline counts as torn; a complete line that does
    not parse is corruption and raises.

    Args:
        path: the JSONL file; a missing file yields nothing.

    Yields:
        One dict per complete line.

    Raises:
        DataError: a complete line is not valid JSON or not an object (real corruption).
    """
    target = Path(path)
    if not target.exists():
        return
    text = target.read_text(encoding="utf-8")
    # Split on "\n" only: str.splitlines would also split inside strings holding U+2028.
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and number == len(lines):
                return
            raise DataError(
                f"{target}:{number} is not valid JSON ({exc}); the file is corrupt. Expected "
                "one JSON object per line; restore it from a backup or remove the line."
            ) from exc
        if not isinstance(value, dict):
            raise DataError(
                f"{target}:{number} holds a JSON {type(value).__name__}, expected an object; "
                "the file is corrupt."
            )
        yield value
