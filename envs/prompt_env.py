"""PromptEnv: prompt optimization as a Gymnasium environment over an offline replay.

State: a prompt version (blocks of system-prompt lines and a model) held in a
:class:`~selfimprove_rl.registry.Registry`. Action: an edit, a list of edits, coach directive
text, or an :class:`~envs.spaces.EnvAction` naming the base version to branch from. Transition:
apply the edit to the base and register the new version. Reward: the new version's aggregate
eval score minus the base's, both replayed on the *same* minibatch of train samples (paired,
so sample difficulty cancels; the response cache makes the base free when already seen).

Invariants:

* ``reward = score(new) - score(base)`` on one minibatch (``reward_mode="delta"``), optionally
  minus a prompt-token penalty (``"delta_minus_tokens"``);
* an edit that cannot apply is not a crash: reward ``-invalid_edit_penalty``, state unchanged,
  ``info["invalid_edit"]`` says why; neither it nor a no-op costs a model call (unless
  ``observe_on_no_op``: then a no-op shows the current version on a fresh minibatch);
* with ``transition="if_improved"`` the episode moves to the new version only when it beats
  the current one on the step's minibatch (a positive reward against its base, and, for a
  branch from another base, a higher score than the current version);
* a sample whose replay fails scores 0 and is listed in ``info["failures"]``;
* ``info`` holds no wall-clock figures; its ``spend`` counts this step's replay *requests*
  (cache hits included; 0 when the step replayed nothing) and their tokens, and
  ``spend_episode`` the same summed over the episode (its reset included), so equal seeds and
  actions give equal info; money actually sent is ``env.usage``.

Episodes start from the registry's live build (or ``options["version"]``), end with
``terminated`` when the current version's minibatch score reaches ``target_score``, and with
``truncated`` after ``max_steps`` steps or when the call/token budget is spent.

**The call budget is hard.** Before a step replays anything, the env works out what it will
send (distinct uncached requests, plus judge requests for verdicts it has not seen) and refuses
the step (``truncated``, ``info["budget_refusal"]``, nothing sent, no version registered)
when that plus ``reserved_calls`` (what a caller holds back, e.g. the runner's final report)
would pass ``max_calls``; every request, retries included, is also checked as it leaves (the
replayer's call guard). Judge retries are the one thing not checked request by request. The
token budget is checked between steps. The accounts live in ``env.spend``
(:class:`~envs.spend.SpendMeter`).

**Exact resume.** :meth:`state_dict` and ``reset(options={"restore": state})`` carry the
episode (current version, its minibatch, the minibatch seed and step, ``np_random``) across
processes; ``env.spend.state()`` and ``env.spend.restore(...)`` carry the spend counters,
with what the cache's ledger says a killed process paid after the state was saved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from envs.observation import build_observation
from envs.spaces import EnvAction, PromptActionSpace, observation_space
from envs.spend import NO_SPEND, SpendMeter, add_spend, judge_calls_bound
from selfimprove_rl.aio import BackgroundLoop
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Checkpoint, Sample, SplitName
from selfimprove_rl.errors import EnvError, InvalidEdit
from selfimprove_rl.evals import Evaluator, ScoreTable
from selfimprove_rl.evals.scoring import score_outcomes
from selfimprove_rl.prompt import (
    EDIT_TYPES,
    Edit,
    PromptState,
    apply,
    parse_directives,
    to_directive,
)
from selfimprove_rl.registry import Registry, SplitScore
from selfimprove_rl.replay import ReplayConfig, Replayer, ReplayReport

Observation = dict[str, Any]


class PromptEnvConfig(BaseModel):
    """Options of a :class:`PromptEnv`; every field has a one-line description for the CLI."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    minibatch_size: int | None = Field(
        default=32,
        ge=1,
        description="Train samples replayed per step (None: the whole train split).",
    )
    reward_mode: Literal["delta", "delta_minus_tokens"] = Field(
        default="delta", description="Score delta, or score delta minus a prompt-token penalty."
    )
    token_penalty: float = Field(
        default=0.0, ge=0.0, description="Reward cost per 1,000 extra prompt tokens per call."
    )
    invalid_edit_penalty: float = Field(
        default=0.0, ge=0.0, description="Reward subtracted for an edit that cannot apply."
    )
    observe_on_no_op: bool = Field(
        default=False,
        description="A no-op on the current version replays it on the step's fresh minibatch "
        "(cached samples are free), so a policy out of ideas sees more data; off: no call.",
    )
    max_steps: int = Field(default=20, ge=1, description="Steps per episode before truncation.")
    target_score: float | None = Field(
        default=0.99, description="Terminate when the current version's minibatch score reaches it."
    )
    max_calls: int | None = Field(
        default=None,
        ge=0,
        description="Model calls (replay, gate, report and judge) this env may send in all; hard.",
    )
    max_tokens: int | None = Field(
        default=None, ge=0, description="Tokens this env may spend in all."
    )
    transition: Literal["if_improved", "always"] = Field(
        default="if_improved",
        description="Move the current version to the new one always, or only on positive reward.",
    )
    split_seed: int = Field(default=0, description="Seed of the train/test/holdout split.")
    split_fractions: tuple[float, float, float] = Field(
        default=(0.6, 0.2, 0.2), description="Train, test and holdout shares."
    )
    frozen_blocks: tuple[str, ...] = Field(default=(), description="Blocks no edit may touch.")
    allowed_models: tuple[str, ...] | None = Field(
        default=None, description="Models a SetModel edit may choose (None: only the logged one)."
    )
    max_examples_in_info: int = Field(
        default=64, ge=0, description="Per-sample rows reported in info['examples']."
    )


