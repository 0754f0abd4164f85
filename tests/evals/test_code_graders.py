"""Code graders: exact match, BLEU, embedding cosine, against Sample.reference."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from selfimprove_rl.checkpoint import Sample
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals import Bleu, EmbeddingSimilarity, EvalItem, EvalResult, ExactMatch


def run(evaluator: Any, items: list[EvalItem]) -> list[EvalResult]:
    return asyncio.run(evaluator.evaluate(items))


@pytest.mark.parametrize(
    ("output", "reference", "score"),
    [
        ("I like coffee, too.", "I like coffee, too.", 1.0),
        ("  i LIKE coffee too ", "I like coffee, too.", 1.0),
        ("I like coffee\ttoo!!", "I like coffee, too.", 1.0),
        ("Well, I don’t like sports.", "Well, I don't like sports.", 1.0),
        ("I like coffee", "I like coffee, too.", 0.0),
        ("", "I like coffee, too.", 0.0),
        ("", "", 1.0),
    ],
)
def test_exact_match_normalizes_case_space_and_punctuation(
    output: str, reference: str, score: float, sample_factory: Callable[..., Sample]
) -> None:
    result = run(ExactMatch(), [EvalItem(sample_factory("s", reference=reference), output)])[0]
    assert result.score == score
    assert result.label == ("match" if score else "no_match")
    assert result.name == "exact_match" and result.sample_id == "s"


@pytest.mark.parametrize("grader", [ExactMatch, Bleu, EmbeddingSimilarity])
def test_a_missing_reference_scores_zero_with_an_error(
    grader: type[Any], sample_factory: Callable[..., Sample]
) -> None:
    evaluator = grader(embedder=UnitEmbedder()) if grader is EmbeddingSimilarity else grader()
    items = [
        EvalItem(sample_factory("has", reference="I like coffee, too."), "I like coffee, too."),
        EvalItem(sample_factory("none", reference=None), "I like coffee, too."),
    ]
    results = run(evaluator, items)
    assert [r.sample_id for r in results] == ["has", "none"]
    assert results[0].score > 0.99 and results[0].error is None
    assert results[1].score == 0.0
    assert "has no reference output" in (results[1].error or "")
    assert evaluator.errors == 1
    run(evaluator, items)
    assert evaluator.errors == 2


def test_bleu_orders_outputs_by_overlap(sample_factory: Callable[..., Sample]) -> None:
    reference = "I see you are a person of taste! I like coffee, too."
    outputs = [
        reference,
        "I see you are a person of taste! I like tea, too.",
        "You are a person of taste.",
        "Well, I don't like sports.",
        "",
    ]
    sample = sample_factory("s", reference=reference)
    scores = [
        r.score for r in run(Bleu(name="b", weight=0.5), [EvalItem(sample, o) for o in outputs])
    ]
    assert scores[0] == 1.0
    assert scores == sorted(scores, reverse=True)
    assert 0.0 < scores[2] < scores[1] < 1.0
    assert scores[4] == 0.0


class UnitEmbedder:
    """Deterministic 3-d vectors: the text's first letter picks a direction."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        table = {"a": [1.0, 0.0, 0.0], "b": [0.6, 0.8, 0.0], "c": [-1.0, 0.0, 0.0]}
        return np.array(
            [table.get(t[:1].lower(), [0.0, 0.0, 1.0]) for t in texts], dtype=np.float32
        )


def test_similarity_is_the_cosine_clipped_to_unit_interval(
    sample_factory: Callable[..., Sample],
) -> None:
    embedder = UnitEmbedder()
    evaluator = EmbeddingSimilarity(embedder=embedder)
    sample = sample_factory("s", reference="apple")
    results = run(evaluator, [EvalItem(sample, t) for t in ["avocado", "banana", "cherry"]])
    assert [r.score for r in results] == pytest.approx([1.0, 0.6, 0.0])
    assert embedder.seen == ["avocado", "apple", "banana", "apple", "cherry", "apple"]


@pytest.mark.slow
def test_similarity_with_the_bundled_sentence_model(sample_factory: Callable[..., Sample]) -> None:
    evaluator = EmbeddingSimilarity()
    sample = sample_factory("s", reference="I see you are a person of taste! I like coffee, too.")
    outputs = [
        "I see you are a person of taste! I like coffee, too.",
        "You have great taste, I enjoy coffee as well.",
        "Well, I don't like sports.",
    ]
    scores = [r.score for r in run(evaluator, [EvalItem(sample, o) for o in outputs])]
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[0] > scores[1] > scores[2]
    assert scores[1] > 0.6 and scores[2] < 0.5
    cached = evaluator.embedder.cache_size  # type: ignore[attr-defined]
    run(evaluator, [EvalItem(sample, o) for o in outputs])
    assert evaluator.embedder.cache_size == cached  # type: ignore[attr-defined]


def test_graders_reject_bad_configuration() -> None:
    with pytest.raises(EvaluatorError, match="non-negative weight"):
        ExactMatch(weight=-1.0)
    with pytest.raises(EvaluatorError, match="non-empty evaluator name"):
        Bleu(name="")


@pytest.mark.slow
def test_an_embedding_does_not_depend_on_what_was_embedded_with_it() -> None:
    from selfimprove_rl.embeddings import Embedder

    text = "Nothing beats a flat white on a rainy morning."
    longer = "We finally won the regional volleyball final after a long season of training. " * 3
    alone = Embedder(cache_dir=False).encode([text])[0]
    with_a_longer_mate = Embedder(cache_dir=False).encode([longer, text])[1]
    assert np.array_equal(alone, with_a_longer_mate)
