"""Which words describe a reply's inputs? Term statistics over remembered (input, reply) pairs.

A reply's description is built from the content words and two-word phrases of its inputs
that separate them from the other replies' inputs, by the **smoothed log-odds z-score** of
Monroe, Colaresi & Quinn (2008) on binary presence: with document frequencies ``y_in`` of
``n_in`` inputs of the reply and ``y_out`` of ``n_out`` others, and a symmetric prior ``a``,

``delta = logit((y_in+a)/(n_in+2a)) - logit((y_out+a)/(n_out+2a))``,
``z = delta / sqrt(1/(y_in+a) + 1/(n_in-y_in+a) + 1/(y_out+a) + 1/(n_out-y_out+a))``.

A term must occur in at least ``min_df`` inputs of the reply (one-off words are memorized,
not learned; a word of the reply's own text needs only one, since the reply names its topic),
reach ``z_min`` and a precision of ``min_precision``. Terms are then taken
greedily by how many *new* inputs of the reply they cover, so a description names different
facets rather than synonyms of one. This is a statistic of the data only: it assumes nothing
about how the target model reads the description; the env's reward decides whether it helps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

_TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """Return scikit-learn's English stop words plus common contractions."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    extra = {"i'm", "i've", "i'd", "i'll", "it's", "don't", "can't", "didn't", "doesn't"}
    extra |= {"won't", "isn't", "that's", "what's", "there's", "you're", "let's", "just"}
    return frozenset(ENGLISH_STOP_WORDS) | extra | {"really", "please", "thanks", "hi", "hello"}


def content_terms(text: str) -> list[str]:
    """Return the distinct content words (3+ letters, no stop words) and adjacent word pairs.

    Example:
        >>> content_terms("I love a flat white in the morning")
        ['love', 'flat', 'white', 'morning', 'flat white']
    """
    words = _TOKEN.findall(text.lower().replace("’", "'"))
    stops = stop_words()
    keep = [len(w) >= 3 and w not in stops and not w.isdigit() for w in words]
    singles = [w for w, k in zip(words, keep, strict=True) if k]
    pairs = [
        f"{a} {b}"
        for a, b, ka, kb in zip(words, words[1:], keep, keep[1:], strict=False)
        if ka and kb
    ]
    return list(dict.fromkeys(singles + pairs))


def log_odds_z(y_in: float, n_in: float, y_out: float, n_out: float, alpha: float) -> float:
    """Return the smoothed log-odds z-score of a term for one reply (see the module doc).

    Example:
        >>> round(log_odds_z(8, 20, 0, 20, 0.5), 2)
        2.22
        >>> log_odds_z(1, 20, 1, 20, 0.5)
        0.0
    """
    a = alpha
    delta = math.log((y_in + a) / (n_in - y_in + a)) - math.log((y_out + a) / (n_out - y_out + a))
    variance = 1 / (y_in + a) + 1 / (n_in - y_in + a) + 1 / (y_out + a) + 1 / (n_out - y_out + a)
    return delta / math.sqrt(variance)


@dataclass(frozen=True)
class TermStats:
    """The filters of a description's terms (see the module docstring)."""

    min_df: int = 2
    alpha: float = 0.5
    z_min: float = 1.0
    min_precision: float = 0.6
    max_terms: int = 6


@dataclass(frozen=True)
class Description:
    """The terms chosen for one reply and how many of its inputs they cover."""

    terms: tuple[str, ...]
    covered: int
    support: int

    @property
    def coverage(self) -> float:
        """The share of the reply's remembered inputs containing at least one term."""
        return self.covered / self.support if self.support else 0.0


def describe(
    texts: Sequence[str], labels: Sequence[str], label: str, stats: TermStats
) -> Description:
    """Choose the terms that describe inputs labelled ``label`` against the others.

    Args:
        texts: remembered inputs.
        labels: the reply key of each input (the reply text itself).
        label: the reply to describe.
        stats: the term filters.

    Returns:
        Up to ``stats.max_terms`` terms, most separating first among equals in coverage.

    Example:
        >>> texts = ["my latte is cold", "latte art", "espresso shot", "golf swing", "golf"]
        >>> labels = ["c", "c", "c", "s", "s"]
        >>> describe(texts, labels, "c", TermStats(min_df=1, z_min=0.5)).terms
        ('latte', 'espresso')
    """
    inside = [set(content_terms(t)) for t, lab in zip(texts, labels, strict=True) if lab == label]
    outside = [set(content_terms(t)) for t, lab in zip(texts, labels, strict=True) if lab != label]
    n_in, n_out = len(inside), len(outside)
    if n_in == 0:
        return Description((), 0, 0)
    df_in: dict[str, int] = {}
    for terms in inside:
        for term in terms:
            df_in[term] = df_in.get(term, 0) + 1
    own_words = {t for t in content_terms(label) if " " not in t}
    scored: list[tuple[float, str]] = []
    for term, y_in in df_in.items():
        if y_in < (1 if term in own_words else stats.min_df):
            continue
        y_out = sum(1 for terms in outside if term in terms)
        if y_in / (y_in + y_out) < stats.min_precision:
            continue
        z = log_odds_z(y_in, n_in, y_out, n_out, stats.alpha)
        if z >= stats.z_min:
            scored.append((z, term))
    scored.sort(key=lambda item: (-item[0], item[1]))
    chosen: list[str] = []
    covered: set[int] = set()
    remaining = [term for _, term in scored]
    while remaining and len(chosen) < stats.max_terms:
        gains = [
            (len({i for i, terms in enumerate(inside) if term in terms} - covered), -rank, term)
            for rank, term in enumerate(remaining)
        ]
        gain, _, best = max(gains)
        if gain == 0:
            break
        chosen.append(best)
        covered |= {i for i, terms in enumerate(inside) if best in terms}
        remaining.remove(best)
        # a phrase and its own words say the same thing twice
        remaining = [t for t in remaining if t not in best.split() and best not in t.split()]
    return Description(tuple(chosen), len(covered), n_in)
