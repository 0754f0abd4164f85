"""How is a file written so that a crash never leaves it half-written?

Every persisted artefact (checkpoints, registries, run directories, caches) goes through these
helpers: whole files are written to a temporary sibling and renamed into place; JSONL logs
are appended one complete line at a time and flushed to disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
    :func:`read_jsonl` skips.

    Args:
        path: the JSONL file; created with its folder when missing.
        record: a JSON-serialisable mapping.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file, skipping a torn final line left by a crash.

    Args:
        path: the JSONL file; a missing file yields nothing.

    Yields:
        One dict per complete line.

    Raises:
        ValueError: a line other than the last is not valid JSON (real corruption).
    """
    target = Path(path)
    if not target.exists():
        return
    lines = target.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                return
            raise ValueError(f"{target}:{number} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"{target}:{number} holds a {type(value).__name__}, expected an object")
        yield value
