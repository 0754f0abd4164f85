"""Has this exact request been answered before? A content-addressed store of model responses.

Keys are content addresses (``replay.request_key``: a sha256 of the canonical request), values
are the response bodies as JSON-compatible dicts. Every entry lives in memory; with a
``path`` it is also written to an SQLite file, so a new process (or a new instance) finds what
an earlier one paid for.

On disk the store is safe for concurrent use and survives a crash: SQLite in WAL mode with
autocommit (one transaction per write, so a committed entry outlives the process that wrote
it), a busy timeout so several processes can share one file, and a lock so several threads
can share one instance. Writes are ``INSERT OR IGNORE``: the first answer stored for a key
is the answer.

Returned dicts are the stored objects themselves: treat them as read-only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from selfimprove_rl.errors import ReplayError

CACHE_FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID
"""


class ResponseCache:
    """Model responses by content address, in memory and optionally in an SQLite file.

    Args:
        path: the SQLite file (created with its folder when missing); ``None`` keeps the cache
            in memory only.

    Raises:
        ReplayError: ``path`` exists but is not a cache file of this format.

    Example:
        >>> cache = ResponseCache()
        >>> cache.put("k", {"choices": []})
        >>> cache.get("k"), cache.get("other"), len(cache), cache.hits, cache.misses
        ({'choices': []}, None, 1, 1, 1)
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._db = _open(self.path)

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the response stored under ``key``, or ``None``; counts a hit or a miss."""
        found = self._memory.get(key)
        if found is None and self._db is not None:
            found = self._read(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, response: dict[str, Any]) -> None:
        """Store ``response`` under ``key`` (memory, then disk when the cache has a path).

        Args:
            key: the content address of the request.
            response: a JSON-serialisable response body.

        Raises:
            TypeError: ``response`` is not JSON-serialisable.
        """
        text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        self._memory[key] = response
        if self._db is not None:
            with self._lock:
                self._db.execute(
                    "INSERT OR IGNORE INTO responses (key, response, created_at) VALUES (?, ?, ?)",
                    (key, text, time.time()),
                )

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored (in memory or on disk); does not count a hit or miss."""
        if not isinstance(key, str):
            return False
        if key in self._memory:
            return True
        return self._db is not None and self._read(key) is not None

    def __len__(self) -> int:
        """How many distinct keys are stored (on disk, every process's entries count)."""
        if self._db is None:
            return len(self._memory)
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return max(int(count), len(self._memory))

    @property
    def hit_rate(self) -> float:
        """Share of lookups that found a response (0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def close(self) -> None:
        """Close the SQLite file; the in-memory entries stay readable."""
        if self._db is not None:
            with self._lock:
                self._db.close()
            self._db = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return (
            f"ResponseCache({where}, entries={len(self._memory)}, "
            f"hits={self.hits}, misses={self.misses})"
        )

    def _read(self, key: str) -> dict[str, Any] | None:
        assert self._db is not None
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        response: dict[str, Any] = json.loads(row[0])
        self._memory[key] = response
        return response


def _open(path: Path) -> sqlite3.Connection:
    """Open (creating when missing) the cache file and check its format version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version not in (0, CACHE_FORMAT_VERSION):
            db.close()
            raise ReplayError(
                f"Expects a response cache of format {CACHE_FORMAT_VERSION} at {path}, got "
                f"format {version}. Delete the file or point the cache at a new path."
            )
        db.execute("BEGIN IMMEDIATE")
        db.execute(_SCHEMA)
        db.execute(f"PRAGMA user_version = {CACHE_FORMAT_VERSION}")
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise ReplayError(
            f"Expects {path} to be a response cache (an SQLite file), but it cannot be read as "
            f"one: {exc}. Delete the file or point the cache at a new path."
        ) from exc
    return db
