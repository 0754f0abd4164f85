"""Which routing rule fits a reply best? Term statistics, greedy rule induction, cross-validation.

The rule-induction coach (:mod:`policies.rule_induction`) builds rules for one reference
reply ``c`` (its *class*) from remembered ``(input, reference)`` pairs, in three kinds:

``mentions``
    ``if input mentions t1, t2 or t3: respond "c"``. Candidate terms are content words and
    two-word phrases (stop words removed) that occur in at least ``min_df`` inputs of ``c``,
    whose precision for ``c`` is at least ``min_precision``, and whose **smoothed log-odds
    z-score** is at least ``z_min``: with document frequencies ``y_in`` of ``n_in`` inputs of
    ``c`` and ``y_out`` of ``n_out`` others, and a symmetric prior ``alpha``,

    ``delta = logit((y_in+a)/(n_in+2a)) - logit((y_out+a)/(n_out+2a))``,
    ``z = delta / sqrt(1/(y_in+a) + 1/(n_in-y_in+a) + 1/(y_out+a) + 1/(n_out-y_out+a))``

    (the informative-prior log-odds of Monroe, Colaresi & Quinn 2008, on binary presence).
    The minimum document frequency keeps one-off training words out of the rules.
``about``
    ``if input is about t1, t2 or t3: respond "c"``: the terms become facets of a
    plain-language description, and an input matches when its embedding is close enough to a
    facet (the surrogate's fitted threshold), so the rule reaches inputs that share none of
    the words. Candidate facets are the content words of ``c``'s inputs and of the reply
    ``c`` itself; the same z-score and precision filters apply, with *semantic* document
    frequencies (how many inputs of ``c`` and of the others are close to the term), and at
    least ``min_gain_samples`` inputs of ``c`` must be close to it.
``examples``
    ``example: "<input>" -> "c"`` lines, for any classes at once (a nearest-neighbour router
    needs examples of every reply it should tell apart): candidates are the medoids of
    k-means clusters of each class's inputs (embeddings) and the inputs the prompt gets
    wrong; first a *balanced* set (the ``k`` biggest medoids of every class), then single
    additions, at most ``max_examples`` per class.

Terms (and examples) are chosen **greedily**: each step adds the candidate that most increases
the number of remembered inputs the whole prompt would answer correctly (the surrogate of
:mod:`policies.surrogate`, with every other statement in place), and stops when the best adds
fewer than ``min_gain_samples`` correct inputs or its gain per input does not pay for its
prompt tokens (``token_weight`` per token). So a rule is as short as its gain allows: a term
that answers nothing new is never added. The gain is counted **leave-one-out**: a term is not
credited for fixing an input it would not have been a candidate without (a word found in one
input only cannot earn its place by fixing that input; :func:`source_credit`), and an example
is not credited for answering its own input. A memorized training word has to reach *other*
inputs to be chosen.

A rule's worth is then its **cross-validated gain**: the remembered inputs are split into
``folds`` stratified folds (fixed by a hash of the sample id); the rule is induced on the
other folds and answers each held-out fold, and those answers are compared, input by input,
with the current prompt's (:func:`paired_gain`: a lower confidence bound of the paired
difference). Induction that memorizes training words scores badly on held-out folds, so
generalization is what is rewarded.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from policies.surrogate import Inputs, Routes, Surrogate, reply_key
from selfimprove_rl.simulated.sop import Statement, parse_line, term_pattern
from selfimprove_rl.simulated.tokens import count_tokens

RuleKind = Literal["mentions", "about", "examples"]

_TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """Return scikit-learn's English stop words plus contraction stems."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    extra = {
        "i'm",
        "i've",
        "i'd",
        "i'll",
        "it's",
        "don't",
        "can't",
        "didn't",
        "doesn't",
        "won't",
        "isn't",
        "that's",
        "what's",
        "there's",
        "you're",
        "let's",
        "just",
        "really",
    }
    return frozenset(ENGLISH_STOP_WORDS) | extra


