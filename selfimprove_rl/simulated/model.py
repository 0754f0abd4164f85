"""What does the simulated model reply to a chat-completion request? Deterministic answers.

:class:`SimulatedChatModel` turns an OpenAI chat-completion request body (a dict) into the
response body (a dict), deterministically:

* the **system prompt** is every ``system`` and ``developer`` message joined by newlines,
  parsed as an SOP (:mod:`selfimprove_rl.simulated.sop`); the **input** is the last ``user``
  message; every earlier ``user`` turn answered by an ``assistant`` turn is a few-shot
  **demonstration**, read like an ``example:`` line of the SOP (in-context learning);
* the **reply**, in the simplest reading (``sim-small``), comes from the first
  ``if``/``else if`` rule that matches, else the nearest example or demonstration at or above
  the tier's example threshold, else the first ``else``, else the listed reply option
  closest to the input, else :func:`generic_reply`; ``sim-large`` instead adds up the
  evidence of every rule, example and demonstration for each reply (see :meth:`_weigh`).
  The tier (:mod:`selfimprove_rl.simulated.tiers`) decides which lines it reads and how
  strictly. Cosines are rounded to 4 decimals before any comparison, so float noise cannot
  flip a decision;
* ``sim-noisy`` deviates with the tier's probability, drawn from an RNG seeded by the
  SHA-256 of the canonical request JSON (sorted keys), so the same request, including its
  ``seed``, always gets the same reply, and another ``seed`` may get another;
* Phoenix-evals classification requests get a rail (:mod:`selfimprove_rl.simulated.classify`);
* ``usage`` counts every prompt token (:mod:`selfimprove_rl.simulated.tokens`), including the
  tool and schema definitions the request carries; ``max_tokens`` (or
  ``max_completion_tokens``) cuts the reply with ``finish_reason="length"``;
* ``id`` derives from the request hash and ``created`` is fixed at 0, so identical requests
  get byte-identical responses.

Example:
    >>> model = SimulatedChatModel()
    >>> body = {
    ...     "model": "sim-keyword",
    ...     "messages": [
    ...         {"role": "system", "content": 'if input mentions tea: respond "Tea time!"'},
    ...         {"role": "user", "content": "Some TEA, please."},
    ...     ],
    ... }
    >>> model.complete(body)["choices"][0]["message"]["content"]
    'Tea time!'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from selfimprove_rl.embeddings import Embedder, default_embedder
from selfimprove_rl.errors import SimulatedRequestError
from selfimprove_rl.simulated import classify
from selfimprove_rl.simulated.sop import Sop, Statement, parse_sop
from selfimprove_rl.simulated.tiers import TierSpec, get_tier
from selfimprove_rl.simulated.tokens import (
    TOKEN_PATTERN,
    content_text,
    count_message_tokens,
    count_tokens,
)

DecisionSource = Literal["rule", "example", "else", "option", "generic", "noise"]
Deviation = Literal["wrong_line", "generic", "garbled"]
DEVIATIONS: tuple[Deviation, ...] = ("wrong_line", "generic", "garbled")
DEFAULT_TEMPERATURE = 1.0
MAX_CHOICES = 8
_STOPWORDS = frozenset(
    "a an the i i'm im me my mine you your we our it its is are was were be been am do does "
    "did to of in on at for with and or but so if then that this these those there here what "
    "which who how when why not no yes just very really can could would should will shall "
    "have has had from by about as into out up down over some any all too also".split()
)
_WORDS = re.compile(r"[A-Za-z][A-Za-z'-]*")


class Decision(NamedTuple):
    """Why the model says what it says.

    Attributes:
        reply: the reply text.
        source: which kind of line answered (``noise`` for a sim-noisy deviation).
        line: the SOP line number that answered, when one did.
        similarity: the cosine behind a semantic or example answer.
        deviation: the kind of sim-noisy deviation, when one happened.
    """

    reply: str
    source: DecisionSource
    line: int | None = None
    similarity: float | None = None
    deviation: Deviation | None = None


def generic_reply(user_input: str) -> str:
    """The reply when no SOP line applies: an acknowledgement quoting up to 3 content words.

    Example:
        >>> generic_reply("I had an espresso this morning!")
        'Thanks for your message about "espresso morning". How can I help?'
        >>> generic_reply("")
        'Thanks for your message. How can I help?'
    """
    words: list[str] = []
    for word in _WORDS.findall(user_input):
        lowered = word.lower()
        if len(lowered) > 2 and lowered not in _STOPWORDS and lowered not in words:
            words.append(lowered)
        if len(words) == 3:
            break
    if not words:
        return "Thanks for your message. How can I help?"
    return f'Thanks for your message about "{" ".join(words)}". How can I help?'


def request_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical request JSON (sorted keys, compact separators)."""
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def truncate_tokens(text: str, limit: int) -> str:
    """Cut ``text`` after its first ``limit`` tokens (the simulated tokenizer's tokens).

    Example:
        >>> truncate_tokens("I like coffee, too.", 3)
        'I like coffee'
    """
    if limit <= 0:
        return ""
    for index, match in enumerate(TOKEN_PATTERN.finditer(text), start=1):
        if index == limit:
            return text[: match.end()]
    return text


