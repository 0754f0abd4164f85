"""Does a new output match the reference? Code graders: exact match, BLEU, embedding cosine.

Each grader compares the new output with ``Sample.reference``. A sample without a reference
cannot be graded: it scores 0 with an error, and the grader counts it in ``errors``. The
graders are deterministic and cheap (the embedding model loads once per process, on first
use, and every text is embedded once).
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals.base import EvalItem, EvalResult


class TextEmbedder(Protocol):
    """Anything that turns texts into unit vectors (``selfimprove_rl.embeddings.Embedder``)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(n, d)`` array of L2-normalized vectors, one row per text."""
        ...


def normalize_text(text: str) -> str:
    r"""Fold case, drop punctuation, and collapse whitespace (Unicode-aware).

    Example:
        >>> normalize_text("  Well, I DON'T like\tsports!! ")
        'well i dont like sports'
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


class ReferenceGrader:
    """Base of the code graders: scores each (output, reference) pair; no reference → error.

    Subclasses set ``description`` and implement :meth:`score_pairs`.

    Args:
        name: the eval name results carry (unique among a run's evaluators).
        weight: the eval's share of the aggregate score (non-negative).

    Attributes:
        errors: how many samples could not be graded (no reference), over every call.
    """

    description = "reference grader"

    def __init__(self, name: str, weight: float = 1.0) -> None:
        if not name:
            raise EvaluatorError(f"Expects a non-empty evaluator name, got {name!r}")
        if not weight >= 0:
            raise EvaluatorError(f"Expects a non-negative weight for {name!r}, got {weight}")
        self.name = name
        self.weight = float(weight)
        self.errors = 0

    async def evaluate(self, items: Sequence[EvalItem]) -> list[EvalResult]:
        """Return one result per item, in order; items without a reference score 0 with an error."""
        graded = [i for i, item in enumerate(items) if item.sample.reference is not None]
        pairs = [(items[i].output, items[i].sample.reference or "") for i in graded]
        scored = await self.score_pairs(pairs) if pairs else []
        results: list[EvalResult | None] = [None] * len(items)
        for i, (score, label, explanation) in zip(graded, scored, strict=True):
            results[i] = EvalResult(
                name=self.name,
                sample_id=items[i].sample.sample_id,
                score=min(1.0, max(0.0, score)),
                label=label,
                explanation=explanation,
            )
        for i, result in enumerate(results):
            if result is None:
                self.errors += 1
                sample_id = items[i].sample.sample_id
                results[i] = EvalResult(
                    name=self.name,
                    sample_id=sample_id,
                    score=0.0,
                    error=f"sample {sample_id!r} has no reference output, which the "
                    f"{self.description} {self.name!r} compares with; give the sample a "
                    "reference or use an eval that needs none (a classifier)",
                )
        return [result for result in results if result is not None]

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[float, str | None, str | None]]:
        """Return (score in [0, 1], label, explanation) for each (output, reference) pair."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


class ExactMatch(ReferenceGrader):
    """1 when output and reference are equal after :func:`normalize_text`, else 0.

    Example:
        >>> import asyncio
        >>> from selfimprove_rl.checkpoint import Sample
        >>> sample = Sample(sample_id="s", chat_history=[], reference="Hi, there!",
        ...                 output_generation={"role": "assistant", "content": "Hi, there!"})
        >>> [r.label for r in asyncio.run(ExactMatch().evaluate([EvalItem(sample, "hi there")]))]
        ['match']
    """

    description = "exact-match eval"

    def __init__(self, name: str = "exact_match", weight: float = 1.0) -> None:
        super().__init__(name, weight)

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[float, str | None, str | None]]:
        """Score 1.0 ("match") or 0.0 ("no_match") per pair."""
        results: list[tuple[float, str | None, str | None]] = []
        for output, reference in pairs:
            same = normalize_text(output) == normalize_text(reference)
            results.append((1.0 if same else 0.0, "match" if same else "no_match", None))
        return results


class Bleu(ReferenceGrader):
    """Sentence BLEU (sacrebleu, exponential smoothing) of the output against the reference, / 100.

    Example:
        >>> import asyncio
        >>> from selfimprove_rl.checkpoint import Sample
        >>> sample = Sample(sample_id="s", chat_history=[], reference="I like coffee, too.",
        ...                 output_generation={"role": "assistant", "content": ""})
        >>> asyncio.run(Bleu().evaluate([EvalItem(sample, "I like coffee, too.")]))[0].score
        1.0
    """

    description = "BLEU eval"

    def __init__(self, name: str = "bleu", weight: float = 1.0) -> None:
        super().__init__(name, weight)

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[float, str | None, str | None]]:
        """Score each pair by sentence BLEU scaled to [0, 1]."""
        from sacrebleu.metrics import BLEU

        metric = BLEU(effective_order=True)
        results: list[tuple[float, str | None, str | None]] = []
        for output, reference in pairs:
            bleu = metric.sentence_score(output, [reference]).score
            results.append((bleu / 100.0, None, f"sentence BLEU {bleu:.1f} against the reference"))
        return results


class EmbeddingSimilarity(ReferenceGrader):
    """Cosine similarity of output and reference sentence embeddings, clipped to [0, 1].

    Args:
        name: the eval name.
        weight: the eval's share of the aggregate score.
        embedder: encodes texts to unit vectors; default the process-wide bundled MiniLM
            (``selfimprove_rl.embeddings.default_embedder()``), loaded on first use.
    """

    description = "embedding-similarity eval"

    def __init__(
        self, name: str = "similarity", weight: float = 1.0, embedder: TextEmbedder | None = None
    ) -> None:
        super().__init__(name, weight)
        self._embedder = embedder

    @property
    def embedder(self) -> TextEmbedder:
        """The embedder in use (the default one is created on first access)."""
        if self._embedder is None:
            from selfimprove_rl.embeddings import default_embedder

            self._embedder = default_embedder()
        return self._embedder

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[float, str | None, str | None]]:
        """Score each pair by the cosine of their embeddings (encoded off the event loop)."""
        texts = [text for pair in pairs for text in pair]
        vectors = await asyncio.to_thread(self.embedder.encode, texts)
        outputs, references = vectors[0::2], vectors[1::2]
        cosines = np.einsum("ij,ij->i", outputs, references)
        return [
            (float(np.clip(cosine, 0.0, 1.0)), None, f"cosine {float(cosine):.3f} to the reference")
            for cosine in cosines
        ]