def content_terms(text: str) -> list[str]:
    """Return the distinct content words (3+ letters, no stop words) and adjacent word pairs.

    Example:
        >>> content_terms("I love a flat white in the morning")
        ['love', 'flat', 'white', 'morning', 'flat white']
    """
    words = _TOKEN.findall(text.lower().replace("’", "'"))
    stops = stop_words()
    keep = [len(w) >= 3 and w not in stops and not w.isdigit() for w in words]
    terms = [w for w, k in zip(words, keep, strict=True) if k]
    pairs = [
        f"{a} {b}"
        for a, b, ka, kb in zip(words, words[1:], keep, keep[1:], strict=False)
        if ka and kb
    ]
    return list(dict.fromkeys(terms + pairs))


def log_odds_z(y_in: float, n_in: float, y_out: float, n_out: float, alpha: float) -> float:
    """Return the smoothed log-odds z-score of a term for one class (see the module doc).

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
class InductionConfig:
    """The statistic's knobs (see the module docstring)."""

    min_df: int = 2
    alpha: float = 0.5
    z_min: float = 1.0
    min_precision: float = 0.7
    max_terms: int = 8
    max_facets: int = 6
    max_examples: int = 5
    min_gain_samples: int = 2
    token_weight: float = 2e-5
    folds: int = 3
    confidence: float = 0.5


@dataclass
class Pool:
    """Remembered inputs with everything induction reads, computed once per decision.

    ``vocabulary`` holds every content word of the inputs and replies plus the two-word
    phrases with at least ``min_df`` inputs; ``presence`` says which inputs contain each
    term, ``mention_masks`` which inputs a ``mentions`` rule on that term fires on (only for
    terms with ``min_df`` inputs, the literal candidates), and ``term_cosines`` the cosine of
    each input with each term.
    """

    surrogate: Surrogate
    ids: list[str]
    inputs: Inputs
    vocabulary: list[str]
    presence: np.ndarray
    mention_masks: np.ndarray
    term_cosines: np.ndarray
    folds: np.ndarray
    _masks: dict[str, np.ndarray] = field(default_factory=dict)
    _sims: dict[str, np.ndarray] = field(default_factory=dict)
    _medoids: dict[tuple[int, ...], list[int]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        surrogate: Surrogate,
        ids: Sequence[str],
        texts: Sequence[str],
        references: Sequence[str],
        config: InductionConfig,
    ) -> Pool:
        """Embed the inputs, index their terms and assign the cross-validation folds."""
        vectors = surrogate.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        inputs = Inputs(list(texts), vectors, [reply_key(r) for r in references])
        term_lists = [content_terms(t) for t in texts]
        counts: dict[str, int] = {}
        for terms in term_lists:
            for term in terms:
                counts[term] = counts.get(term, 0) + 1
        reply_words = {w for r in set(references) for w in content_terms(r) if " " not in w}
        vocabulary = sorted(
            {t for t, n in counts.items() if n >= config.min_df or " " not in t} | reply_words
        )
        index = {t: i for i, t in enumerate(vocabulary)}
        presence = np.zeros((len(vocabulary), len(texts)), dtype=bool)
        for column, terms in enumerate(term_lists):
            for term in terms:
                if term in index:
                    presence[index[term], column] = True
        mentions = np.zeros_like(presence)
        for row, term in enumerate(vocabulary):
            if counts.get(term, 0) >= config.min_df:
                pattern = term_pattern((term,))
                mentions[row] = [pattern.search(t) is not None for t in texts]
        if vocabulary and len(texts):
            cosines = np.asarray(surrogate.encode(vocabulary) @ vectors.T)
        else:
            cosines = np.zeros((len(vocabulary), len(texts)), dtype=np.float32)
        return cls(
            surrogate=surrogate,
            ids=list(ids),
            inputs=inputs,
            vocabulary=vocabulary,
            presence=presence,
            mention_masks=mentions,
            term_cosines=cosines,
            folds=stratified_folds(ids, inputs.refs, config.folds),
        )

    @property
    def n(self) -> int:
        """Number of remembered inputs."""
        return len(self.inputs)

    def _rule_mask(self, statement: Statement) -> np.ndarray:
        mask = self._masks.get(statement.text)
        if mask is None:
            mask = self.surrogate.rule_mask(statement, self.inputs)
            self._masks[statement.text] = mask
        return mask

    def _example_sims(self, statement: Statement) -> np.ndarray:
        """Cosine of each input with an example's input; an example's own input gets -2.

        Leaving the example out of its own input's answer (leave-one-out) keeps a prompt
        from being credited for reciting its training inputs, whether the example is in the
        current prompt or a candidate.
        """
        sims = self._sims.get(statement.example_input)
        if sims is None:
            vector = self.surrogate.encode([statement.example_input])[0]
            sims = np.asarray(self.inputs.vectors @ vector).copy()
            own = " ".join(statement.example_input.split())
            sims[[" ".join(t.split()) == own for t in self.inputs.texts]] = -2.0
            self._sims[statement.example_input] = sims
        return sims

    def routes(self, statements: Sequence[Statement], index: np.ndarray) -> Routes:
        """Compile the statements the target reads over the inputs at ``index``."""
        statements = self.surrogate.readable(statements)
        rules = [s for s in statements if s.is_rule]
        examples = [s for s in statements if s.kind == "example"]
        fallback = next((s for s in statements if s.kind == "else"), None)
        masks = np.zeros((len(rules), len(index)), dtype=bool)
        for row, rule in enumerate(rules):
            masks[row] = self._rule_mask(rule)[index]
        sims = np.zeros((len(examples), len(index)), dtype=np.float32)
        for row, example in enumerate(examples):
            sims[row] = self._example_sims(example)[index]
        return Routes(
            rule_masks=masks,
            rule_replies=[reply_key(s.reply) for s in rules],
            example_sims=sims,
            example_replies=[reply_key(s.reply) for s in examples],
            example_threshold=self.surrogate.example.value,
            fallback=reply_key(fallback.reply) if fallback else None,
        )

    def correct(self, statements: Sequence[Statement], index: np.ndarray) -> np.ndarray:
        """Return which inputs at ``index`` the statements answer with their reference."""
        predicted = self.routes(statements, index).predict()
        return np.asarray(predicted == np.array([self.inputs.refs[i] for i in index], dtype=object))