class _Evaluation(BaseModel):
    """One version replayed and scored on one set of samples."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    samples: list[Sample]
    report: ReplayReport
    table: ScoreTable

    @property
    def split_score(self) -> SplitScore:
        return SplitScore(
            aggregate=self.table.aggregate(),
            per_eval=self.table.per_eval(),
            n=len(self.samples),
            failed=len(self.table.failed),
        )

    @property
    def mean_prompt_tokens(self) -> float:
        done = [o.prompt_tokens for o in self.report.outcomes if o.ok]
        return float(np.mean(done)) if done else 0.0

    @property
    def tokens(self) -> int:
        return sum(o.prompt_tokens + o.completion_tokens for o in self.report.outcomes)


class PromptEnv(gymnasium.Env[Observation, Any]):
    """Optimize one LLM call's prompt by edits, rewarded by paired eval-score deltas.

    Args:
        checkpoint: the logged samples, the starting action and the evals.
        client: an ``openai.AsyncOpenAI`` client for the target model (any base_url).
        evaluators: scorers of new outputs (names unique; weights set the aggregate).
        config: env options.
        model: the target model; default: the checkpoint action's model.
        cache: the response cache shared by replays (default: a new in-memory one).
        replay_config: concurrency, retries and timeouts of the replay.
        registry: where versions live (default: in memory). A registry that already holds
            versions is resumed; its baseline must be this checkpoint's prompt.
        render_mode: ``"ansi"`` or ``None``.
        close_client: close ``client`` when the env closes (default). Pass ``False`` to keep
            using a client you share with other code.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 - Gymnasium's attribute

    def __init__(
        self,
        checkpoint: Checkpoint,
        client: Any,
        evaluators: Sequence[Evaluator],
        config: PromptEnvConfig | None = None,
        *,
        model: str | None = None,
        cache: ResponseCache | None = None,
        replay_config: ReplayConfig | None = None,
        registry: Registry | None = None,
        render_mode: str | None = None,
        close_client: bool = True,
    ) -> None:
        self.config = config or PromptEnvConfig()
        if not evaluators:
            raise EnvError("PromptEnv needs at least one evaluator; got none.")
        names = [e.name for e in evaluators]
        if len(set(names)) != len(names):
            raise EnvError(f"Evaluator names must be unique; got {names}.")
        if render_mode not in (None, "ansi"):
            raise EnvError(f"Expects render_mode None or 'ansi', got {render_mode!r}.")
        self.render_mode = render_mode
        self.checkpoint = checkpoint
        self.evaluators = list(evaluators)
        self.splits = checkpoint.split(
            seed=self.config.split_seed, fractions=self.config.split_fractions
        )
        if not self.splits.train:
            raise EnvError("The train split is empty; use more samples or a larger train share.")
        self.replayer = Replayer(
            client, cache=cache if cache is not None else ResponseCache(), config=replay_config
        )
        self.spend = SpendMeter(
            self.replayer,
            self.evaluators,
            max_calls=self.config.max_calls,
            max_tokens=self.config.max_tokens,
        )
        target_model = model or checkpoint.action.model
        self.models: tuple[str, ...] = self.config.allowed_models or (target_model,)
        initial = PromptState.from_action(checkpoint.action, model=target_model)
        initial = initial.with_frozen(self.config.frozen_blocks)
        self.registry = registry if registry is not None else Registry()
        if len(self.registry) == 0:
            self.registry.add(initial, parent_id=None, origin="baseline")
        elif self.registry.build(self.registry.baseline_id).fingerprint != initial.fingerprint():
            raise EnvError(
                "The registry's baseline is not this checkpoint's prompt; resume with the "
                "checkpoint and settings the run started with, or use a new registry."
            )
        editable = [b.name for b in initial.blocks if not b.frozen]
        self.observation_space = observation_space(
            initial.block_names, [e.name for e in self.evaluators]
        )
        self.action_space = PromptActionSpace(editable, self.models)
        self._loop = BackgroundLoop()
        self._current_id: str | None = None
        self._current_eval: _Evaluation | None = None
        self._episode_seed = 0
        self._step_index = 0
        self._episode_spend = dict(NO_SPEND)
        self._closed = False
        self._close_client = close_client

    # ----------------------------------------------------------------- accounting
    @property
    def usage(self) -> dict[str, int]:
        """What was sent so far (see :attr:`envs.spend.SpendMeter.usage`)."""
        return self.spend.usage

    @property
    def reserved_calls(self) -> int:
        """Calls held back from steps for a caller's later work (the runner's report)."""
        return self.spend.reserved_calls

    @reserved_calls.setter
    def reserved_calls(self, calls: int) -> None:
        self.spend.reserved_calls = int(calls)

    def budget_exhausted(self) -> bool:
        """Whether the call or token budget is spent (or a step was refused for want of it)."""
        return self.spend.exhausted()

    @property
    def budget_refusal(self) -> str | None:
        """Why the last refused step was refused (``None`` when none was)."""
        return self.spend.refused

    def calls_to_score(self, state: PromptState, samples: Sequence[Sample]) -> int:
        """Return the most calls replaying and judging ``state`` on ``samples`` sends now.

        Replays: the distinct requests the cache cannot answer. Judges: for an evaluator with
        a ``calls`` counter, ``pending_calls(items)`` for outputs already known (when it has
        that method; else one per item), plus one per sample whose output is still unknown.
        Retries come on top.
        """
        plan = self.replayer.plan(samples, state.to_action(self.checkpoint.action))
        texts = [None if outcome is None else outcome.text for outcome in plan.outcomes]
        return plan.calls + judge_calls_bound(self.evaluators, samples, texts)

    def reset_calls_bound(self) -> int:
        """The most calls a reset sends (retries aside): a minibatch replayed and judged."""
        size = len(self.splits.train)
        if self.config.minibatch_size is not None:
            size = min(size, self.config.minibatch_size)
        judges = sum(1 for evaluator in self.evaluators if hasattr(evaluator, "calls"))
        return size * (1 + judges)

    def calls_to_score_version(self, version_id: str, split: SplitName) -> int:
        """:meth:`calls_to_score` for a registered version on a whole split."""
        state = self.registry.build(version_id).state
        return self.calls_to_score(state, self.splits.by_name(split))

    # ----------------------------------------------------------------- evaluation
    async def _evaluate(self, state: PromptState, samples: list[Sample]) -> _Evaluation:
        report = await self.replayer.replay(samples, state.to_action(self.checkpoint.action))
        table = await score_outcomes(self.evaluators, samples, report.outcomes)
        return _Evaluation(samples=samples, report=report, table=table)

    async def _evaluate_pair(
        self, base: PromptState, new: PromptState, samples: list[Sample]
    ) -> tuple[_Evaluation, _Evaluation]:
        if self.replayer.config.concurrency <= 1:
            # A one-request-at-a-time server keeps one prompt prefix cached: interleaving the
            # two prompts would re-read each system prompt on every call.
            return await self._evaluate(base, samples), await self._evaluate(new, samples)
        first, second = await asyncio.gather(
            self._evaluate(base, samples), self._evaluate(new, samples)
        )
        return first, second

    def score_version(self, version_id: str, split: SplitName) -> tuple[SplitScore, ScoreTable]:
        """Replay a version on a whole split, record the score in the registry, and return it.

        Used by the runner's promotion gate (test) and final report (holdout); the env itself
        only ever reads train samples.
        """
        self._require_open()
        build = self.registry.build(version_id)
        before = self.usage
        evaluation = self._loop.run(self._evaluate(build.state, self.splits.by_name(split)))
        after = self.usage
        self.registry.record_scores(
            version_id,
            split,
            evaluation.split_score,
            calls=after["calls"] - before["calls"],
            tokens=after["tokens"] - before["tokens"],
        )
        return evaluation.split_score, evaluation.table

    def score_samples(
        self, version_ids: Sequence[str], samples: Sequence[Sample]
    ) -> list[ScoreTable]:
        """Replay and score versions on the same samples, concurrently; records nothing.

        The sequential gate's paired look at a chunk of test samples: one table per version,
        rows in the order of ``samples``. Calls count in :attr:`spend` as any replay does.
        """
        self._require_open()
        batch = list(samples)

        async def run() -> list[_Evaluation]:
            states = [self.registry.build(v).state for v in version_ids]
            return list(await asyncio.gather(*(self._evaluate(s, batch) for s in states)))

        return [evaluation.table for evaluation in self._loop.run(run())]

    def evaluate_version(
        self, version_id: str, split: SplitName
    ) -> tuple[ReplayReport, ScoreTable]:
        """Replay and score a version on a whole split, recording nothing.

        For reports that need the per-sample outputs (results logged back to Phoenix); a
        version already scored on the split replays from the cache at no cost.
        """
        self._require_open()
        state = self.registry.build(version_id).state
        evaluation = self._loop.run(self._evaluate(state, self.splits.by_name(split)))
        return evaluation.report, evaluation.table

    def _minibatch(self) -> list[Sample]:
        train = self.splits.train
        size = self.config.minibatch_size
        if size is None or size >= len(train):
            return list(train)
        # Derived from (episode seed, step) so a resumed run draws the same minibatches.
        rng = np.random.default_rng([self._episode_seed, self._step_index])
        picks = rng.choice(len(train), size=size, replace=False)
        return [train[int(i)] for i in sorted(picks)]

    # ----------------------------------------------------------------- gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode from the live build, or from ``options["version"]``.

        Args:
            seed: seeds ``np_random`` (and through it the minibatch draws).
            options: ``version`` — the version to start from; ``step`` — the step index to
                continue at; ``restore`` — a :meth:`state_dict` to continue exactly where it
                was taken (in another process: the current version is re-scored on the same
                minibatch, from the cache; ``seed`` is ignored).

        Returns:
            The observation of the start version and an info dict (see :meth:`step`).
        """
        super().reset(seed=seed)
        self._require_open()
        options = options or {}
        self.spend.refused = None
        if options.get("restore") is not None:
            start = self._restore(dict(options["restore"]))
        else:
            start = options.get("version") or self.registry.live_id
            self.registry.record(start)
            self._episode_seed = int(self.np_random.integers(2**31))
            self._step_index = int(options.get("step", 0))
            self._current_id = start
            self._current_eval = self._loop.run(
                self._evaluate(self.registry.build(start).state, self._minibatch())
            )
        evaluation = self._current_eval
        assert evaluation is not None
        info = self._info(
            version_id=start,
            base_id=start,
            candidate=evaluation,
            base=evaluation,
            accepted=True,
            edits=[],
            invalid=None,
            replayed=options.get("restore") is None,  # a restore re-scores from the cache
        )
        if options.get("restore") is None:
            self._episode_spend = dict(NO_SPEND)
        self._count_spend(info)
        return self._observation(), info

    def state_dict(self) -> dict[str, Any]:
        """Return where the episode is (JSON-serialisable), for ``reset(options={"restore": ...})``.

        Raises:
            EnvError: before the first reset.
        """
        if self._current_id is None or self._current_eval is None:
            raise EnvError("No episode to save before reset(); call env.reset() first.")
        return {
            "current_version": self._current_id,
            "current_samples": [sample.sample_id for sample in self._current_eval.samples],
            "episode_seed": self._episode_seed,
            "step_index": self._step_index,
            "np_random": self.np_random.bit_generator.state,
            "spend_episode": dict(self._episode_spend),
        }

    def _restore(self, state: dict[str, Any]) -> str:
        """Continue the episode saved by :meth:`state_dict`; returns the current version."""
        try:
            current = str(state["current_version"])
            sample_ids = [str(i) for i in state["current_samples"]]
            episode_seed, step_index = int(state["episode_seed"]), int(state["step_index"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvError(
                f"Cannot restore the env: its saved state is malformed ({exc})."
            ) from exc
        self.registry.record(current)
        by_id = {sample.sample_id: sample for sample in self.splits.train}
        unknown = [i for i in sample_ids if i not in by_id]
        if unknown:
            raise EnvError(
                f"Cannot restore the env: samples {unknown[:3]} are not in this checkpoint's train "
                "split; resume with the checkpoint and split settings the run started with."
            )
        if state.get("np_random") is not None:
            self.np_random.bit_generator.state = state["np_random"]
        self._episode_seed, self._step_index, self._current_id = episode_seed, step_index, current
        self._episode_spend = {**NO_SPEND, **dict(state.get("spend_episode") or {})}
        hits_before = self.replayer.usage.cache_hits
        with self.spend.unbudgeted():
            self._current_eval = self._loop.run(
                self._evaluate(self.registry.build(current).state, [by_id[i] for i in sample_ids])
            )
        # Re-scoring from the cache is bookkeeping, not spend: keep the hit counter continuous.
        self.spend.hide_cache_hits(self.replayer.usage.cache_hits - hits_before)
        return current

    def step(self, action: Any) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Apply an edit to a base version, replay both on one minibatch, reward the delta.

        Returns:
            ``(observation, reward, terminated, truncated, info)``. ``info`` keys:
            ``version_id`` (the new version, or the base when the edit was invalid),
            ``base_version_id``, ``current_version_id``, ``accepted``, ``directive``,
            ``invalid_edit`` (None or reason/block/line/message), ``scores`` and
            ``base_scores`` (aggregate and per eval on the minibatch), ``sample_scores``
            (sample id → the new version's weighted score), ``failures``
            (sample id → error), ``spend`` (this step's replay requests and tokens),
            ``spend_episode`` (the episode's so far, reset included), ``minibatch``
            (sample ids), ``examples`` (per-sample rows of the current version), ``step``,
            ``budget_exhausted``, ``budget_refusal`` (why the step was refused for want of
            budget: nothing was sent, no version registered; ``None`` otherwise),
            ``allowed_models`` (what a ``SetModel`` edit may choose).

        Raises:
            EnvError: ``step`` before ``reset``, after ``close``, or an unknown base version.
        """
        self._require_open()
        if self._current_id is None or self._current_eval is None:
            raise EnvError("Cannot call step() before reset(); call env.reset() first.")
        base_id, origin, raw_edits = self._unpack(action)
        if base_id not in self.registry:
            raise EnvError(
                f"Unknown base version {base_id!r}; branch from a registered version "
                f"(live: {self.registry.live_id})."
            )
        self._step_index += 1
        base = self.registry.build(base_id)
        new_state, edits, invalid = self._apply_edits(base.state, raw_edits)
        unchanged = invalid is not None or new_state == base.state
        samples = self._minibatch()
        planned = self._planned_states(base_id, base.state, new_state, unchanged, invalid)
        refusal = self.spend.token_refusal()
        if refusal is None and self.config.max_calls is not None:
            needed = sum(self.calls_to_score(state, samples) for state in planned)
            refusal = self.spend.call_refusal(needed)
        if refusal is not None:
            return self._refused_step(base_id, refusal)
        if not planned:
            # Nothing to compare: a no-op or invalid edit costs no model call.
            base_eval = new_eval = self._current_eval
        elif unchanged:
            base_eval = new_eval = self._loop.run(self._evaluate(base.state, samples))
        else:
            base_eval, new_eval = self._loop.run(
                self._evaluate_pair(base.state, new_state, samples)
            )
        if invalid is not None:
            reward = -self.config.invalid_edit_penalty
            version_id = base_id
            accepted = False
        else:
            version_id = self.registry.add(
                new_state, parent_id=base_id, edits=edits, origin=origin
            ).version_id
            reward = self._reward(base_eval, new_eval)
            if not unchanged:
                self.registry.record_scores(
                    version_id, "minibatch", new_eval.split_score, tokens=new_eval.tokens
                )
            accepted = version_id != self._current_id and self._improves_current(
                version_id, base_id, reward, new_eval
            )
        if accepted:
            self._current_id, self._current_eval = version_id, new_eval
        elif base_id == self._current_id:
            self._current_eval = base_eval
        current_score = self._current_eval.table.aggregate()
        terminated = (
            self.config.target_score is not None and current_score >= self.config.target_score
        )
        truncated = self._step_index >= self.config.max_steps or self.budget_exhausted()
        info = self._info(
            version_id=version_id,
            base_id=base_id,
            candidate=new_eval,
            base=base_eval,
            accepted=accepted,
            edits=edits,
            invalid=invalid,
            replayed=bool(planned),
        )
        self._count_spend(info)
        return self._observation(), float(reward), bool(terminated), bool(truncated), info

    def _apply_edits(
        self, state: PromptState, raw_edits: str | Sequence[Edit]
    ) -> tuple[PromptState, list[Edit], InvalidEdit | None]:
        """Parse and apply an action's edits to ``state``.

        Returns:
            The new state (``state`` itself when the edits are invalid), the edits, and the
            reason they are invalid (``None`` when they apply).
        """
        edits: list[Edit] = []
        try:
            edits = parse_directives(raw_edits) if isinstance(raw_edits, str) else list(raw_edits)
            return apply(state, edits, allowed_models=self.models), edits, None
        except InvalidEdit as exc:
            return state, edits, exc

    def _planned_states(
        self,
        base_id: str,
        base: PromptState,
        new_state: PromptState,
        unchanged: bool,
        invalid: InvalidEdit | None,
    ) -> list[PromptState]:
        """The states a step replays on its minibatch (what its call budget must cover).

        None for a no-op on the current version (unless ``observe_on_no_op``), the base
        alone for a no-op elsewhere, else base and new state, and the current version too
        when ``if_improved`` must compare a branch with it.
        """
        observe = self.config.observe_on_no_op and invalid is None
        if unchanged and base_id == self._current_id and not observe:
            return []
        if unchanged:
            return [base]
        planned = [base, new_state]
        if base_id != self._current_id and self.config.transition == "if_improved":
            planned.append(self.registry.build(self.current_version_id).state)
        return planned

    def _refused_step(
        self, base_id: str, refusal: str
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """The step a budget refuses: nothing sent, nothing registered, the episode truncated."""
        assert self._current_eval is not None
        self.spend.refused = refusal
        info = self._info(
            version_id=base_id,
            base_id=base_id,
            candidate=self._current_eval,
            base=self._current_eval,
            accepted=False,
            edits=[],
            invalid=None,
            replayed=False,
        )
        info["budget_refusal"] = refusal
        self._count_spend(info)
        return self._observation(), 0.0, False, True, info

    def _reward(self, base_eval: _Evaluation, new_eval: _Evaluation) -> float:
        """score(new) − score(base) on the same minibatch (minus the token penalty if set)."""
        reward = new_eval.table.aggregate() - base_eval.table.aggregate()
        if self.config.reward_mode == "delta_minus_tokens":
            extra = new_eval.mean_prompt_tokens - base_eval.mean_prompt_tokens
            reward -= self.config.token_penalty * extra / 1000.0
        return reward

    def _count_spend(self, info: dict[str, Any]) -> None:
        """Add the step's ``spend`` to the episode's, shown as ``info["spend_episode"]``."""
        self._episode_spend = add_spend(self._episode_spend, info["spend"])
        info["spend_episode"] = dict(self._episode_spend)

    def _improves_current(
        self, version_id: str, base_id: str, reward: float, new_eval: _Evaluation
    ) -> bool:
        """Whether the new version replaces the current one (``transition`` option).

        With ``if_improved``, a version branched from the current one must have a positive
        reward; one branched from another base must also beat the current version on the
        same minibatch (replayed here; usually cached), so a branch never drags the episode
        back to a worse prompt.
        """
        if self.config.transition == "always":
            return True
        if reward <= 0:
            return False
        if base_id == self._current_id:
            return True
        assert self._current_id is not None
        current_state = self.registry.build(self._current_id).state
        current_eval = self._loop.run(self._evaluate(current_state, new_eval.samples))
        return new_eval.table.aggregate() > current_eval.table.aggregate()

    def render(self) -> str | None:
        """Return the current prompt, model and scores as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi" or self._current_id is None:
            return None
        state = self.registry.build(self._current_id).state
        scores = self._current_eval.table.per_eval() if self._current_eval else {}
        return f"[{self._current_id}] model={state.model} scores={scores}\n{state.render()}"

    def close(self) -> None:
        """Close the client (unless ``close_client=False``) and stop the event loop.

        Idempotent; later calls raise ``EnvError``.
        """
        if not self._closed:
            self._closed = True
            if self._close_client:
                self._loop.close_client(self.replayer.client)
            self._loop.close()

    # ----------------------------------------------------------------- helpers
    @property
    def current_version_id(self) -> str:
        """The version the episode is at (raises ``EnvError`` before reset)."""
        if self._current_id is None:
            raise EnvError("No current version before reset(); call env.reset() first.")
        return self._current_id

    @property
    def step_index(self) -> int:
        """Steps taken in this episode (or the step the episode resumed at)."""
        return self._step_index

    def _require_open(self) -> None:
        if self._closed:
            raise EnvError("This PromptEnv is closed; create a new one.")

    def _unpack(self, action: Any) -> tuple[str, str, list[Edit] | str]:
        assert self._current_id is not None
        if isinstance(action, EnvAction):
            return action.base_version or self._current_id, action.origin, action.edits
        if isinstance(action, str):
            return self._current_id, "", action
        if isinstance(action, EDIT_TYPES):
            return self._current_id, "", [action]  # type: ignore[list-item]
        if isinstance(action, list | tuple) and all(isinstance(a, EDIT_TYPES) for a in action):
            return self._current_id, "", list(action)
        raise EnvError(
            "Expects an action that is an Edit, a list of Edits, directive text or an EnvAction; "
            f"got {type(action).__name__}."
        )

    def _observation(self) -> Observation:
        assert self._current_id is not None and self._current_eval is not None
        state = self.registry.build(self._current_id).state
        table = self._current_eval.table
        per_eval = table.per_eval()
        scores = [table.aggregate(), *(per_eval[e.name] for e in self.evaluators)]
        return build_observation(state, self._current_id, scores)

    def _examples(self, evaluation: _Evaluation) -> list[dict[str, Any]]:
        table = evaluation.table
        per_sample = table.per_sample()
        rows: list[dict[str, Any]] = []
        for index, (sample, outcome) in enumerate(
            zip(evaluation.samples, evaluation.report.outcomes, strict=True)
        ):
            rows.append(
                {
                    "sample_id": sample.sample_id,
                    "input": sample.input_text,
                    "output": outcome.text,
                    "reference": sample.reference,
                    "score": per_sample[index],
                    "scores": {name: values[index] for name, values in table.scores.items()},
                    "explanations": {
                        name: values[index] for name, values in table.explanations.items()
                    },
                    "failed": sample.sample_id in table.failed,
                }
            )
        rows.sort(key=lambda row: (row["score"], row["sample_id"]))
        return rows[: self.config.max_examples_in_info]

    def _info(
        self,
        *,
        version_id: str,
        base_id: str,
        candidate: _Evaluation,
        base: _Evaluation,
        accepted: bool,
        edits: list[Edit],
        invalid: InvalidEdit | None,
        replayed: bool = True,
    ) -> dict[str, Any]:
        assert self._current_id is not None and self._current_eval is not None
        requests = len(candidate.samples) + (len(base.samples) if base is not candidate else 0)
        tokens = candidate.tokens + (base.tokens if base is not candidate else 0)
        if not replayed:  # a no-op, an invalid edit or a refused step sends nothing
            requests = tokens = 0
        return {
            "step": self._step_index,
            "version_id": version_id,
            "base_version_id": base_id,
            "current_version_id": self._current_id,
            "accepted": accepted,
            "directive": "\n".join(to_directive(e) for e in edits),
            "invalid_edit": None
            if invalid is None
            else {
                "reason": invalid.reason,
                "block": invalid.block,
                "line": invalid.line,
                "message": str(invalid),
            },
            "scores": {"aggregate": candidate.table.aggregate(), **candidate.table.per_eval()},
            "base_scores": {"aggregate": base.table.aggregate(), **base.table.per_eval()},
            "sample_scores": dict(
                zip(candidate.table.sample_ids, candidate.table.per_sample(), strict=True)
            ),
            "failures": dict(candidate.table.failed),
            "spend": {"requests": requests, "tokens": tokens},
            "minibatch": [s.sample_id for s in candidate.samples],
            "examples": self._examples(self._current_eval),
            "budget_exhausted": self.budget_exhausted(),
            "budget_refusal": None,
            "allowed_models": list(self.models),
        }
