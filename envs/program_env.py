"""ProgramEnv: optimizing a multi-call program as a Gymnasium environment over an offline replay.

State: a program version, every node's prompt state
(:class:`~selfimprove_rl.program_state.ProgramState`), held in the same
:class:`~selfimprove_rl.registry.Registry` single calls use. Action: edits addressed to one
node or several at once (see :mod:`envs.program_spaces`). Transition: apply them to the base
version and register the new version. Reward: the end-to-end eval score of the new version
minus the base's, both replayed through the whole program on the *same* minibatch of train
traces (paired), plus, optionally, the potential-based shaping term ``node_shaping`` times
the mean change of the node evals (where the data says what nodes should output); every
node's own delta is in ``info["node_rewards"]``.

Invariants (as in :class:`~envs.prompt_env.PromptEnv`, plus):

* ``info["end_to_end_reward"] = score(new) - score(base)`` on one minibatch; ``reward`` adds
  ``node_shaping * mean(info["node_rewards"].values())`` and, with ``delta_minus_tokens``,
  subtracts the prompt-token penalty. Shaping by a difference of potentials (here the node
  scores) leaves the optimal policies unchanged (Ng, Harada & Russell, 1999);
* a node whose prompt and inputs did not change costs nothing (the response cache), so an
  edit of the last node replays only the last node;
* an invalid edit (unknown node, frozen block, bad line) is not a crash: reward
  ``-invalid_edit_penalty``, state unchanged, ``info["invalid_edit"]`` names the node;
* a trace whose replay fails anywhere scores 0 end to end and is listed, with the node where
  it failed, in ``info["node_failures"]``.

**The bootstrap problem.** In a router -> responder pipeline the router's labels mean nothing
until the responder maps them to replies, and the responder's rules fire on nothing until the
router emits the labels: under accept-only-if-improved, every single-node edit scores 0 end to
end and is rejected. Three remedies are built in and were measured
(``benchmarks/bench_programs.py``, see the README): *joint edits* (one action editing both
nodes; the env takes several node edits at once), *tie acceptance with a bound*
(``tie_moves``: up to that many consecutive zero-reward moves are accepted, so a router edit
can wait for its responder edit, while drift stays bounded), and *node evals as shaping*
(``node_shaping``: a router edit that gets more labels right is rewarded although the end-to-
end score has not moved yet).

Budgets, spend and resume work as in :class:`~envs.prompt_env.PromptEnv`: a hard call budget
(a step whose calls, bounded by :meth:`ProgramReplayer.plan
<selfimprove_rl.program_replay.ProgramReplayer.plan>`, do not fit next to ``reserved_calls``
is refused), the accounts in ``env.spend`` (:class:`~envs.spend.SpendMeter`), and
:meth:`ProgramEnv.state_dict` with ``reset(options={"restore": ...})`` for exact resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import gymnasium
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from envs.program_spaces import ProgramAction, ProgramActionSpace, program_observation_space
from envs.program_views import ProgramEvaluation, node_observation, node_rows, trace_rows
from envs.spaces import EnvAction
from envs.spend import NO_SPEND, SpendMeter, add_spend, judge_calls_bound
from selfimprove_rl.aio import BackgroundLoop
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Action, Checkpoint, Sample, SplitName
from selfimprove_rl.errors import EnvError, InvalidEdit
from selfimprove_rl.evals import Evaluator, ScoreTable
from selfimprove_rl.program_replay import (
    ProgramReplayer,
    ProgramReport,
)
from selfimprove_rl.program_replay import score_program as _score_program
from selfimprove_rl.program_state import (
    NodeEdit,
    ProgramState,
    apply_program,
    parse_program_directives,
    program_diff,
    program_directive,
)
from selfimprove_rl.prompt import EDIT_TYPES, Edit, parse_directives
from selfimprove_rl.registry import Registry, SplitScore
from selfimprove_rl.replay import ReplayConfig, Replayer

Observation = dict[str, Any]
_TIE = 1e-12


class ProgramEnvConfig(BaseModel):
    """Options of a :class:`ProgramEnv`; every field has a one-line description for the CLI."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    minibatch_size: int | None = Field(
        default=32, ge=1, description="Train traces replayed per step (None: the whole split)."
    )
    reward_mode: Literal["delta", "delta_minus_tokens"] = Field(
        default="delta", description="Score delta, or score delta minus a prompt-token penalty."
    )
    token_penalty: float = Field(
        default=0.0, ge=0.0, description="Reward cost per 1,000 extra prompt tokens per trace."
    )
    node_shaping: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight of the mean node-eval delta added to the reward (0: end to end only).",
    )
    tie_moves: int = Field(
        default=0,
        ge=0,
        description="Consecutive zero-reward edits accepted as moves (0: only improvements).",
    )
    invalid_edit_penalty: float = Field(
        default=0.0, ge=0.0, description="Reward subtracted for an edit that cannot apply."
    )
    observe_on_no_op: bool = Field(
        default=False,
        description="A no-op replays the current version on the step's fresh minibatch.",
    )
    max_steps: int = Field(default=20, ge=1, description="Steps per episode before truncation.")
    target_score: float | None = Field(
        default=0.99,
        description="Terminate when the current end-to-end minibatch score reaches it.",
    )
    max_calls: int | None = Field(
        default=None,
        ge=0,
        description="Model calls (replay, gate, report and judge) this env may send in all; hard.",
    )
    max_tokens: int | None = Field(default=None, ge=0, description="Tokens it may spend in all.")
    transition: Literal["if_improved", "always"] = Field(
        default="if_improved",
        description="Move to the new version always, or only on positive (or bounded-tie) reward.",
    )
    split_seed: int = Field(default=0, description="Seed of the train/test/holdout split.")
    split_fractions: tuple[float, float, float] = Field(
        default=(0.6, 0.2, 0.2), description="Train, test and holdout shares."
    )
    frozen_nodes: tuple[str, ...] = Field(default=(), description="Nodes no edit may touch.")
    frozen_blocks: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Node name -> blocks no edit may touch."
    )
    allowed_models: tuple[str, ...] | None = Field(
        default=None, description="Models a SetModel edit may choose (None: only the target)."
    )
    max_examples_in_info: int = Field(
        default=64, ge=0, description="Per-trace rows reported in info['examples']."
    )
    teacher_forcing: bool = Field(
        default=True,
        description="Also show a node, for each failing trace, the input it would have seen "
        "had its upstream nodes said what the data expects of them (no model call).",
    )