def stratified_folds(ids: Sequence[str], labels: Sequence[str], folds: int) -> np.ndarray:
    """Assign each id a fold: within each label, ids ordered by hash are dealt round-robin.

    The assignment of an id depends only on the ids sharing its label, so it is stable
    across runs and processes.
    """
    result = np.zeros(len(ids), dtype=int)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for members in by_label.values():
        ordered = sorted(members, key=lambda i: hashlib.sha1(ids[i].encode()).hexdigest())
        for rank, i in enumerate(ordered):
            result[i] = rank % max(1, folds)
    return result


@dataclass(frozen=True)
class Spot:
    """Where a new rule goes: the statements before and after it."""

    before: tuple[Statement, ...]
    after: tuple[Statement, ...]


def statement_of(line: str) -> Statement | None:
    """Parse one SOP line (``None`` when it is not understood)."""
    return parse_line(line, 1)


def _separating(
    hits: np.ndarray, is_in: np.ndarray, minimum: int, config: InductionConfig
) -> list[tuple[int, float]]:
    """Return ``(row, z)`` of the rows of ``hits`` (terms × inputs) that separate ``is_in``."""
    n_in, n_out = int(is_in.sum()), int((~is_in).sum())
    if n_in == 0 or not hits.shape[0]:
        return []
    y_in = hits[:, is_in].sum(axis=1)
    y_out = hits[:, ~is_in].sum(axis=1)
    chosen: list[tuple[int, float]] = []
    for row in np.flatnonzero(y_in >= minimum):
        if y_in[row] / (y_in[row] + y_out[row]) < config.min_precision:
            continue
        z = log_odds_z(float(y_in[row]), n_in, float(y_out[row]), n_out, config.alpha)
        if z >= config.z_min:
            chosen.append((int(row), z))
    return chosen


