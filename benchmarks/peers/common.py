"""What every row of the peers benchmark shares: the task, the scorer, the result records.

* :class:`Task`: one shipped data set loaded as a checkpoint with the exact-match eval, split
  with ``checkpoint.split(seed=0)`` (the split our env makes), and its starting action.
* :class:`Scorer`: *our* replay path (:class:`~selfimprove_rl.replay.Replayer` through the
  counting proxy's ``score`` role) and *our* metric (:class:`~selfimprove_rl.evals.ExactMatch`),
  so a peer's prompt and ours are scored by the same code.
* :class:`RowResult`: one (target, data set, row, seed) result, written as one JSON file, so
  an interrupted benchmark skips the rows it has finished.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.backend import Backend
from selfimprove_rl.checkpoint import Action, Checkpoint, Sample, Splits
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.evals.base import EvalItem
from selfimprove_rl.evals.code import ExactMatch, normalize_text
from selfimprove_rl.fileio import atomic_write_text
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.replay import ReplayConfig, Replayer

SCHEMA_VERSION = 1
NO_KEY_ENV = "SELFIMPROVE_PEERS_NO_KEY"
"""An environment variable nobody sets: backends made here send a placeholder key, never a
real one, to the local proxy."""
PLACEHOLDER_KEY = "sk-no-key-needed"

RowKind = Literal["seed", "peer", "ours"]


@dataclass(frozen=True)
class Task:
    """One data set as every row sees it."""

    dataset: str
    checkpoint: Checkpoint
    splits: Splits

    @property
    def seed_action(self) -> Action:
        """The starting action (placeholder SOP prompt, the target model, temperature 0)."""
        return self.checkpoint.action


def load_task(
    dataset: str, model: str, *, limit: int | None = None, max_tokens: int | None = None
) -> Task:
    """Load a shipped data set for ``model`` with the exact-match eval and split it (seed 0).

    Args:
        dataset: ``support_intents`` or ``coffee_sports`` (any shipped name).
        model: the target model's name, written into the starting action.
        limit: keep only the file's first ``limit`` lines (smoke runs; every row sees the same).
        max_tokens: a reply length cap sent with every target call of every row.

    Raises:
        ConfigError: ``max_tokens`` would cut a reference reply (it could change a verdict).
    """
    checkpoint = load_dataset(dataset, model=model, eval_kind="exact_match", limit=limit)
    if max_tokens is not None:
        # A reply cut at max_tokens can only match a reference shorter than the cap; with a
        # cap well above the longest reference no verdict changes, and a rambling small
        # model stops costing minutes per call.
        longest = max(len(s.reference or "") for s in checkpoint.samples)
        if max_tokens * 2 < longest:  # English runs ~4 characters a token; 2 is the safe side
            raise ConfigError(
                f"Expects --max-tokens of at least {longest // 2 + 1} for {dataset} (its longest "
                f"reference has {longest} characters), got {max_tokens}."
            )
        action = checkpoint.action.model_copy(update={"max_tokens": max_tokens})
        checkpoint = checkpoint.model_copy(update={"action": action})
    return Task(dataset, checkpoint, checkpoint.split(seed=0))


def exact(output: str, reference: str) -> bool:
    """Our exact-match verdict (``ExactMatch``'s normalization: case, punctuation, spaces)."""
    return normalize_text(output) == normalize_text(reference)


class ScoredPrompt(BaseModel):
    """One prompt scored on one split: what was sent, and what each sample scored."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="Which prompt (row and variant).")
    how: Literal["replay", "native"] = Field(
        description="replay: our Replayer + ExactMatch; native: the peer's own program and "
        "parser, with the exact-match metric."
    )
    split: str = "holdout"
    score: float
    sim: float | None = Field(
        default=None,
        description="The same prompt on the simulated model (sim-large), in process and "
        "uncounted, when the target is a real model.",
    )
    n: int
    failed: int = Field(default=0, description="Samples whose call failed (scored 0).")
    action: dict[str, Any] | None = Field(
        default=None, description="The prompt as our Action (system prompt, demos, model)."
    )
    example_messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="The messages the peer sends for the first sample (when they are not "
        "Action + the raw user message, e.g. DSPy's field markers).",
    )
    sample_ids: list[str] = Field(default_factory=list)
    per_sample: list[float] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)


class CurvePoint(BaseModel):
    """A prompt an optimizer held at some point, and what it had spent by then."""

    model_config = ConfigDict(frozen=True)

    calls: int = Field(description="Target calls the optimizer had made.")
    holdout: float | None = None
    test: float | None = None
    label: str = ""


class RowResult(BaseModel):
    """One (target, data set, row, seed) of the peers benchmark."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    target: str
    model: str
    dataset: str
    row: str
    kind: RowKind
    seed: int
    budget_calls: int | None
    holdout: float = Field(description="The row's holdout exact match (see holdout_source).")
    holdout_source: str = Field(description="replay, or native for a peer's own evaluation.")
    holdout_replay: float | None = Field(
        default=None, description="Our replay of the row's prompt as the peer sends it."
    )
    holdout_native: float | None = None
    holdout_plain: float | None = Field(
        default=None, description="Our replay of the peer's instructions + demos as plain turns."
    )
    target_calls: int = Field(description="Target-model calls the optimizer made (proxy count).")
    other_calls: int = Field(description="Reflection / prompt-model / coach calls (proxy count).")
    cached_calls: int = Field(
        default=0, description="Of target and other calls, answered from the proxy's cache."
    )
    eval_calls: int = Field(
        default=0, description="Calls outside the optimization: final reports, holdout scoring."
    )
    wall_s: float = Field(description="Seconds the optimization took (scoring excluded).")
    curve: list[CurvePoint] = Field(default_factory=list)
    prompts: list[ScoredPrompt] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class ResultStore:
    """One JSON file per (target, data set, row, seed) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, target: str, dataset: str, row: str, seed: int) -> Path:
        """Where that row's result lives."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row)
        return self.root / target / dataset / safe / f"seed{seed}.json"

    def load(self, target: str, dataset: str, row: str, seed: int) -> RowResult | None:
        """The stored result, or ``None`` when that row has not finished."""
        path = self.path(target, dataset, row, seed)
        if not path.exists():
            return None
        return RowResult.model_validate_json(path.read_text(encoding="utf-8"))

    def save(self, result: RowResult) -> Path:
        """Write a result atomically (a killed benchmark never leaves half a file)."""
        path = self.path(result.target, result.dataset, result.row, result.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, result.model_dump_json(indent=1))

    def all(self) -> list[RowResult]:
        """Every stored result."""
        return [
            RowResult.model_validate_json(path.read_text(encoding="utf-8"))
            for path in sorted(self.root.glob("*/*/*/seed*.json"))
        ]


class Scorer:
    """Scores prompts on samples with our replay path and our exact-match evaluator.

    Args:
        base_url: the OpenAI base URL to send through (the proxy's ``score`` role).
        backend_kind: ``simulated`` or ``openai`` (only names the backend; no key is sent).
        concurrency: requests in flight.
        timeout_s: per-request timeout.
        sim_model: also score every replayed prompt on this simulated tier, in process and
            uncounted (``ScoredPrompt.sim``), for the simulator-vs-real rank correlation of
            ``bench_real.py``; ``None`` skips it (a simulated target already is the simulator).
    """

    def __init__(
        self,
        base_url: str,
        backend_kind: str,
        *,
        concurrency: int,
        timeout_s: float,
        sim_model: str | None = None,
    ) -> None:
        backend = Backend.model_validate(
            {
                "kind": backend_kind,
                "base_url": base_url,
                "api_key_env": NO_KEY_ENV,
                "timeout_s": timeout_s,
            }
        )
        self.replayer = Replayer(
            backend.async_client(),
            config=ReplayConfig(concurrency=concurrency, timeout_s=timeout_s, max_retries=2),
        )
        self.evaluator = ExactMatch()
        self.sim_model = sim_model
        self.sim_replayer = (
            Replayer(Backend().async_client(), config=ReplayConfig(concurrency=8))
            if sim_model is not None
            else None
        )

    def _exact(
        self,
        replayer: Replayer,
        action: Action,
        samples: Sequence[Sample],
        parse: Callable[[str], str] | None,
    ) -> tuple[list[float], list[str], int]:
        report = replayer.replay_sync(list(samples), action)
        texts = [outcome.text for outcome in report.outcomes]
        answers = [parse(text) if parse is not None else text for text in texts]
        items = [EvalItem(sample, answer) for sample, answer in zip(samples, answers, strict=True)]
        results = asyncio.run(self.evaluator.evaluate(items))
        per_sample = [
            0.0 if not outcome.ok else result.score
            for outcome, result in zip(report.outcomes, results, strict=True)
        ]
        return per_sample, texts, sum(1 for outcome in report.outcomes if not outcome.ok)

    def score(
        self,
        label: str,
        action: Action,
        samples: Sequence[Sample],
        *,
        parse: Callable[[str], str] | None = None,
        example_messages: list[dict[str, Any]] | None = None,
        split: str = "holdout",
    ) -> ScoredPrompt:
        """Replay ``samples`` under ``action`` and score each output by exact match.

        Args:
            label: names the prompt in the results.
            action: system prompt, demos, model and parameters.
            samples: what to replay (their ``chat_history`` is sent after the action's turns).
            parse: turn a raw reply into the answer before matching (a peer's output parser).
            example_messages: recorded with the result when the messages are not obvious.
            split: the split's name, for the record.

        Returns:
            The score, with per-sample scores and outputs; a failed call scores 0.
        """
        per_sample, texts, failed = self._exact(self.replayer, action, samples, parse)
        sim = None
        if self.sim_replayer is not None and self.sim_model is not None:
            on_sim = action.model_copy(update={"model": self.sim_model})
            sim_scores, _, _ = self._exact(self.sim_replayer, on_sim, samples, parse)
            sim = sum(sim_scores) / len(sim_scores) if sim_scores else math.nan
        return ScoredPrompt(
            label=label,
            how="replay",
            split=split,
            score=sum(per_sample) / len(per_sample) if per_sample else math.nan,
            sim=sim,
            n=len(per_sample),
            failed=failed,
            action=action.model_dump(mode="json"),
            example_messages=example_messages,
            sample_ids=[sample.sample_id for sample in samples],
            per_sample=per_sample,
            outputs=texts,
        )

    def close(self) -> None:
        """Stop the replayers' loop threads."""
        self.replayer.close()
        if self.sim_replayer is not None:
            self.sim_replayer.close()


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (nan for fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def dumps(value: Any) -> str:
    """JSON for the console (sorted keys, two-space indent)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)
