"""Which inputs make good demonstrations? Typical and different ones, by sentence embeddings.

A demonstration should look like the inputs of its reply (typical: close to the reply's
centroid) and unlike the demonstrations already chosen for it (diverse), so the pick is by
maximal marginal relevance (Carbonell & Goldstein 1998): ``(1 - λ) · typicality - λ · max
similarity to the chosen``. Embeddings only measure how alike two inputs are; what a
demonstration does to the target is measured by the env's reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Encoder = Callable[[Sequence[str]], np.ndarray]


def default_encoder() -> Encoder:
    """Return the shipped sentence embedder's ``encode`` (loaded on first use)."""
    from selfimprove_rl.embeddings import default_embedder

    embedder = default_embedder()

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(embedder.encode(list(texts)), dtype=np.float32)

    return encode


def typicality(vectors: np.ndarray) -> np.ndarray:
    """Return each row's cosine with the (normalized) mean of all rows.

    Example:
        >>> typicality(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).round(2).tolist()
        [0.89, 0.89, 0.45]
    """
    centre = vectors.mean(axis=0)
    norm = float(np.linalg.norm(centre))
    if norm == 0.0:
        return np.zeros(len(vectors))
    return np.asarray(vectors @ (centre / norm), dtype=float)


def pick_diverse(
    vectors: np.ndarray,
    count: int,
    *,
    chosen: np.ndarray | None = None,
    diversity: float = 0.5,
    allowed: Sequence[int] | None = None,
) -> list[int]:
    """Pick ``count`` rows by maximal marginal relevance (see the module docstring).

    Args:
        vectors: L2-normalized embeddings of the reply's inputs.
        count: how many to pick.
        chosen: embeddings of demonstrations already in the prompt for this reply.
        diversity: λ, the weight of being unlike the chosen.
        allowed: rows that may be picked (default: all).

    Returns:
        Row indices, in pick order.

    Example:
        >>> v = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.6, 0.8]])
        >>> pick_diverse(v, 2, diversity=0.5)
        [3, 0]
    """
    if len(vectors) == 0 or count <= 0:
        return []
    relevance = typicality(vectors)
    pool = list(range(len(vectors))) if allowed is None else list(allowed)
    taken: list[np.ndarray] = [] if chosen is None else [row for row in chosen]
    picks: list[int] = []
    while pool and len(picks) < count:
        if taken:
            redundancy = np.max(np.stack(taken) @ vectors[pool].T, axis=0)
        else:
            redundancy = np.zeros(len(pool))
        scores = (1.0 - diversity) * relevance[pool] - diversity * redundancy
        best = pool[int(np.argmax(scores))]
        picks.append(best)
        taken.append(vectors[best])
        pool.remove(best)
    return picks