def candidate_terms(
    kind: Literal["mentions", "about"],
    pool: Pool,
    key: str,
    index: np.ndarray,
    config: InductionConfig,
) -> list[tuple[int, float]]:
    """Return ``(vocabulary row, z)`` of the terms that separate class ``key``, best first.

    ``mentions``: the term occurs (whole words) in at least ``min_df`` inputs of the class.
    ``about``: the term is a word of the class's inputs or of its reply, and at least
    ``min_gain_samples`` inputs of the class are semantically close to it (cosine at the
    surrogate's threshold); the z-score and precision use semantic closeness instead of
    occurrence.
    """
    if not pool.vocabulary or not len(index):
        return []
    is_in = np.array([pool.inputs.refs[i] == key for i in index])
    if kind == "mentions":
        chosen = _separating(pool.mention_masks[:, index], is_in, config.min_df, config)
    else:
        reply_words = set(content_terms(key))
        own = pool.presence[:, index][:, is_in].any(axis=1)
        own |= np.array([t in reply_words for t in pool.vocabulary])
        rows = np.flatnonzero(own)
        close = pool.term_cosines[rows][:, index] >= pool.surrogate.semantic.value
        chosen = [
            (int(rows[r]), z) for r, z in _separating(close, is_in, config.min_gain_samples, config)
        ]
    chosen.sort(key=lambda item: (-item[1], pool.vocabulary[item[0]]))
    return chosen


