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

It is also the **spend ledger** of whoever pays through it: :meth:`ResponseCache.pay` stores a
response together with what getting it cost (requests sent, tokens) in one transaction,
:meth:`record_failure` what a request that never got an answer cost; entries are numbered in
order. A run that is killed keeps its ledger, so a resumed run can account for what the
killed process paid after its last saved state (:meth:`payments_since`). With several
processes on one file the ledger counts them all.

Returned dicts are the stored objects themselves: treat them as read-only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from selfimprove_rl.errors import ReplayError

CACHE_FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID
"""
_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT,
    calls INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
)
"""


class Payment(NamedTuple):
    """One ledger entry: what one request cost, and the key of its answer (``None``: failed).

    Example:
        >>> Payment(None, calls=5).ok, Payment("k", calls=1, prompt_tokens=7).ok
        (False, True)
    """

    key: str | None
    calls: int
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        """Whether the request got an answer (stored under ``key``)."""
        return self.key is not None


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
        self._ledger: list[Payment] = []
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

    def peek(self, key: str) -> dict[str, Any] | None:
        """Return the response stored under ``key``, or ``None``, without counting a lookup."""
        found = self._memory.get(key)
        if found is None and self._db is not None:
            found = self._read(key)
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

    def pay(self, key: str, response: dict[str, Any], *, calls: int) -> None:
        """Store a response that was paid for, and what it cost, in one transaction.

        Args:
            key: the content address of the request.
            response: the response body (its ``usage`` gives the tokens paid).
            calls: requests sent to get it (retries included).
        """
        usage = response.get("usage") or {}
        payment = Payment(
            key,
            int(calls),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
        text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        self._memory[key] = response
        with self._lock:
            if self._db is None:
                self._ledger.append(payment)
                return
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO responses (key, response, created_at) VALUES (?, ?, ?)",
                    (key, text, time.time()),
                )
                self._insert_ledger(payment)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record_failure(self, *, calls: int) -> None:
        """Record the calls a request sent without getting a usable answer."""
        payment = Payment(None, int(calls))
        with self._lock:
            if self._db is None:
                self._ledger.append(payment)
            else:
                self._insert_ledger(payment)

    def _insert_ledger(self, payment: Payment) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO ledger (key, calls, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?)",
            tuple(payment),
        )

    @property
    def ledger_seq(self) -> int:
        """The number of the last ledger entry (0 when nothing was paid through this cache)."""
        if self._db is None:
            return len(self._ledger)
        with self._lock:
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()
        return int(seq)

    def payments_since(self, seq: int) -> list[Payment]:
        """Return the ledger entries after number ``seq``, in order.

        Example:
            >>> cache = ResponseCache()
            >>> cache.pay("k", {"usage": {"prompt_tokens": 7}}, calls=2)
            >>> mark = cache.ledger_seq
            >>> cache.record_failure(calls=5)
            >>> cache.payments_since(0)[0].calls, cache.payments_since(mark)
            (2, [Payment(key=None, calls=5, prompt_tokens=0, completion_tokens=0)])
        """
        if self._db is None:
            return list(self._ledger[seq:])
        with self._lock:
            rows = self._db.execute(
                "SELECT key, calls, prompt_tokens, completion_tokens FROM ledger WHERE seq > ? "
                "ORDER BY seq",
                (seq,),
            ).fetchall()
        return [Payment(*row) for row in rows]

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
        db.execute(_LEDGER_SCHEMA)
        db.execute(f"PRAGMA user_version = {CACHE_FORMAT_VERSION}")
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise ReplayError(
            f"Expects {path} to be a response cache (an SQLite file), but it cannot be read as "
            f"one: {exc}. Delete the file or point the cache at a new path."
        ) from exc
    return db