def _bad_request(message: str, param: str | None, code: str = "invalid_request") -> Exception:
    return SimulatedRequestError(message, status=400, code=code, param=param)


class SimulatedChatModel:
    """The deterministic simulated chat model behind every simulated backend.

    Thread-safe. The embedder loads on the first semantic rule or example a tier reads; SOPs
    that use only literal rules never load it.

    Args:
        embedder: the sentence embedder; default: the process-wide MiniLM embedder.
    """

    def __init__(self, embedder: Embedder | None = None) -> None:
        self._embedder = embedder
        self._matrices: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def embedder(self) -> Embedder:
        """The embedder (the process-wide default unless one was given)."""
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    def _matrix(self, texts: tuple[str, ...]) -> np.ndarray:
        matrix = self._matrices.get(texts)
        if matrix is None:
            if len(self._matrices) > 4096:
                self._matrices.clear()
            matrix = self.embedder.encode(list(texts))
            self._matrices[texts] = matrix
        return matrix

    def similarity(self, first: str, second: str) -> float:
        """Cosine similarity of two texts, rounded to 4 decimals."""
        vectors = self._matrix((first, second))
        return round(float(vectors[0] @ vectors[1]), 4)

    def _best_cosine(self, vector: np.ndarray, texts: tuple[str, ...]) -> tuple[int, float]:
        scores = self._matrix(texts) @ vector
        best = int(np.argmax(scores))
        return best, round(float(scores[best]), 4)

    def decide(
        self,
        tier: TierSpec,
        system_prompt: str,
        user_input: str,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        rng: random.Random | None = None,
        demos: Sequence[tuple[str, str]] = (),
    ) -> Decision:
        """Return the reply the tier gives to ``user_input`` under ``system_prompt``.

        Args:
            tier: the model tier.
            system_prompt: the SOP text.
            user_input: the last user message.
            temperature: the request temperature (only sim-noisy uses it).
            rng: the noise RNG; required for deviations, unused by noiseless tiers.
            demos: earlier (user, assistant) turns, read as in-context examples.
        """
        sop = parse_sop(system_prompt).first(tier.max_statements)
        decision = self._follow(tier, sop, user_input, demo_examples(demos))
        if rng is not None and tier.noisy:
            if rng.random() < tier.noise_probability(temperature):
                return self._deviate(decision, sop, user_input, rng)
        return decision

    def _follow(
        self, tier: TierSpec, sop: Sop, user_input: str, demos: tuple[Statement, ...] = ()
    ) -> Decision:
        if tier.weighs_evidence:
            return self._weigh(tier, sop, user_input, demos)
        vector: np.ndarray | None = None
        for rule in sop.statements:
            if rule.kind == "mentions":
                if rule.matches(user_input):
                    return Decision(rule.reply, "rule", rule.line)
            elif rule.kind == "about" and not tier.literal_only:
                if vector is None:
                    vector = self._matrix((user_input,))[0]
                _, score = self._best_cosine(vector, rule.facets)
                if score >= tier.semantic_threshold:
                    return Decision(rule.reply, "rule", rule.line, score)
        examples = () if tier.literal_only else (*sop.examples, *demos)
        if examples:
            if vector is None:
                vector = self._matrix((user_input,))[0]
            best, score = self._best_cosine(vector, tuple(e.example_input for e in examples))
            if score >= tier.example_threshold:
                return Decision(examples[best].reply, "example", examples[best].line, score)
        fallback = sop.fallback
        if fallback is not None:
            return Decision(fallback.reply, "else", fallback.line)
        options = () if tier.literal_only or not tier.reply_list_answers else sop.options
        if options:
            if vector is None:
                vector = self._matrix((user_input,))[0]
            best, score = self._best_cosine(vector, tuple(o.reply for o in options))
            return Decision(options[best].reply, "option", options[best].line, score)
        return Decision(generic_reply(user_input), "generic")

    def _weigh(
        self, tier: TierSpec, sop: Sop, user_input: str, demos: tuple[Statement, ...]
    ) -> Decision:
        """The reply with the strongest evidence among every rule, example and demonstration.

        A literal match is certain evidence (the first one answers); an ``about`` rule's
        evidence is its best facet cosine, an example's its input's cosine, each counted only
        from its threshold on. Every statement is read, not only the first match: the reply of
        the single strongest one answers, or with ``sums_evidence`` (``sim-large``) the reply
        whose statements' margins above threshold add up to the most, so rules and
        demonstrations of one reply reinforce each other. Examples and demonstrations of a
        reply shown fewer than ``demos_to_copy`` times are not read. Nothing above threshold:
        the ``else``, then the closest listed reply (unless ``reply_list_answers`` is off),
        then a generic reply.
        """
        for statement in sop.statements:
            if statement.kind == "mentions" and statement.matches(user_input):
                return Decision(statement.reply, "rule", statement.line)
        graded = [s for s in (*sop.statements, *demos) if s.kind in ("about", "example")]
        if tier.demos_to_copy > 1:
            times_shown = Counter(s.reply for s in graded if s.kind == "example")
            graded = [
                s for s in graded if s.kind == "about" or times_shown[s.reply] >= tier.demos_to_copy
            ]
        if not graded and sop.fallback is not None:
            return Decision(sop.fallback.reply, "else", sop.fallback.line)
        vector = self._matrix((user_input,))[0]
        best: Decision | None = None
        strongest: dict[str, Decision] = {}
        support: dict[str, float] = {}
        source: DecisionSource
        for statement in graded:
            if statement.kind == "about":
                _, score = self._best_cosine(vector, statement.facets)
                source, threshold = "rule", tier.semantic_threshold
            else:
                _, score = self._best_cosine(vector, (statement.example_input,))
                source, threshold = "example", tier.example_threshold
            if score < threshold:
                continue
            decision = Decision(statement.reply, source, statement.line, score)
            if best is None or score > (best.similarity or 0.0):
                best = decision
            reply = statement.reply
            support[reply] = support.get(reply, 0.0) + score - threshold
            if reply not in strongest or score > (strongest[reply].similarity or 0.0):
                strongest[reply] = decision
        if best is not None:
            if tier.sums_evidence:
                return strongest[max(support, key=support.__getitem__)]
            return best
        if sop.fallback is not None:
            return Decision(sop.fallback.reply, "else", sop.fallback.line)
        shown = sop.options if tier.reply_list_answers else ()
        if shown:
            index, score = self._best_cosine(vector, tuple(o.reply for o in shown))
            return Decision(shown[index].reply, "option", shown[index].line, score)
        return Decision(generic_reply(user_input), "generic")

    def _deviate(
        self, decision: Decision, sop: Sop, user_input: str, rng: random.Random
    ) -> Decision:
        kind = DEVIATIONS[rng.randrange(len(DEVIATIONS))]
        if kind == "wrong_line":
            others = sorted({s.reply for s in sop.statements} - {decision.reply})
            if others:
                return Decision(others[rng.randrange(len(others))], "noise", deviation=kind)
            kind = "generic"
        if kind == "generic":
            generic = generic_reply(user_input)
            if generic != decision.reply:
                return Decision(generic, "noise", deviation="generic")
        words = decision.reply.split()
        if len(words) > 1 and rng.random() < 0.5:
            garbled = " ".join(words[: max(1, len(words) // 2)]) + "..."
        else:
            garbled = " ".join(rng.sample(words, len(words)) if len(words) > 2 else words[::-1])
            garbled = garbled if garbled != decision.reply else decision.reply[::-1]
        return Decision(garbled, "noise", deviation="garbled")

    def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one chat-completion request body with an OpenAI response body.

        Raises:
            SimulatedRequestError: an unknown model (404) or a malformed or unsupported
                request (400); the message says what was expected.
        """
        if not isinstance(body, Mapping):
            raise _bad_request("Expected a JSON object as the request body.", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad_request("Expected 'model' to name a simulated tier.", "model")
        tier = get_tier(model)
        messages = _messages(body.get("messages"))
        if body.get("stream"):
            raise _bad_request(
                "The simulated model does not stream; send stream=false.",
                "stream",
                code="stream_unsupported",
            )
        n = _int_param(body.get("n"), "n", 1, MAX_CHOICES)
        limit_value = body.get("max_completion_tokens") or body.get("max_tokens")
        limit = None if limit_value is None else _int_param(limit_value, "max_tokens", 1, 1 << 30)
        temperature = body.get("temperature")
        if temperature is None:
            temperature = DEFAULT_TEMPERATURE
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise _bad_request(
                f"Expected temperature in [0, 2], got {temperature!r}.", "temperature"
            )
        digest = request_digest(body)
        prompt_tokens = count_message_tokens(messages) + _schema_tokens(body)
        task = classify.classification_task(body)
        choices: list[dict[str, Any]] = []
        if task is not None:
            text = "\n".join(
                content_text(m.get("content")) for m in messages if m.get("role") != "assistant"
            )
            verdict = classify.judge(text, task.rails, self.similarity)
            message, finish = classify.answer_message(task, verdict, f"call_{digest[:24]}")
            payload = message["content"] or message["tool_calls"][0]["function"]["arguments"]
            completion_tokens = count_tokens(payload)
            choices = [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                for i in range(n)
            ]
            completion_tokens *= n
        else:
            system_prompt = "\n".join(
                content_text(m.get("content"))
                for m in messages
                if m.get("role") in ("system", "developer")
            )
            user_input, demos = conversation_turns(messages)
            rng = random.Random(int(digest[:16], 16)) if tier.noisy else None
            completion_tokens = 0
            for index in range(n):
                reply = self.decide(
                    tier,
                    system_prompt,
                    user_input,
                    temperature=float(temperature),
                    rng=rng,
                    demos=demos,
                ).reply
                finish = "stop"
                if limit is not None and count_tokens(reply) > limit:
                    reply, finish = truncate_tokens(reply, limit), "length"
                completion_tokens += count_tokens(reply)
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                )
        return {
            "id": f"chatcmpl-sim-{digest[:24]}",
            "object": "chat.completion",
            "created": 0,
            "model": tier.name,
            "system_fingerprint": f"{tier.name}-v1",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def conversation_turns(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Split a conversation into the live input and the demonstrations before it.

    Returns:
        The last user message, and every earlier user turn directly answered by an
        assistant turn, as ``(user, assistant)`` pairs in order.

    Example:
        >>> conversation_turns([
        ...     {"role": "system", "content": "s"},
        ...     {"role": "user", "content": "a"}, {"role": "assistant", "content": "A"},
        ...     {"role": "user", "content": "b"},
        ... ])
        ('b', (('a', 'A'),))
    """
    turns = [m for m in messages if m.get("role") not in ("system", "developer")]
    last_user = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=None)
    if last_user is None:
        return "", ()
    pairs: list[tuple[str, str]] = []
    for first, second in itertools.pairwise(turns[:last_user]):
        if first.get("role") == "user" and second.get("role") == "assistant":
            pairs.append((content_text(first.get("content")), content_text(second.get("content"))))
    return content_text(turns[last_user].get("content")), tuple(pairs)


def demo_examples(demos: Sequence[tuple[str, str]]) -> tuple[Statement, ...]:
    """Return demonstrations as ``example`` statements (line 0: they are not SOP lines)."""
    return tuple(
        Statement(kind="example", reply=reply, line=0, text="demo", example_input=user)
        for user, reply in demos
        if user.strip() and reply.strip()
    )


def _messages(value: Any) -> Sequence[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad_request("Expected 'messages' to be a non-empty list of messages.", "messages")
    for index, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise _bad_request(
                f"Expected messages[{index}] to be an object with a 'role', got {message!r:.80}.",
                "messages",
            )
    return value


def _int_param(value: Any, name: str, low: int, high: int) -> int:
    if value is None:
        return low
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad_request(
            f"Expected {name} to be an integer in [{low}, {high}], got {value!r}.", name
        )
    return value


def _schema_tokens(body: Mapping[str, Any]) -> int:
    extra = [body.get(key) for key in ("tools", "response_format") if body.get(key)]
    return count_tokens(json.dumps(extra, sort_keys=True)) if extra else 0