def _rule_context(
    pool: Pool, spot: Spot, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return, over ``index``: answered upstream, correct upstream, correct downstream."""
    statements = [*spot.before, *spot.after]
    routes = pool.routes(statements, index)
    position = sum(1 for s in spot.before if s.is_rule)
    refs = np.array([pool.inputs.refs[i] for i in index], dtype=object)
    upstream = routes.taken_before(position)
    return upstream, routes.predict() == refs, routes.after_rules(position) == refs


def _greedy_masks(
    masks: np.ndarray,
    costs: Sequence[int],
    context: tuple[np.ndarray, np.ndarray, np.ndarray],
    is_class: np.ndarray,
    limit: int,
    config: InductionConfig,
    seed: np.ndarray | None = None,
    credit: np.ndarray | None = None,
) -> list[int]:
    """Pick rows of ``masks`` whose union (with ``seed``), as one rule, answers the most inputs.

    Each step adds the row with the largest gain in correct answers; it stops at ``limit``
    rows, or when the best gain is under ``min_gain_samples`` or does not pay its tokens.
    ``credit`` (rows × inputs) says which inputs a row may be credited for fixing (see
    :func:`source_credit`); an input it breaks always counts against it.
    """
    upstream, up_correct, down_correct = context
    chosen: list[int] = []
    current = np.zeros(masks.shape[1], dtype=bool) if seed is None else seed.copy()
    n = max(1, masks.shape[1])

    def correct(mask: np.ndarray) -> np.ndarray:
        fires = mask & ~upstream
        return np.where(upstream, up_correct, np.where(fires, is_class, down_correct))

    base = correct(current)
    while len(chosen) < limit and masks.shape[0]:
        delta = correct(masks | current).astype(int) - base.astype(int)
        if credit is not None:
            delta = np.where((delta > 0) & ~credit, 0, delta)
        gains = delta.sum(axis=1)
        gains[chosen] = -1
        best = int(np.argmax(gains))
        gain = int(gains[best])
        if gain < config.min_gain_samples or gain / n <= config.token_weight * (costs[best] + 1):
            break
        chosen.append(best)
        current |= masks[best]
        base = correct(current)
    return chosen


def source_credit(
    kind: Literal["mentions", "about"],
    pool: Pool,
    rows: Sequence[int],
    index: np.ndarray,
    is_class: np.ndarray,
    reply_words: set[str],
    config: InductionConfig,
) -> np.ndarray:
    """Return which inputs (columns) each term (row) may be credited for fixing.

    A leave-one-out rule: a term is credited for an input only if it would have been a
    candidate without that input, i.e. the class's *other* inputs still hold it at least
    ``min_df`` times (``mentions``) or at least once (``about``; a word of the reply needs
    no input). So a word found in one input cannot earn its place by fixing that very input
    (the way a memorized training word fits the sample it came from); it has to reach others.
    """
    need = config.min_df if kind == "mentions" else 1
    source = pool.mention_masks if kind == "mentions" else pool.presence
    own = source[np.asarray(rows, dtype=int)][:, index] & is_class
    support = own.sum(axis=1, keepdims=True)
    credit = (support - own) >= need
    if kind == "about":
        credit |= np.array([[pool.vocabulary[r] in reply_words] for r in rows], dtype=bool)
    return credit


def _join_terms(terms: Sequence[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    return ", ".join(terms[:-1]) + " or " + terms[-1]


def rule_line(kind: Literal["mentions", "about"], terms: Sequence[str], reply: str) -> str:
    """Return an SOP rule line.

    Example:
        >>> rule_line("about", ["coffee", "espresso", "beans"], "I like coffee.")
        'if input is about coffee, espresso or beans: respond "I like coffee."'
    """
    verb = "mentions" if kind == "mentions" else "is about"
    return f'if input {verb} {_join_terms(terms)}: respond "{reply}"'


def example_line(text: str, reply: str) -> str:
    """Return an SOP example line (``text`` without newlines).

    Example:
        >>> example_line("I run  marathons.", "Sports!")
        'example: "I run marathons." -> "Sports!"'
    """
    return f'example: "{" ".join(text.split())}" -> "{reply}"'


def induce_rule(
    kind: Literal["mentions", "about"],
    pool: Pool,
    key: str,
    reply: str,
    spot: Spot,
    index: np.ndarray,
    config: InductionConfig,
    start: Sequence[str] = (),
) -> list[str]:
    """Induce one ``mentions`` or ``is about`` rule for class ``key`` from the inputs at ``index``.

    Args:
        kind: the rule kind.
        pool: the remembered inputs.
        key: the class (a reply key, see :func:`policies.surrogate.reply_key`).
        reply: the reply text the rule gives.
        spot: the statements around the new rule.
        index: which inputs to learn from.
        config: the statistic's knobs.
        start: terms the rule starts with (extending an existing rule); the greedy adds to
            them.

    Returns:
        The rule line, or no line when no term is worth adding.
    """
    start = list(dict.fromkeys(t.lower() for t in start))
    terms = [
        (row, z)
        for row, z in candidate_terms(kind, pool, key, index, config)
        if pool.vocabulary[row] not in start
    ]
    if not terms:
        return []
    rows = [row for row, _ in terms]
    texts = [pool.inputs.texts[i] for i in index]
    if kind == "mentions":
        masks = pool.mention_masks[rows][:, index]
        limit = config.max_terms
        initial = [
            np.array([term_pattern((t,)).search(x) is not None for x in texts]) for t in start
        ]
    else:
        threshold = pool.surrogate.semantic.value
        masks = pool.term_cosines[rows][:, index] >= threshold
        limit = config.max_facets
        initial = (
            list(pool.surrogate.encode(start) @ pool.inputs.vectors[index].T >= threshold)
            if start
            else []
        )
    is_class = np.array([pool.inputs.refs[i] == key for i in index])
    costs = [count_tokens(pool.vocabulary[row]) for row in rows]
    context = _rule_context(pool, spot, index)
    seed = np.zeros(len(index), dtype=bool)
    for mask in initial:
        seed |= mask
    credit = source_credit(kind, pool, rows, index, is_class, set(content_terms(key)), config)
    picked = _greedy_masks(
        masks, costs, context, is_class, max(0, limit - len(start)), config, seed, credit
    )
    if not picked:
        return []
    return [rule_line(kind, [*start, *(pool.vocabulary[rows[p]] for p in picked)], reply)]


def medoids(pool: Pool, members: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """Return pool indices of k-means medoids of ``members``, biggest cluster first (cached)."""
    if len(members) <= count:
        return [int(m) for m in members]
    key = (count, seed, *(int(m) for m in members))
    cached = pool._medoids.get(key)
    if cached is not None:
        return list(cached)
    from sklearn.cluster import KMeans

    vectors = pool.inputs.vectors[members]
    model = KMeans(n_clusters=count, n_init=3, random_state=seed).fit(vectors)
    picked: list[tuple[int, int]] = []
    for cluster in range(count):
        inside = np.flatnonzero(model.labels_ == cluster)
        if not len(inside):
            continue
        centre = model.cluster_centers_[cluster]
        best = inside[int(np.argmax(vectors[inside] @ centre))]
        picked.append((-len(inside), int(members[best])))
    result = [m for _, m in sorted(picked)]
    pool._medoids[key] = result
    return list(result)


def induce_examples(
    pool: Pool,
    replies: dict[str, str],
    spot: Spot,
    index: np.ndarray,
    config: InductionConfig,
) -> list[str]:
    """Induce ``example`` lines for any classes from the inputs at ``index``.

    Candidates are the k-means medoids of each class's inputs (``max_examples + 2``
    clusters, biggest first) and the inputs the prompt (``spot``) answers wrongly. A
    nearest-example router needs every reply it must tell apart, so the first choice is a
    *balanced* set: the ``k`` biggest medoids of every class, for the ``k`` that answers the
    most inputs (one example of a single class would capture the other classes' inputs
    too). Then the greedy adds single candidates while they increase the correct answers,
    at most ``max_examples`` per class in all. Answers are the surrogate's (nearest example
    above its threshold, after the rules), leave-one-out: an example's own input is answered
    as if that example were absent (as with terms, :func:`source_credit`), so an example must
    reach other inputs to earn its place.

    When the prompt has no ``else`` line, one is added after the examples: an input no
    example reaches would get the target's generic reply, which is never a reference, so a
    fallback can only turn wrong answers into right ones on inputs memory has not shown yet.
    It goes to the class most of the unreached inputs belong to, else to the class the
    examples reach least (the lowest mean nearest-example cosine).

    Args:
        pool: the remembered inputs.
        replies: class key → reply text of the classes that may get examples.
        spot: the statements around the new examples (existing examples included).
        index: which inputs to learn from.
        config: the statistic's knobs.

    Returns:
        Example lines, in the order they were chosen (and the ``else`` line, if added).
    """
    statements = [*spot.before, *spot.after]
    shown = {s.example_input for s in statements if s.kind == "example"}
    routes = pool.routes(statements, index)
    refs = np.array([pool.inputs.refs[i] for i in index], dtype=object)
    predicted = routes.predict()
    wrong = set(index[predicted != refs].tolist())
    candidates: list[tuple[int, str]] = []
    ranks: list[int] = []
    for key in replies:
        members = [
            i
            for i in index
            if pool.inputs.refs[i] == key
            and '"' not in pool.inputs.texts[i]
            and "\n" not in pool.inputs.texts[i]
            and " ".join(pool.inputs.texts[i].split()) not in shown
        ]
        if not members:
            continue
        picked = medoids(
            pool, np.array(members, dtype=int), min(len(members), config.max_examples + 2)
        )
        extra = [m for m in members if m in wrong and m not in picked]
        candidates += [(m, key) for m in [*picked, *extra]]
        ranks += [*range(len(picked)), *([len(index)] * len(extra))]
    if not candidates:
        return []
    answered = routes.taken_before(routes.rule_masks.shape[0])
    if routes.example_sims.shape[0]:
        old_sim = routes.example_sims.max(axis=0)
        old_reply = np.array(routes.example_replies, dtype=object)[
            routes.example_sims.argmax(axis=0)
        ]
    else:
        old_sim = np.full(len(index), -2.0)
        old_reply = np.array([None] * len(index), dtype=object)
    threshold = pool.surrogate.example.value
    sims = np.stack([pool.inputs.vectors[index] @ pool.inputs.vectors[m] for m, _ in candidates])
    texts = [" ".join(pool.inputs.texts[i].split()) for i in index]
    for row, (m, _) in enumerate(candidates):
        own = " ".join(pool.inputs.texts[m].split())
        sims[row, [t == own for t in texts]] = -2.0  # leave-one-out: not its own answer
    lines = [example_line(pool.inputs.texts[m], replies[key]) for m, key in candidates]
    costs = np.array([count_tokens(line) for line in lines])
    keys = np.array([key for _, key in candidates], dtype=object)
    fallback = np.array([routes.fallback] * len(index), dtype=object)
    base = predicted == refs

    def answers(rows: Sequence[int]) -> np.ndarray:
        """Correct answers with the candidate ``rows`` added (as an example set)."""
        if not rows:
            return base
        block = sims[list(rows)]
        sim = np.maximum(block.max(axis=0), old_sim)
        said = np.where(
            block.max(axis=0) > old_sim, keys[list(rows)][block.argmax(axis=0)], old_reply
        )
        reply = np.where(sim >= threshold, said, fallback)
        return np.where(answered, base, reply == refs)

    def credited(rows: Sequence[int], correct: np.ndarray) -> int:
        return int(correct.sum()) - int(base.sum())

    n = max(1, len(index))

    def pays(gain: int, tokens: int) -> bool:
        return gain >= config.min_gain_samples and gain / n > config.token_weight * tokens

    chosen: list[int] = []
    best_value = 0.0
    for k in range(1, config.max_examples + 1):
        rows = [row for row, rank in enumerate(ranks) if rank < k]
        gain = credited(rows, answers(rows))
        tokens = int(costs[rows].sum())
        value = gain / n - config.token_weight * tokens
        if pays(gain, tokens) and value > best_value:
            chosen, best_value = rows, value
    per_class = {key: sum(1 for row in chosen if keys[row] == key) for key in replies}
    gained = credited(chosen, answers(chosen))
    while True:
        gains = np.full(len(candidates), -1)
        for row in range(len(candidates)):
            if row not in chosen and per_class.get(str(keys[row]), 0) < config.max_examples:
                gains[row] = credited([*chosen, row], answers([*chosen, row])) - gained
        best = int(np.argmax(gains))
        if not pays(int(gains[best]), int(costs[best])):
            break
        chosen.append(best)
        per_class[str(keys[best])] = per_class.get(str(keys[best]), 0) + 1
        gained += int(gains[best])
    if not chosen or routes.fallback is not None:
        return [lines[row] for row in chosen]
    reach = np.maximum(sims[chosen].max(axis=0), old_sim)[~answered]
    classes = refs[~answered]
    missed = [str(c) for c in classes[reach < threshold]]
    keys_present = [key for key in replies if (classes == key).any()] or list(replies)
    if missed:
        spare = max(replies, key=lambda key: (missed.count(key), key))
    else:
        spare = min(
            keys_present,
            key=lambda key: (
                float(reach[classes == key].mean()) if (classes == key).any() else 2.0,
                key,
            ),
        )
    return [*(lines[row] for row in chosen), f'else: respond "{replies[spare]}"']


def parsed(lines: Sequence[str]) -> list[Statement]:
    """Return the understood statements of ``lines``."""
    return [s for s in (statement_of(line) for line in lines) if s is not None]


def cross_validated_correct(
    inducer: Callable[[np.ndarray], list[str]], pool: Pool, spot: Spot, folds: int
) -> np.ndarray:
    """Return, per remembered input, whether the edited prompt answers it on its held-out fold.

    For each fold, ``inducer(train_index)`` returns the new lines learnt from the other
    folds; the prompt with them (at ``spot``) answers the fold's inputs.
    """
    result = np.zeros(pool.n, dtype=bool)
    everything = np.arange(pool.n)
    for fold in range(max(1, folds)):
        held_out = everything[pool.folds == fold]
        train = everything[pool.folds != fold] if folds > 1 else everything
        if not len(held_out):
            continue
        statements = [*spot.before, *parsed(inducer(train)), *spot.after]
        result[held_out] = pool.correct(statements, held_out)
    return result


def paired_gain(new: np.ndarray, old: np.ndarray, confidence: float) -> float:
    """Return a lower confidence bound of the accuracy gain of ``new`` over ``old`` answers.

    With ``fixed`` inputs only ``new`` answers and ``broken`` only ``old`` answers, the bound
    is ``(fixed - broken - confidence * sqrt(fixed + broken)) / n``: the paired (McNemar)
    difference less ``confidence`` standard errors, so a gain resting on a few discordant
    inputs counts for little (a negative ``confidence`` gives the upper bound instead).

    Example:
        >>> new = np.array([True] * 9 + [False]); old = np.array([False] * 3 + [True] * 7)
        >>> round(paired_gain(new, old, 1.0), 3)
        0.0
    """
    fixed = int(np.sum(new & ~old))
    broken = int(np.sum(~new & old))
    return (fixed - broken - confidence * math.sqrt(fixed + broken)) / max(1, len(new))
