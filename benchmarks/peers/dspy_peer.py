"""DSPy 3.4 optimizers (BootstrapFewShot, MIPROv2 light) on our task, counted through the proxy.

The program is one ``dspy.Predict`` over the signature ``message -> reply`` whose instructions
are our seed system prompt. DSPy formats calls with its own adapter (``ChatAdapter``: field
markers such as ``[[ ## message ## ]]``, falling back to ``JSONAdapter`` with a second call
when a reply cannot be parsed) and parses the reply field out of the answer; the metric is our
exact match on that field. Train set: our train split (in an order shuffled by the seed, which
decides what BootstrapFewShot bootstraps); MIPROv2's validation set: our test split.

The compiled program is scored on holdout three ways:

* ``native``: DSPy's ``Evaluate`` on the compiled program (its adapter, parser and fallback);
  the row's headline score, because that is the program DSPy produces;
* ``replay``: the messages DSPy's ``ChatAdapter`` formats for the program (system message,
  demos as user/assistant turns, the input in DSPy's markers), sent through our replay path,
  the reply field parsed by the same adapter and scored by our exact match;
* ``plain``: the program's instructions as the system prompt and its demos as plain
  user/assistant turns (our ``Action``), a prompt any chat call can use.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Literal

from peers.common import (
    PLACEHOLDER_KEY,
    RowResult,
    ScoredPrompt,
    Scorer,
    Task,
    exact,
)
from peers.counting_proxy import CountingProxy
from peers.targets import Target
from selfimprove_rl.checkpoint import Action, Demo, Sample

DspyOptimizer = Literal["bootstrap", "mipro_light"]
PROMPT_MODEL_TEMPERATURE = 0.7


def _import_dspy() -> Any:
    # LiteLLM and DSPy fetch a model price list from the internet unless told to use theirs.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    return dspy


def _lm(dspy: Any, base_url: str, model: str, **params: Any) -> Any:
    return dspy.LM(
        f"openai/{model}",
        api_base=base_url,
        api_key=PLACEHOLDER_KEY,
        cache=False,
        num_retries=2,
        **params,
    )


def _metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return exact(str(getattr(prediction, "reply", "") or ""), str(example.reply))


def _examples(dspy: Any, samples: list[Sample]) -> list[Any]:
    return [
        dspy.Example(message=s.input_text, reply=s.reference or "").with_inputs("message")
        for s in samples
    ]


def _signature(dspy: Any, instructions: str) -> Any:
    return dspy.Signature("message -> reply", instructions=instructions)


def _native(
    dspy: Any, program: Any, examples: list[Any], samples: list[Sample], lm: Any, label: str
) -> ScoredPrompt:
    evaluate = dspy.Evaluate(
        devset=examples,
        metric=_metric,
        num_threads=1,
        display_progress=False,
        max_errors=len(examples) + 1,
        failure_score=0.0,
    )
    with dspy.context(lm=lm):
        outcome = evaluate(program)
    per_sample = [float(bool(score)) for _, _, score in outcome.results]
    outputs = [str(getattr(prediction, "reply", "") or "") for _, prediction, _ in outcome.results]
    return ScoredPrompt(
        label=label,
        how="native",
        score=sum(per_sample) / len(per_sample),
        n=len(per_sample),
        sample_ids=[s.sample_id for s in samples],
        per_sample=per_sample,
        outputs=outputs,
    )


def _demo_pairs(messages: list[dict[str, Any]]) -> tuple[Demo, ...]:
    pairs = []
    for user, assistant in zip(messages[0::2], messages[1::2], strict=True):
        if user["role"] != "user" or assistant["role"] != "assistant":
            raise ValueError(f"Expects user/assistant demo turns, got {user['role']}, "
                             f"{assistant['role']}")  # fmt: skip
        pairs.append(Demo(input=str(user["content"]), output=str(assistant["content"])))
    return tuple(pairs)


def _replay_dspy_messages(
    dspy: Any, predictor: Any, base: Action, samples: list[Sample], scorer: Scorer, label: str
) -> ScoredPrompt:
    """Send DSPy's own formatted messages through our replay, parse with DSPy's adapter."""
    adapter = dspy.ChatAdapter()
    demos = list(predictor.demos)
    formatted = [
        adapter.format(predictor.signature, demos, {"message": s.input_text}) for s in samples
    ]
    first = formatted[0]
    if first[0]["role"] != "system":
        raise ValueError(f"Expects DSPy's messages to start with a system turn, got {first[0]}")
    action = base.model_copy(
        update={"system_prompt": str(first[0]["content"]), "demos": _demo_pairs(first[1:-1])}
    )
    wrapped = [
        sample.model_copy(update={"chat_history": [dict(messages[-1])]})
        for sample, messages in zip(samples, formatted, strict=True)
    ]

    def parse(text: str) -> str:
        try:
            return str(adapter.parse(predictor.signature, text).get("reply", ""))
        except Exception:  # DSPy raises AdapterParseError; an unparseable reply is wrong
            return text

    return scorer.score(label, action, wrapped, parse=parse, example_messages=first)


def _plain_action(predictor: Any, base: Action) -> Action:
    demos = tuple(
        Demo(input=str(demo["message"]), output=str(demo["reply"])) for demo in predictor.demos
    )
    return base.model_copy(
        update={"system_prompt": str(predictor.signature.instructions), "demos": demos}
    )


def run_dspy(
    optimizer: DspyOptimizer,
    task: Task,
    target: Target,
    proxy: CountingProxy,
    scorer: Scorer,
    *,
    seed: int,
    budget_calls: int,
    work_dir: Path,
) -> RowResult:
    """Compile the one-predictor program with a DSPy optimizer and score it on holdout.

    Raises:
        ValueError: MIPROv2 on a target with no prompt model (the simulated model).
    """
    dspy = _import_dspy()
    action = task.seed_action
    params: dict[str, Any] = action.invocation_parameters()
    task_lm = _lm(dspy, proxy.base_url("target"), target.model, **params)
    trainset = _examples(dspy, task.splits.train)
    random.Random(seed).shuffle(trainset)
    valset = _examples(dspy, task.splits.test)
    student = dspy.Predict(_signature(dspy, action.system_prompt))
    details: dict[str, Any] = {}

    before = proxy.counts()
    started = time.perf_counter()
    with dspy.context(lm=task_lm):
        if optimizer == "bootstrap":
            teleprompter = dspy.BootstrapFewShot(metric=_metric)
            compiled = teleprompter.compile(student, trainset=trainset)
            details["peer"] = (
                "dspy 3.4 BootstrapFewShot (defaults: 4 bootstrapped, 16 labeled demos, 1 round)"
            )
        elif optimizer == "mipro_light":
            if target.helper_model is None:
                raise ValueError("MIPROv2 needs a prompt model; the simulated target has none.")
            prompt_lm = _lm(
                dspy,
                proxy.base_url("reflection"),
                target.helper_model,
                temperature=PROMPT_MODEL_TEMPERATURE,
            )
            teleprompter = dspy.MIPROv2(
                metric=_metric,
                prompt_model=prompt_lm,
                task_model=task_lm,
                auto="light",
                num_threads=1,
                seed=seed,
                verbose=False,
                track_stats=False,
                log_dir=str(work_dir / "mipro"),
            )
            compiled = teleprompter.compile(student, trainset=trainset, valset=valset)
            details["peer"] = "dspy 3.4 MIPROv2 auto='light' (6 candidates, Optuna TPE)"
        else:
            raise ValueError(f"Expects a DSPy optimizer 'bootstrap' or 'mipro_light', got "
                             f"{optimizer!r}")  # fmt: skip
    wall = time.perf_counter() - started
    spent = proxy.counts() - before

    predictor = compiled.predictors()[0]
    holdout = list(task.splits.holdout)
    eval_before = proxy.counts()
    native_lm = _lm(dspy, proxy.base_url("peer_eval"), target.model, **params)
    native = _native(
        dspy,
        compiled,
        _examples(dspy, holdout),
        holdout,
        native_lm,
        f"dspy {optimizer}: compiled program (DSPy's adapter)",
    )
    replayed = _replay_dspy_messages(
        dspy, predictor, action, holdout, scorer, f"dspy {optimizer}: DSPy's messages, replayed"
    )
    plain = scorer.score(
        f"dspy {optimizer}: instructions + demos as plain turns",
        _plain_action(predictor, action),
        holdout,
    )
    eval_spent = proxy.counts() - eval_before
    native = native.model_copy(update={"action": replayed.action})
    details.update(
        {
            "demos": len(predictor.demos),
            "bootstrapped_demos": sum(1 for d in predictor.demos if d.get("augmented")),
            "instructions": str(predictor.signature.instructions),
        }
    )
    return RowResult(
        target=target.name,
        model=target.model,
        dataset=task.dataset,
        row=f"dspy_{optimizer}",
        kind="peer",
        seed=seed,
        budget_calls=None,  # DSPy's optimizers take no call budget; their calls are counted
        holdout=native.score,
        holdout_source="native",
        holdout_replay=replayed.score,
        holdout_native=native.score,
        holdout_plain=plain.score,
        target_calls=spent.calls("target"),
        other_calls=spent.calls("reflection"),
        cached_calls=spent.calls(field="cached"),
        eval_calls=eval_spent.calls(),
        wall_s=wall,
        prompts=[native, replayed, plain],
        details=details,
    )