class ProgramEnv(gymnasium.Env[Observation, Any]):
    """Optimize every node of a multi-call program by edits, rewarded by paired end-to-end deltas.

    Args:
        checkpoint: logged traces, the program wiring, each node's action and the evals (a
            single-call checkpoint is a one-node program).
        client: an ``openai.AsyncOpenAI`` client for the target model (any base_url).
        evaluators: one per eval of the checkpoint (names as in ``eval_constants``); an
            eval whose constants name a node judges that node, the others the program output.
        config: env options.
        model: a model for every node (default: each node's logged model).
        cache: the response cache shared by replays (default: a new in-memory one).
        replay_config: concurrency, retries and timeouts of the replay.
        registry: where program versions live (default: in memory); resumed when not empty.
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
        config: ProgramEnvConfig | None = None,
        *,
        model: str | None = None,
        cache: ResponseCache | None = None,
        replay_config: ReplayConfig | None = None,
        registry: Registry | None = None,
        render_mode: str | None = None,
        close_client: bool = True,
    ) -> None:
        self.config = config or ProgramEnvConfig()
        if render_mode not in (None, "ansi"):
            raise EnvError(f"Expects render_mode None or 'ansi', got {render_mode!r}.")
        self.render_mode = render_mode
        self.checkpoint = checkpoint
        self.program, self.base_actions = checkpoint.as_program()
        self._split_evaluators(evaluators)
        unknown = [n for n in self.config.frozen_nodes if n not in self.program.names]
        unknown += [n for n in self.config.frozen_blocks if n not in self.program.names]
        if unknown:
            raise EnvError(f"Unknown nodes {unknown}; the program has {list(self.program.names)}.")
        self.splits = checkpoint.split(
            seed=self.config.split_seed, fractions=self.config.split_fractions
        )
        if not self.splits.train:
            raise EnvError("The train split is empty; use more traces or a larger train share.")
        self.replayer = Replayer(
            client, cache=cache if cache is not None else ResponseCache(), config=replay_config
        )
        self.program_replayer = ProgramReplayer(self.replayer, self.program)
        self.spend = SpendMeter(
            self.replayer,
            self.all_evaluators,
            max_calls=self.config.max_calls,
            max_tokens=self.config.max_tokens,
        )
        initial = ProgramState.from_actions(
            self.program, self.base_actions, model=model, frozen_blocks=self._frozen_blocks()
        )
        self.models: tuple[str, ...] = self.config.allowed_models or tuple(
            dict.fromkeys(state.model for state in initial.nodes.values())
        )
        self.registry = registry if registry is not None else Registry()
        if len(self.registry) == 0:
            self.registry.add(initial, parent_id=None, origin="baseline")
        elif self.registry.build(self.registry.baseline_id).fingerprint != initial.fingerprint():
            raise EnvError(
                "The registry's baseline is not this checkpoint's program; resume with the "
                "checkpoint and settings the run started with, or use a new registry."
            )
        self.observation_space = program_observation_space(
            {name: state.block_names for name, state in initial.nodes.items()},
            [e.name for e in self.evaluators],
            list(self.node_evaluators),
        )
        self.editable_blocks: dict[str, tuple[str, ...]] = {
            name: tuple(b.name for b in state.blocks if not b.frozen)
            for name, state in initial.nodes.items()
            if name not in self.config.frozen_nodes
        }
        self.action_space = ProgramActionSpace(self.editable_blocks)
        self._loop = BackgroundLoop()
        self._current_id: str | None = None
        self._current_eval: ProgramEvaluation | None = None
        self._episode_seed = 0
        self._step_index = 0
        self._tie_streak = 0
        self._last_samples: list[Sample] = []
        self._episode_spend = dict(NO_SPEND)
        self._closed = False
        self._close_client = close_client

    def _split_evaluators(self, evaluators: Sequence[Evaluator]) -> None:
        names = [e.name for e in evaluators]
        if len(set(names)) != len(names):
            raise EnvError(f"Evaluator names must be unique; got {names}.")
        node_of = {c.name: c.node for c in self.checkpoint.eval_constants}
        self.all_evaluators = list(evaluators)
        self.evaluators = [e for e in evaluators if node_of.get(e.name) is None]
        if not self.evaluators:
            raise EnvError(
                "ProgramEnv needs at least one end-to-end evaluator (an eval whose constants "
                f"name no node); got {names}."
            )
        self.node_evaluators: dict[str, list[Evaluator]] = {}
        for evaluator in evaluators:
            node = node_of.get(evaluator.name)
            if node is not None:
                self.node_evaluators.setdefault(node, []).append(evaluator)

    def _frozen_blocks(self) -> dict[str, list[str]]:
        return {name: list(blocks) for name, blocks in self.config.frozen_blocks.items()}

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

    def calls_to_score(self, state: ProgramState, samples: Sequence[Sample]) -> int:
        """The most calls replaying and judging ``state`` on ``samples`` sends now.

        Node requests priced by :meth:`ProgramReplayer.plan`; end-to-end judges by
        :func:`~envs.spend.judge_calls_bound`; node judges one call per trace. Retries aside.
        """
        samples = list(samples)
        plan = self.program_replayer.plan(samples, self.actions_of(state))
        output = plan.texts[self.program.output_name]
        calls = plan.calls + judge_calls_bound(self.evaluators, samples, output)
        for evaluators in self.node_evaluators.values():
            calls += judge_calls_bound(evaluators, samples, [None] * len(samples))
        return calls

    def calls_to_score_version(self, version_id: str, split: SplitName) -> int:
        """:meth:`calls_to_score` for a registered version on a whole split."""
        return self.calls_to_score(self._state(version_id), self.splits.by_name(split))

    def reset_calls_bound(self) -> int:
        """The most calls a reset sends (retries aside): every node and judge on a minibatch."""
        size = len(self.splits.train)
        if self.config.minibatch_size is not None:
            size = min(size, self.config.minibatch_size)
        judges = sum(1 for evaluator in self.all_evaluators if hasattr(evaluator, "calls"))
        return size * (len(self.program.order) + judges)

    # ----------------------------------------------------------------- evaluation
    def actions_of(self, state: ProgramState) -> dict[str, Action]:
        """Every node's action under ``state`` (its logged parameters, the state's prompt)."""
        return state.to_actions(self.base_actions)

    async def _evaluate(self, state: ProgramState, samples: list[Sample]) -> ProgramEvaluation:
        report = await self.program_replayer.replay(samples, self.actions_of(state))
        scores = await _score_program(self.evaluators, self.node_evaluators, samples, report)
        return ProgramEvaluation(samples=samples, report=report, scores=scores)

    async def _evaluate_pair(
        self, base: ProgramState, new: ProgramState, samples: list[Sample]
    ) -> tuple[ProgramEvaluation, ProgramEvaluation]:
        first, second = await asyncio.gather(
            self._evaluate(base, samples), self._evaluate(new, samples)
        )
        return first, second

    def evaluate_states(
        self, states: Sequence[ProgramState], samples: Sequence[Sample]
    ) -> list[tuple[float, dict[str, float]]]:
        """Replay several states on the same traces; (end-to-end aggregate, node aggregates) each.

        For counterfactual credit (difference rewards): the cache makes the shared nodes free.
        """
        self._require_open()
        batch = list(samples)

        async def run() -> list[ProgramEvaluation]:
            return list(await asyncio.gather(*(self._evaluate(s, batch) for s in states)))

        return [(e.table.aggregate(), e.node_aggregates()) for e in self._loop.run(run())]

    def _state(self, version_id: str) -> ProgramState:
        state = self.registry.build(version_id).state
        if not isinstance(state, ProgramState):
            raise EnvError(f"Version {version_id} is not a program version.")
        return state

    def score_version(self, version_id: str, split: SplitName) -> tuple[SplitScore, ScoreTable]:
        """Replay a version on a whole split, record its score in the registry, and return it.

        The aggregate and ``per_eval`` are end to end (the gate judges what the program
        answers). Used by the runner's gate (test) and report (holdout).
        """
        self._require_open()
        before = self.usage
        evaluation = self._loop.run(
            self._evaluate(self._state(version_id), self.splits.by_name(split))
        )
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
        """Replay and score versions end to end on the same samples, concurrently.

        The sequential gate's paired look at a chunk of test samples (records nothing).
        """
        self._require_open()
        batch = list(samples)

        async def run() -> list[ProgramEvaluation]:
            states = [self._state(v) for v in version_ids]
            return list(await asyncio.gather(*(self._evaluate(s, batch) for s in states)))

        return [evaluation.table for evaluation in self._loop.run(run())]

    def evaluate_version(
        self, version_id: str, split: SplitName
    ) -> tuple[ProgramReport, ScoreTable]:
        """Replay and score a version on a whole split, recording nothing."""
        self._require_open()
        evaluation = self._loop.run(
            self._evaluate(self._state(version_id), self.splits.by_name(split))
        )
        return evaluation.report, evaluation.table

    def version_diff(self, before_id: str, after_id: str) -> str:
        """A unified diff of two versions, node by node."""
        return program_diff(self._state(before_id), self._state(after_id))

    def _minibatch(self) -> list[Sample]:
        train = self.splits.train
        size = self.config.minibatch_size
        if size is None or size >= len(train):
            batch = list(train)
        else:
            rng = np.random.default_rng([self._episode_seed, self._step_index])
            picks = rng.choice(len(train), size=size, replace=False)
            batch = [train[int(i)] for i in sorted(picks)]
        self._last_samples = batch
        return batch

    @property
    def last_minibatch(self) -> list[Sample]:
        """The traces the last reset or step replayed (counterfactuals replay the same ones)."""
        return list(self._last_samples)

    # ----------------------------------------------------------------- gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode from the live version, or ``options["version"]``.

        Args:
            seed: seeds ``np_random`` (and through it the minibatch draws).
            options: ``version`` — the version to start from; ``step`` — the step index to
                continue at (a resumed run keeps its minibatch sequence); ``restore`` — a
                :meth:`state_dict` to continue exactly where it was taken (``seed`` ignored).
        """
        super().reset(seed=seed)
        self._require_open()
        options = options or {}
        self.spend.refused = None
        if options.get("restore") is not None:
            start = self._restore(dict(options["restore"]))
        else:
            start = options.get("version") or self.registry.live_id
            self._state(start)
            self._episode_seed = int(self.np_random.integers(2**31))
            self._step_index = int(options.get("step", 0))
            self._tie_streak = 0
            self._current_id = start
            self._current_eval = self._loop.run(
                self._evaluate(self._state(start), self._minibatch())
            )
        evaluation = self._current_eval
        assert evaluation is not None
        restored = options.get("restore") is not None  # a restore re-scores from the cache
        info = self._info(
            start,
            start,
            evaluation,
            evaluation,
            accepted=True,
            edits=[],
            invalid=None,
            replayed=not restored,
        )
        if not restored:
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
            "last_samples": [sample.sample_id for sample in self._last_samples],
            "episode_seed": self._episode_seed,
            "step_index": self._step_index,
            "tie_streak": self._tie_streak,
            "np_random": self.np_random.bit_generator.state,
            "spend_episode": dict(self._episode_spend),
        }

    def _restore(self, state: dict[str, Any]) -> str:
        """Continue the episode saved by :meth:`state_dict`; returns the current version."""
        by_id = {sample.sample_id: sample for sample in self.splits.train}
        try:
            current = str(state["current_version"])
            samples = [by_id[str(i)] for i in state["current_samples"]]
            last = [by_id[str(i)] for i in state.get("last_samples", [])]
            episode_seed, step_index = int(state["episode_seed"]), int(state["step_index"])
            tie_streak = int(state.get("tie_streak", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvError(
                f"Cannot restore the env: its saved state is malformed or names traces not in "
                f"this checkpoint's train split ({exc}); resume with the checkpoint and split "
                "settings the run started with."
            ) from exc
        self._state(current)
        if state.get("np_random") is not None:
            self.np_random.bit_generator.state = state["np_random"]
        self._episode_seed, self._step_index = episode_seed, step_index
        self._tie_streak, self._current_id = tie_streak, current
        self._episode_spend = {**NO_SPEND, **dict(state.get("spend_episode") or {})}
        hits_before = self.replayer.usage.cache_hits
        with self.spend.unbudgeted():
            self._current_eval = self._loop.run(self._evaluate(self._state(current), samples))
        self.spend.hide_cache_hits(self.replayer.usage.cache_hits - hits_before)
        self._last_samples = last or samples
        return current

    def step(self, action: Any) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Apply node edits to a base version, replay both through the program, reward the delta.

        Returns:
            ``(observation, reward, terminated, truncated, info)``. ``info`` holds the keys of
            :meth:`envs.prompt_env.PromptEnv.step` (``scores`` and ``base_scores`` are end to
            end) plus ``end_to_end_reward``, ``node_rewards`` (node -> its eval delta),
            ``node_scores`` / ``node_base_scores``, ``node_failures`` (node -> trace -> error),
            ``node_examples`` (node -> per-trace rows as that node saw them: its input, its
            output, its expected output) and ``tie_move`` (accepted as a bounded tie).

        Raises:
            EnvError: ``step`` before ``reset``, after ``close``, an unknown base version, or
                an action of an unknown form.
        """
        self._require_open()
        if self._current_id is None or self._current_eval is None:
            raise EnvError("Cannot call step() before reset(); call env.reset() first.")
        base_id, origin, raw = self._unpack(action)
        if base_id not in self.registry:
            raise EnvError(
                f"Unknown base version {base_id!r}; branch from a registered version "
                f"(live: {self.registry.live_id})."
            )
        self._step_index += 1
        base_state = self._state(base_id)
        refusal = self._refusal(base_id, base_state, raw)
        if refusal is not None:
            self.spend.refused = refusal
            current = self._current_eval
            info = self._info(
                base_id,
                base_id,
                current,
                current,
                accepted=False,
                edits=[],
                invalid=None,
                replayed=False,
            )
            info["budget_refusal"] = refusal
            self._count_spend(info)
            return self._observation(), 0.0, False, True, info
        new_state, edits, invalid = self._apply_edits(base_state, raw)
        unchanged = invalid is not None or new_state == base_state
        observe = self.config.observe_on_no_op and invalid is None
        replayed = not (unchanged and base_id == self._current_id and not observe)
        if not replayed:
            base_eval = new_eval = self._current_eval
        elif unchanged:
            base_eval = new_eval = self._loop.run(self._evaluate(base_state, self._minibatch()))
        else:
            base_eval, new_eval = self._loop.run(
                self._evaluate_pair(base_state, new_state, self._minibatch())
            )
        node_rewards = {
            name: new_eval.node_aggregates()[name] - base_eval.node_aggregates()[name]
            for name in self.node_evaluators
        }
        end_to_end = new_eval.table.aggregate() - base_eval.table.aggregate()
        tie_move = False
        if invalid is not None:
            reward = -self.config.invalid_edit_penalty
            version_id, accepted = base_id, False
        else:
            build = self.registry.add(new_state, parent_id=base_id, edits=edits, origin=origin)
            version_id = build.version_id
            reward = self._reward(end_to_end, node_rewards, base_eval, new_eval)
            if not unchanged:
                self.registry.record_scores(
                    version_id, "minibatch", new_eval.split_score, tokens=new_eval.tokens
                )
            accepted, tie_move = self._accepts(version_id, base_id, reward, new_eval, unchanged)
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
            version_id,
            base_id,
            new_eval,
            base_eval,
            accepted=accepted,
            edits=edits,
            invalid=invalid,
            replayed=replayed,
        )
        self._count_spend(info)
        info.update(
            end_to_end_reward=end_to_end,
            node_rewards=node_rewards if invalid is None else dict.fromkeys(node_rewards, 0.0),
            tie_move=tie_move,
        )
        return self._observation(), float(reward), bool(terminated), bool(truncated), info

    def _apply_edits(
        self, state: ProgramState, raw: Any
    ) -> tuple[ProgramState, list[NodeEdit], InvalidEdit | None]:
        """Parse and apply an action's node edits to ``state``.

        Returns:
            The new state (``state`` itself when the edits are invalid), the edits, and the
            reason they are invalid (``None`` when they apply).
        """
        edits: list[NodeEdit] = []
        try:
            edits = self._node_edits(raw)
            return apply_program(state, edits, allowed_models=self.models), edits, None
        except InvalidEdit as exc:
            return state, edits, exc

    def _reward(
        self,
        end_to_end: float,
        node_rewards: Mapping[str, float],
        base_eval: ProgramEvaluation,
        new_eval: ProgramEvaluation,
    ) -> float:
        """The end-to-end delta, plus node shaping and minus the token penalty when set."""
        reward = end_to_end
        if self.config.node_shaping and node_rewards:
            reward += self.config.node_shaping * float(np.mean(list(node_rewards.values())))
        if self.config.reward_mode == "delta_minus_tokens":
            extra = new_eval.mean_prompt_tokens - base_eval.mean_prompt_tokens
            reward -= self.config.token_penalty * extra / 1000.0
        return reward

    def _refusal(self, base_id: str, base_state: ProgramState, raw: Any) -> str | None:
        """Why the step may not run for want of budget (``None``: it may); sends nothing."""
        refusal = self.spend.token_refusal()
        if refusal is not None or self.config.max_calls is None:
            return refusal
        try:
            new_state = apply_program(base_state, self._node_edits(raw), allowed_models=self.models)
            invalid = False
        except InvalidEdit:
            new_state, invalid = base_state, True
        samples = self._peek_minibatch()
        planned: list[ProgramState] = []
        if new_state != base_state:
            planned = [base_state, new_state]
            if base_id != self._current_id and self._current_id is not None:
                planned.append(self._state(self._current_id))
        elif base_id != self._current_id or (self.config.observe_on_no_op and not invalid):
            planned = [base_state]
        return self.spend.call_refusal(sum(self.calls_to_score(s, samples) for s in planned))

    def _peek_minibatch(self) -> list[Sample]:
        """The step's minibatch, without recording it as the last one replayed."""
        last = self._last_samples
        try:
            return self._minibatch()
        finally:
            self._last_samples = last

    def _accepts(
        self,
        version_id: str,
        base_id: str,
        reward: float,
        new_eval: ProgramEvaluation,
        unchanged: bool,
    ) -> tuple[bool, bool]:
        """Whether the new version becomes current, and whether as a bounded tie move.

        ``if_improved``: a positive reward moves (and resets the tie streak); a zero reward
        on a changed program moves while fewer than ``tie_moves`` ties were accepted in a row.
        A branch from another base must also beat (or, for a tie, match) the current version
        on the same minibatch.
        """
        if version_id == self._current_id:
            return False, False
        if self.config.transition == "always":
            return True, False
        improved = reward > _TIE
        tie = (
            not improved
            and not unchanged
            and abs(reward) <= _TIE
            and self._tie_streak < self.config.tie_moves
        )
        if not (improved or tie):
            return False, False
        if base_id != self._current_id:
            assert self._current_id is not None
            current = self._loop.run(
                self._evaluate(self._state(self._current_id), new_eval.samples)
            )
            margin = new_eval.table.aggregate() - current.table.aggregate()
            if margin < -_TIE or (improved and margin <= _TIE):
                return False, False
        self._tie_streak = self._tie_streak + 1 if tie else 0
        return True, tie

    def render(self) -> str | None:
        """Return the current program and scores as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi" or self._current_id is None:
            return None
        scores = self._current_eval.table.per_eval() if self._current_eval else {}
        return f"[{self._current_id}] scores={scores}\n{self._state(self._current_id).render()}"

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
            raise EnvError("This ProgramEnv is closed; create a new one.")

    def _unpack(self, action: Any) -> tuple[str, str, Any]:
        assert self._current_id is not None
        if isinstance(action, ProgramAction | EnvAction):
            return action.base_version or self._current_id, action.origin, action.edits
        if isinstance(action, NodeEdit):
            return self._current_id, "", [action]
        if isinstance(action, str | Mapping):
            return self._current_id, "", action
        if isinstance(action, list | tuple) and all(isinstance(a, NodeEdit) for a in action):
            return self._current_id, "", list(action)
        if isinstance(action, list | tuple) and all(isinstance(a, EDIT_TYPES) for a in action):
            return self._current_id, "", list(action)
        raise EnvError(
            "Expects node edits: a NodeEdit, a list of them, {node: edits or directives}, "
            f"directive text with NODE: lines, or a ProgramAction; got {type(action).__name__}."
        )

    def _node_edits(self, raw: Any) -> list[NodeEdit]:
        """Normalise any accepted form to node edits (raises ``InvalidEdit``)."""
        only = self.program.names[0] if len(self.program.names) == 1 else None
        if isinstance(raw, str):
            edits = parse_program_directives(raw, node=only)
        elif isinstance(raw, Mapping):
            edits = []
            for node, value in raw.items():
                parsed: list[Edit]
                if isinstance(value, str):
                    parsed = parse_directives(value)
                elif isinstance(value, EDIT_TYPES):
                    parsed = [value]  # type: ignore[list-item]
                else:
                    parsed = list(value)
                edits.extend(NodeEdit(node=str(node), edit=edit) for edit in parsed)
        elif all(isinstance(item, NodeEdit) for item in raw):
            edits = list(raw)
        elif only is not None:
            edits = [NodeEdit(node=only, edit=edit) for edit in raw]
        else:
            raise InvalidEdit(
                "Edits without a node are ambiguous in a program of several nodes; address "
                f"them with NodeEdit(node=..., edit=...) (nodes: {list(self.program.names)}).",
                reason="unknown_node",
            )
        for edit in edits:
            if edit.node in self.config.frozen_nodes:
                raise InvalidEdit(
                    f"node {edit.node!r} is frozen; edit another node "
                    f"({[n for n in self.program.names if n not in self.config.frozen_nodes]}).",
                    reason="frozen_node",
                )
        return edits

    def observation_for(
        self,
        version_id: str,
        scores: Mapping[str, float],
        node_scores: Mapping[str, float] | None = None,
    ) -> Observation:
        """The observation of a version with the given scores (the runner resumes with it).

        Args:
            version_id: the version.
            scores: ``aggregate`` and each end-to-end eval (missing ones read 0).
            node_scores: node -> its aggregate node-eval score (missing ones read 0).
        """
        state = self._state(version_id)
        values = [scores.get("aggregate", 0.0), *(scores.get(e.name, 0.0) for e in self.evaluators)]
        observation: Observation = {
            "nodes": {name: node_observation(node) for name, node in state.nodes.items()},
            "version": version_id,
            "scores": np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0),
        }
        if self.node_evaluators:
            known = node_scores or {}
            node_values = [known.get(name, 0.0) for name in self.node_evaluators]
            observation["node_scores"] = np.clip(
                np.asarray(node_values, dtype=np.float32), 0.0, 1.0
            )
        return observation

    def _count_spend(self, info: dict[str, Any]) -> None:
        """Add the step's ``spend`` to the episode's, shown as ``info["spend_episode"]``."""
        self._episode_spend = add_spend(self._episode_spend, info["spend"])
        info["spend_episode"] = dict(self._episode_spend)

    def _observation(self) -> Observation:
        assert self._current_id is not None and self._current_eval is not None
        table = self._current_eval.table
        scores = {"aggregate": table.aggregate(), **table.per_eval()}
        return self.observation_for(self._current_id, scores, self._current_eval.node_aggregates())

    def _info(
        self,
        version_id: str,
        base_id: str,
        candidate: ProgramEvaluation,
        base: ProgramEvaluation,
        *,
        accepted: bool,
        edits: list[NodeEdit],
        invalid: InvalidEdit | None,
        replayed: bool = True,
    ) -> dict[str, Any]:
        assert self._current_id is not None and self._current_eval is not None
        same = base is candidate
        requests = candidate.requests + (0 if same else base.requests)
        tokens = candidate.tokens + (0 if same else base.tokens)
        if not replayed:  # a no-op, an invalid edit or a refused step sends nothing
            requests = tokens = 0
        return {
            "step": self._step_index,
            "version_id": version_id,
            "base_version_id": base_id,
            "current_version_id": self._current_id,
            "accepted": accepted,
            "directive": program_directive(edits),
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
            "node_scores": candidate.node_aggregates(),
            "node_base_scores": base.node_aggregates(),
            "sample_scores": dict(
                zip(candidate.table.sample_ids, candidate.table.per_sample(), strict=True)
            ),
            "failures": dict(candidate.table.failed),
            "node_failures": {
                name: report.failed for name, report in candidate.report.nodes.items()
            },
            "spend": {"requests": requests, "tokens": tokens},
            "minibatch": [s.sample_id for s in candidate.samples],
            "examples": trace_rows(
                self.program, self._current_eval, limit=self.config.max_examples_in_info
            ),
            "node_examples": node_rows(
                self.program,
                self._current_eval,
                limit=self.config.max_examples_in_info,
                teacher_forcing=self.config.teacher_forcing,
            ),
            "budget_exhausted": self.budget_exhausted(),
            "allowed_models": list(self.models),
            "nodes": list(self.program.order),
            "end_to_end_reward": 0.0,
            "node_rewards": dict.fromkeys(self.node_evaluators, 0.0),
            "tie_move": False,
        }
