"""GEPA 0.1.4 with its default adapter, on our task, counted through the proxy.

The default adapter sends ``[system: candidate["system_prompt"], user: input]`` to the task
LM and scores the reply with the evaluator we give it (exact match, with feedback naming
the expected reply, in the spirit of GEPA's own ``ContainsAnswerEvaluator``). Its train set
is our train split, its validation set our test split (the split our gate uses); the holdout
split stays unseen. The budget is ``max_metric_calls`` = our call budget; the proxy counts
what GEPA actually sent. The reflection LM is the same local model, counted apart.

Because the default adapter's messages are exactly what our replay sends for an action with
that system prompt, GEPA's best candidate replays through our path unchanged; its own
adapter is also run on holdout (``native``) to show the two agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from peers.common import (
    PLACEHOLDER_KEY,
    CurvePoint,
    RowResult,
    ScoredPrompt,
    Scorer,
    Task,
    exact,
)
from peers.counting_proxy import CountingProxy
from peers.targets import Target

REFLECTION_TEMPERATURE = 0.7
"""As in GEPA's own example of a reflection LM (``LM("openai/gpt-4.1", temperature=0.7)``)."""
REFLECTION_MAX_TOKENS = 1024


class _FileLogger:
    """GEPA's ``LoggerProtocol``: its progress lines go to a file, not the console."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def log(self, message: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(f"{message}\n")


class _ChatModel:
    """A ``messages -> text`` callable on one proxy role (GEPA's task and reflection LMs)."""

    def __init__(self, base_url: str, model: str, *, timeout_s: float, **params: Any) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=base_url, api_key=PLACEHOLDER_KEY, timeout=timeout_s, max_retries=2
        )
        self.model = model
        self.params = params
        self.failures = 0

    def __call__(self, messages: Any) -> str:
        import openai

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=list(messages), **self.params
            )
        except openai.APIError:
            # A failed call is a failed sample (scored 0), as in our replay; it stays counted.
            self.failures += 1
            return ""
        return response.choices[0].message.content or ""


def _items(samples: list[Any]) -> list[dict[str, Any]]:
    return [
        {"input": sample.input_text, "answer": sample.reference or "", "additional_context": {}}
        for sample in samples
    ]


def _evaluator() -> Any:
    from gepa.adapters.default_adapter.default_adapter import EvaluationResult

    def evaluate(data: dict[str, Any], response: str) -> Any:
        if exact(response, data["answer"]):
            return EvaluationResult(
                score=1.0, feedback="The reply is correct: it matches the expected reply."
            )
        return EvaluationResult(
            score=0.0,
            feedback=(
                f"The reply is incorrect. The expected reply, word for word, is: "
                f"'{data['answer']}'. The reply must be exactly that text and nothing else."
            ),
        )

    return evaluate


def run_gepa(
    task: Task,
    target: Target,
    proxy: CountingProxy,
    scorer: Scorer,
    *,
    seed: int,
    budget_calls: int,
    work_dir: Path,
) -> RowResult:
    """Run GEPA once and score its best candidate on holdout (ours and its own adapter).

    Raises:
        ValueError: the target has no model to reflect with (the simulated model).
    """
    import gepa
    from gepa.adapters.default_adapter.default_adapter import DefaultAdapter

    if target.helper_model is None:
        raise ValueError("GEPA needs a reflection LM; the simulated target has none.")
    action = task.seed_action
    task_lm = _ChatModel(
        proxy.base_url("target"),
        target.model,
        timeout_s=target.timeout_s,
        **action.invocation_parameters(),
    )
    reflection_lm = _ChatModel(
        proxy.base_url("reflection"),
        target.helper_model,
        timeout_s=target.timeout_s,
        temperature=REFLECTION_TEMPERATURE,
        max_tokens=REFLECTION_MAX_TOKENS,
    )
    before = proxy.counts()
    started = time.perf_counter()
    result = gepa.optimize(
        seed_candidate={"system_prompt": action.system_prompt},
        trainset=_items(task.splits.train),
        valset=_items(task.splits.test),
        task_lm=task_lm,
        evaluator=_evaluator(),
        reflection_lm=reflection_lm,
        max_metric_calls=budget_calls,
        seed=seed,
        logger=_FileLogger(work_dir / "gepa_log.txt"),
        display_progress_bar=False,
        raise_on_exception=True,
    )
    wall = time.perf_counter() - started
    spent = proxy.counts() - before

    best = result.best_candidate
    best_prompt = best["system_prompt"] if isinstance(best, dict) else str(best)
    best_action = action.model_copy(update={"system_prompt": best_prompt})
    eval_before = proxy.counts()
    replayed = scorer.score("gepa: best candidate", best_action, task.splits.holdout)
    native_lm = _ChatModel(
        proxy.base_url("peer_eval"),
        target.model,
        timeout_s=target.timeout_s,
        **action.invocation_parameters(),
    )
    adapter = DefaultAdapter(model=native_lm, evaluator=_evaluator())
    holdout_items = _items(task.splits.holdout)
    batch = adapter.evaluate(holdout_items, {"system_prompt": best_prompt})
    native_scores = [float(s) for s in batch.scores]
    native = ScoredPrompt(
        label="gepa: best candidate (GEPA's adapter)",
        how="native",
        score=sum(native_scores) / len(native_scores),
        n=len(native_scores),
        failed=native_lm.failures,
        action=best_action.model_dump(mode="json"),
        sample_ids=[s.sample_id for s in task.splits.holdout],
        per_sample=native_scores,
        outputs=[o["full_assistant_response"] for o in batch.outputs],
    )
    eval_spent = proxy.counts() - eval_before

    curve = [
        CurvePoint(calls=int(calls), test=float(score), label=f"candidate {index}")
        for index, (calls, score) in enumerate(
            zip(result.discovery_eval_counts, result.val_aggregate_scores, strict=True)
        )
    ]
    return RowResult(
        target=target.name,
        model=target.model,
        dataset=task.dataset,
        row="gepa",
        kind="peer",
        seed=seed,
        budget_calls=budget_calls,
        holdout=replayed.score,
        holdout_source="replay",
        holdout_replay=replayed.score,
        holdout_native=native.score,
        target_calls=spent.calls("target"),
        other_calls=spent.calls("reflection"),
        cached_calls=spent.calls(field="cached"),
        eval_calls=eval_spent.calls(),
        wall_s=wall,
        curve=curve,
        prompts=[replayed, native],
        details={
            "peer": "gepa 0.1.4, default adapter, Pareto candidate selection",
            "metric_calls": result.total_metric_calls,
            "candidates": len(result.candidates),
            "best_idx": result.best_idx,
            "best_val_score": result.val_aggregate_scores[result.best_idx],
            "best_found_at_metric_calls": result.discovery_eval_counts[result.best_idx],
            "task_lm_failures": task_lm.failures,
            "reflection_failures": reflection_lm.failures,
            "reflection": {
                "model": target.helper_model,
                "temperature": REFLECTION_TEMPERATURE,
                "max_tokens": REFLECTION_MAX_TOKENS,
            },
            "candidate_prompts": [
                {"val": float(score), "system_prompt": cand.get("system_prompt", "")}
                for cand, score in zip(result.candidates, result.val_aggregate_scores, strict=True)
            ],
        },
    )
