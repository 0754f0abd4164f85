"""Would the logged judge approve a new output? The Phoenix-evals classifier, re-run offline.

:class:`PhoenixClassifier` rebuilds the classification eval a team ran in production from its
:class:`~selfimprove_rl.checkpoint.EvalConstants` (template, rails with their scores, judge
model, judge parameters) as a ``phoenix.evals`` 3.x ``ClassificationEvaluator`` over
``LLM(provider="openai", ...)``, and runs it on new outputs through the real Phoenix evals
code path (the judge is any OpenAI-compatible endpoint, the simulated model included).

Template variables are filled, for each sample, from:

1. the new output, for ``constants.output_variable``;
2. the values recorded with the logged eval, ``Sample.eval_variables[constants.name]``;
3. fallbacks: ``input`` -> the last user message, ``reference`` -> ``Sample.reference``.

A variable none of these provides fails that sample (score 0, an error naming it, counted).
Labels map to scores through the rails (:func:`choice_scores`); an answer outside the rails
scores 0 with an error. Verdicts are cached by (eval, judge model, template, filled
variables), so the judge is never asked the same question twice; ``calls`` counts the
requests actually sent to the judge. Judge requests run under
``openinference.instrumentation.suppress_tracing()``, so an instrumented process does not
trace the judge's own calls into the project being optimized. Phoenix is imported when a
classifier is built, never at module import.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential_jitter
from tenacity.retry import retry_if_exception

from selfimprove_rl.checkpoint import EvalConstants
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals.base import EvalItem, EvalResult
from selfimprove_rl.replay import canonical_json, is_retryable


def choice_scores(
    choices: Mapping[str, float], direction: Literal["maximize", "minimize"] = "maximize"
) -> dict[str, float]:
    """Map each rail to a score in [0, 1], higher is better.

    Scores already in [0, 1] are kept; any other range is min-max scaled. With
    ``direction="minimize"`` (the rail scores count something bad) the scale is flipped.

    Example:
        >>> choice_scores({"excellent": 5, "fair": 3, "poor": 1})
        {'excellent': 1.0, 'fair': 0.5, 'poor': 0.0}
        >>> choice_scores({"hallucinated": 1.0, "factual": 0.0}, direction="minimize")
        {'hallucinated': 0.0, 'factual': 1.0}
    """
    if not choices:
        return {}
    low, high = min(choices.values()), max(choices.values())
    if 0.0 <= low and high <= 1.0:
        scaled = {label: float(score) for label, score in choices.items()}
    elif high == low:
        scaled = {label: 1.0 for label in choices}
    else:
        scaled = {label: (score - low) / (high - low) for label, score in choices.items()}
    if direction == "minimize":
        scaled = {label: 1.0 - score for label, score in scaled.items()}
    return scaled


class _Unfillable(Exception):
    """A template variable has no value for a sample."""


class PhoenixClassifier:
    """A Phoenix-evals classification eval, rebuilt from its constants and run on new outputs.

    Args:
        constants: the eval's constants; ``kind`` must be ``"classifier"``.
        llm_kwargs: keyword arguments for ``phoenix.evals.LLM`` besides provider and model,
            reaching the judge's OpenAI-compatible endpoint (``base_url``, ``api_key``,
            ``async_client_kwargs={"http_client": ...}``; e.g. ``Backend.phoenix_llm_kwargs()``).
        model: the judge model; default ``constants.eval_model``.
        weight: the eval's share of the aggregate score; default ``constants.weight``.
        concurrency: most judge requests in flight at once.
        max_retries: retries of a judge request after a retryable fault (429, 5xx, timeouts).
        timeout_s: per-request timeout.

    Attributes:
        calls: judge requests sent (retries included), over every call of :meth:`evaluate`
            (when the endpoint rejects a structured-output request with HTTP 400, Phoenix
            re-sends it once as a forced tool call; that pair counts as one).
        cache_hits: verdicts served from the cache.
        errors: samples that could not be scored (missing variable, bad label, judge failure).

    Raises:
        EvaluatorError: the constants are not a classifier, name no judge model, have a
            template that does not use the output variable, or the judge client cannot be built.
    """

    def __init__(
        self,
        constants: EvalConstants,
        *,
        llm_kwargs: dict[str, Any],
        model: str | None = None,
        weight: float | None = None,
        concurrency: int = 8,
        max_retries: int = 3,
        timeout_s: float = 60.0,
    ) -> None:
        if constants.kind != "classifier":
            raise EvaluatorError(
                f"Expects classifier eval constants for PhoenixClassifier, got kind "
                f"{constants.kind!r} for eval {constants.name!r}; build it with build_evaluators."
            )
        judge = model or constants.eval_model
        if not judge:
            raise EvaluatorError(
                f"Eval {constants.name!r} names no judge model (eval_model is empty); "
                "pass model=... to PhoenixClassifier or set it in the checkpoint."
            )
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise EvaluatorError(
                "Expects concurrency >= 1, max_retries >= 0 and timeout_s > 0, got "
                f"{concurrency}, {max_retries}, {timeout_s}"
            )
        self.constants = constants
        self.name = constants.name
        self.weight = float(constants.weight if weight is None else weight)
        self.model = judge
        self.calls = 0
        self.cache_hits = 0
        self.errors = 0
        self._concurrency = concurrency
        self._max_retries = max_retries
        self._timeout_s = timeout_s
        self._backoff_s = 0.5
        self._scores = choice_scores(constants.choices, constants.direction)
        self._verdicts: dict[str, EvalResult] = {}
        secret = llm_kwargs.get("api_key")
        self._secret = secret if isinstance(secret, str) and len(secret) >= 8 else None
        self._classifier = self._build(constants, judge, llm_kwargs)
        self.variables: list[str] = sorted(self._classifier.prompt_template.variables)
        if constants.output_variable not in self.variables:
            raise EvaluatorError(
                f"The template of eval {self.name!r} does not use its output variable "
                f"{constants.output_variable!r} (it uses {self.variables}), so a new output would "
                "never reach the judge; fix output_variable or the template."
            )
        template_text = canonical_json(constants.prompt_template())
        self._key_prefix = canonical_json([self.name, judge, template_text])

    @staticmethod
    def _build(constants: EvalConstants, judge: str, llm_kwargs: dict[str, Any]) -> Any:
        from phoenix.evals import LLM, ClassificationEvaluator

        try:
            llm = LLM(provider="openai", model=judge, **llm_kwargs)
        except (TypeError, ValueError) as exc:
            raise EvaluatorError(
                f"Cannot build the judge client for eval {constants.name!r} (model {judge!r}): "
                f"{type(exc).__name__}. Check the judge's llm_kwargs (base_url, api_key, "
                "async_client_kwargs)."
            ) from exc
        choices: Any = dict(constants.choices)
        if constants.label_descriptions:
            choices = {
                label: (score, constants.label_descriptions.get(label, label))
                for label, score in constants.choices.items()
            }
        return ClassificationEvaluator(
            name=constants.name,
            llm=llm,
            prompt_template=constants.prompt_template(),
            choices=choices,
            include_explanation=constants.include_explanation,
            direction=constants.direction,
            **constants.eval_parameters,
        )

    def fill(self, item: EvalItem) -> dict[str, str]:
        """Return the template variables for one item (see the module docstring for the order).

        Raises:
            EvaluatorError: never; a missing variable raises an internal error that
                :meth:`evaluate` records as the sample's error.
        """
        recorded = item.sample.eval_variables.get(self.name, {})
        values: dict[str, str] = {}
        missing: list[str] = []
        for variable in self.variables:
            if variable == self.constants.output_variable:
                values[variable] = item.output
            elif variable in recorded:
                values[variable] = recorded[variable]
            elif variable == "input" and item.sample.input_text:
                values[variable] = item.sample.input_text
            elif variable == "reference" and item.sample.reference is not None:
                values[variable] = item.sample.reference
            else:
                missing.append(variable)
        if missing:
            raise _Unfillable(
                f"eval {self.name!r} needs template variable(s) {missing} for sample "
                f"{item.sample.sample_id!r}, but the sample's eval_variables[{self.name!r}] holds "
                f"{sorted(recorded)} (fallbacks: input -> last user message, reference -> "
                "Sample.reference); record the variables with the eval or change the template"
            )
        return values

    def pending_calls(self, items: Sequence[EvalItem]) -> int:
        """Return how many judge requests judging ``items`` would send (retries aside).

        A call budget reserves this much before scoring; cached verdicts and items that
        cannot be filled cost nothing.
        """
        keys: set[str] = set()
        for item in items:
            try:
                variables = self.fill(item)
            except _Unfillable:
                continue
            key = self._key(variables)
            if key not in self._verdicts:
                keys.add(key)
        return len(keys)

    async def evaluate(self, items: Sequence[EvalItem]) -> list[EvalResult]:
        """Judge every item's output; one result per item, in order (see module invariants).

        Raises:
            EvaluatorError: every judge request failed with the same non-retryable error
                (a rejected key, an unknown judge model).
        """
        results: list[EvalResult | None] = [None] * len(items)
        questions: dict[str, tuple[dict[str, str], list[int]]] = {}
        for index, item in enumerate(items):
            try:
                variables = self.fill(item)
            except _Unfillable as exc:
                results[index] = self._error(item.sample.sample_id, str(exc))
                continue
            key = self._key(variables)
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self.cache_hits += 1
                results[index] = verdict.model_copy(update={"sample_id": item.sample.sample_id})
            elif key in questions:
                self.cache_hits += 1
                questions[key][1].append(index)
            else:
                questions[key] = (variables, [index])

        failures: list[BaseException] = []
        jobs = iter(questions.items())

        async def worker() -> None:
            for key, (variables, indices) in jobs:
                try:
                    verdict = await self._judge(variables)
                except Exception as exc:
                    failures.append(exc)
                    message = f"judge {self.model!r} failed: {type(exc).__name__}: {exc}"
                    for i in indices:
                        results[i] = self._error(items[i].sample.sample_id, message)
                    continue
                if verdict.error is None:
                    self._verdicts[key] = verdict
                for i in indices:
                    sample_id = items[i].sample.sample_id
                    results[i] = verdict.model_copy(update={"sample_id": sample_id})
                    if verdict.error is not None:
                        self.errors += 1

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(questions)))))
        self._raise_if_systemic(failures, len(questions))
        return [result for result in results if result is not None]

    async def _judge(self, variables: dict[str, str]) -> EvalResult:
        from openinference.instrumentation import suppress_tracing

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_retries + 1),
            wait=wait_exponential_jitter(
                multiplier=self._backoff_s, max=20.0, jitter=self._backoff_s
            ),
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.calls += 1
                with suppress_tracing():
                    async with asyncio.timeout(self._timeout_s):
                        try:
                            scores = await self._classifier.async_evaluate(variables)
                        except ValueError as exc:
                            if "invalid label" not in str(exc):
                                raise
                            return self._bad_verdict(f"judge answered outside the rails: {exc}")
        score = scores[0]
        label = score.label
        if label not in self._scores:
            rails = list(self._scores)
            return self._bad_verdict(f"judge answered {label!r}, not one of the rails {rails}")
        return EvalResult(
            name=self.name,
            sample_id="",
            score=self._scores[label],
            label=label,
            explanation=score.explanation,
        )

    def _key(self, variables: dict[str, str]) -> str:
        text = self._key_prefix + canonical_json(variables)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def _error(self, sample_id: str, message: str) -> EvalResult:
        """A failed sample: score 0 with the error, counted."""
        self.errors += 1
        return EvalResult(
            name=self.name, sample_id=sample_id, score=0.0, error=self._redact(message)
        )

    def _bad_verdict(self, message: str) -> EvalResult:
        """A verdict that cannot be scored (counted per sample when handed out, never cached)."""
        return EvalResult(name=self.name, sample_id="", score=0.0, error=self._redact(message))

    def _redact(self, message: str) -> str:
        if self._secret:
            message = message.replace(self._secret, "<redacted>")
        return " ".join(message.split())[:500]

    def _raise_if_systemic(self, failures: list[BaseException], asked: int) -> None:
        import openai

        if not failures or len(failures) != asked:
            return
        kinds = Counter(type(exc).__name__ for exc in failures)
        first = failures[0]
        if len(kinds) == 1 and isinstance(first, openai.APIStatusError) and not is_retryable(first):
            raise EvaluatorError(
                f"Every judge request of eval {self.name!r} failed with {type(first).__name__} "
                f"(HTTP {first.status_code}) for judge model {self.model!r}: check the judge's "
                "llm_kwargs (base_url, API key) and that the endpoint serves this model."
            ) from first

    def __repr__(self) -> str:
        return f"PhoenixClassifier(name={self.name!r}, model={self.model!r}, weight={self.weight})"
