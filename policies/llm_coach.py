"""LLMCoachPolicy: the seed experiment's coach, an OpenAI-compatible model that proposes edits.

Each decision, the coach model reads guidelines (system message) and an evaluator report
(:func:`policies.coach_report.build_report`: scores, clustered worst examples, the change log,
the numbered prompt blocks, the demonstrations) and answers one JSON object
(:mod:`policies.coach_reply`)::

    {"target_block": "sop", "directives": ["ADD: ...", "EDIT: 2 -> ..."],
     "demos": [{"input": "...", "output": "..."}], "rationale": "..."}

The reply is checked locally before the env sees it: the directives must parse
(:func:`selfimprove_rl.prompt.parse_directives`) and apply to the current prompt
(:func:`selfimprove_rl.prompt.apply`). An invalid reply — empty, malformed JSON, off-schema,
or directives that do not parse or apply — is answered with the error and asked again, up to
``max_retries`` times; then :class:`CoachOutputError` is raised by
:meth:`LLMCoachProposer.ask`. The policy does not crash a run on that: ``act`` falls back to
a no-op and records the failure in ``coach_failures``. Every reply is counted by verdict
(:meth:`LLMCoachProposer.report`: valid share, verdicts, negotiated mode).

Requests go through :class:`policies.coach_client.CoachClient`: structured output is
negotiated once per run (json_schema → json_object → text; a 4xx/5xx naming
``response_format`` means unsupported, as llama.cpp's 500 does) and kept in the policy state;
``max_consecutive_failures`` failed requests in a row raise :class:`CoachUnavailableError`,
which ends the run with a one-line message and a nonzero exit instead of silent no-ops.

Trials: with ``trials=N`` the coach proposes N candidates against one base version and tries
them on consecutive steps (``EnvAction(base_version=...)``); the next round starts from the
trial with the best reward when it was positive, else from the same base.

Model output is data: it is parsed as JSON and as directives, never evaluated, executed or
used as a format template. The API key is read from the environment variable named by the
backend when the client is made, and never stored, logged or saved.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from policies.base import BasePolicy, Observation, Transition
from policies.coach_client import CoachClient, ResponseFormat
from policies.coach_reply import (
    REPLY_SCHEMA,
    CoachReply,
    DemoReply,
    InvalidCoachReply,
    ReplyVerdict,
    extract_json,
    is_no_change,
    parse_reply,
)
from policies.coach_report import build_report
from policies.proposers import Candidate, estimate_tokens, state_from_observation
from selfimprove_rl.backend import Backend
from selfimprove_rl.errors import CoachOutputError, InvalidEdit
from selfimprove_rl.prompt import DEFAULT_EDIT_BLOCK, NoOp, apply, parse_directives

PLACEHOLDER = re.compile(r"<[a-z][a-z ]{0,60}>")
"""A ``<lowercase words>`` placeholder of the guidelines copied into an edit (refused)."""

__all__ = [
    "GUIDELINES",
    "REPLY_SCHEMA",
    "CoachReply",
    "DemoReply",
    "InvalidCoachReply",
    "LLMCoachConfig",
    "LLMCoachPolicy",
    "LLMCoachProposer",
    "extract_json",
    "parse_reply",
    "trial_hint",
]
GUIDELINES = Template(
    """You improve the system prompt of an assistant so that its replies match the reference \
replies in the report. Each answer makes one small change.

The prompt is made of blocks of numbered lines; the blocks are: $blocks. The assistant also \
sees demonstrations: example user messages, each with the exact reply (listed in the report).

Answer with one JSON object and nothing else, like this example (made from the first \
example in the report):
$example

- target_block: the name of the block the directives edit: one of $blocks.
- directives: at most $max_directives lines, each one of
    ADD: <new line>           add a line at the end of the block
    EDIT: <n> -> <new line>   replace line <n> of the block
    DEL: <n>                  delete line <n> of the block
    DEL_DEMO: <n>             delete demonstration <n>
  or ["no_change"] when nothing should change.
- demos: demonstrations to add, each a user message and the exact reply; or [].
- rationale: one short sentence.

Write lines the assistant can follow: plain, explicit instructions such as "If the message \
is about <topic>, reply with exactly: <reply>" or "Reply with exactly one of these replies, \
word for word, and nothing else: ...". Copy reference replies word for word. Say what the \
messages have in common; do not copy rare words of one example. Do not repeat a change the \
change log shows as rejected."""
)


class LLMCoachConfig(BaseModel):
    """Options of the LLM coach."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="The coach model name, as the server knows it.")
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(
        default=1000,
        ge=1,
        description="Reply token limit (None: not sent, e.g. for reasoning models).",
    )
    max_retries: int = Field(default=2, ge=0, description="Asks after an invalid reply.")
    response_format: ResponseFormat = Field(
        default="auto", description="Structured-output mode (auto: best the server accepts)."
    )
    max_directives: int = Field(default=6, ge=1, description="Directives per answer.")
    frozen_blocks: tuple[str, ...] = Field(default=(), description="Blocks the coach may not edit.")
    clusters: int = Field(default=3, ge=1, description="Clusters of worst examples.")
    subclusters: int = Field(default=2, ge=1, description="Sub-clusters per large cluster.")
    per_cluster: int = Field(default=2, ge=1, description="Representatives per (sub-)cluster.")
    change_log_size: int = Field(default=10, ge=0, description="Change-log entries shown.")
    seed: int | None = Field(
        default=None, description="Sampling seed sent with each request (None: not sent)."
    )
    max_consecutive_failures: int = Field(
        default=5,
        ge=1,
        description="Request failures in a row that make the coach unavailable (stops the run).",
    )
    backoff_s: float = Field(
        default=0.5, ge=0, description="Wait before retrying a retryable failure (doubles)."
    )


class LLMCoachProposer:
    """Asks an OpenAI-compatible coach model for edits (see the module docstring).

    Args:
        config: options (a model or a plain dict; ``model`` is required somewhere).
        backend: the server (default: OpenAI, or ``base_url`` when given).
        client: an ``openai.OpenAI`` client to use instead of one made from ``backend``.
        embedder: ``encode(texts)`` for clustering the report's examples.
        base_url: an OpenAI-compatible server, when no ``backend`` is given.
        api_key_env: the variable holding its key, when no ``backend`` is given.
        **options: :class:`LLMCoachConfig` fields, merged over ``config``.
    """

    name = "llm_coach"

    def __init__(
        self,
        config: LLMCoachConfig | Mapping[str, Any] | None = None,
        *,
        backend: Backend | Mapping[str, Any] | None = None,
        client: Any = None,
        embedder: Any = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        **options: Any,
    ) -> None:
        base = config.model_dump() if isinstance(config, LLMCoachConfig) else dict(config or {})
        self.config = LLMCoachConfig.model_validate({**base, **options})
        if backend is None:
            backend = {"kind": "openai", "base_url": base_url, "api_key_env": api_key_env}
        self.backend = (
            backend if isinstance(backend, Backend) else Backend.model_validate(dict(backend))
        )
        self.embedder = embedder
        self.chat = CoachClient(
            self.config.model,
            self.backend,
            client=client,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=self.config.seed,
            response_format=self.config.response_format,
            max_consecutive_failures=self.config.max_consecutive_failures,
            backoff_s=self.config.backoff_s,
        )
        self.change_log: list[dict[str, Any]] = []
        self.verdicts: dict[str, int] = {}

    # ------------------------------------------------------------------ validation
    def candidate_from(self, reply: CoachReply, observation: Observation) -> Candidate:
        """Turn a valid reply into a candidate, checking it parses and applies locally.

        Raises:
            InvalidCoachReply: unknown or frozen block, too many directives, or directives
                that do not parse or apply (the message says which and why).
        """
        state = state_from_observation(observation, frozen=self.config.frozen_blocks)
        lines = reply.lines()
        if not lines or all(is_no_change(line) for line in lines):
            return Candidate(
                edits=[NoOp()], rationale=reply.rationale, proposer=self.name, kind="no_change"
            )
        block = reply.target_block or state.default_block
        if block not in state.block_names:
            raise InvalidCoachReply(
                f"target_block {block!r} is not a block of the prompt; use one of "
                f"{', '.join(state.block_names)}.",
                "unknown_block",
            )
        copied = next((m.group(0) for line in lines if (m := PLACEHOLDER.search(line))), None)
        if copied is not None:
            raise InvalidCoachReply(
                f"The edit still holds the placeholder {copied}; replace it with your own "
                "words (what the messages have in common, or the exact reply).",
                "placeholder",
            )
        if len(lines) > self.config.max_directives and not lines[0].upper().startswith("REPLACE"):
            raise InvalidCoachReply(
                f"Expected at most {self.config.max_directives} directives (small steps), "
                f"got {len(lines)}.",
                "too_many_directives",
            )
        text = "\n".join([f"BLOCK: {block}", *lines])
        try:
            edits = parse_directives(text)
            new_state = apply(state, edits)
        except InvalidEdit as exc:
            raise InvalidCoachReply(
                f"The directives do not apply to the prompt: {exc}", "bad_directives"
            ) from exc
        tokens = estimate_tokens(new_state.render()) - estimate_tokens(state.render())
        return Candidate(
            edits=text,
            rationale=reply.rationale.strip()[:500],
            prompt_tokens=tokens,
            proposer=self.name,
            kind="llm",
        )

    # ------------------------------------------------------------------ proposing
    def messages(
        self, observation: Observation, info: Mapping[str, Any], hint: str = ""
    ) -> list[dict[str, str]]:
        """Return the system guidelines and the user report for one decision."""
        blocks = dict(observation.get("blocks") or {})
        editable = [b for b in blocks if b not in self.config.frozen_blocks]
        default = DEFAULT_EDIT_BLOCK if DEFAULT_EDIT_BLOCK in editable else None
        system = GUIDELINES.safe_substitute(
            blocks=", ".join(editable) or "none",
            example=example_reply(default or (editable[-1] if editable else "sop"), info),
            max_directives=str(self.config.max_directives),
        )
        report = build_report(
            observation,
            info,
            self.change_log,
            embedder=self.embedder,
            clusters=self.config.clusters,
            subclusters=self.config.subclusters,
            per_cluster=self.config.per_cluster,
            change_log_size=self.config.change_log_size,
        )
        user = report + ("\n\n" + hint if hint else "") + "\n\nAnswer with the JSON object only."
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def ask(self, observation: Observation, info: Mapping[str, Any], hint: str = "") -> Candidate:
        """Ask the coach model once (with retries) for a candidate.

        Raises:
            CoachOutputError: no valid reply after ``1 + max_retries`` attempts; the message
                lists each attempt's error.
            CoachUnavailableError: the coach failed systemically (see
                :meth:`CoachClient.complete <policies.coach_client.CoachClient.complete>`).
        """
        import openai

        messages = self.messages(observation, info, hint)
        errors: list[str] = []
        for _ in range(1 + self.config.max_retries):
            try:
                content = self.chat.complete(messages)
            except openai.APIError as exc:
                errors.append(f"request failed: {type(exc).__name__}: {self.chat.redact(str(exc))}")
                continue
            try:
                candidate = self.candidate_from(parse_reply(content), observation)
            except InvalidCoachReply as exc:
                self._count(exc.verdict)
                errors.append(str(exc))
                messages = [
                    *messages,
                    {"role": "assistant", "content": content or ""},
                    {
                        "role": "user",
                        "content": "Your reply could not be used: "
                        + str(exc)
                        + "\nFix it and answer again with the JSON object only.",
                    },
                ]
                continue
            self._count("no_change" if candidate.kind == "no_change" else "valid")
            return candidate
        raise CoachOutputError(
            f"The coach model {self.config.model!r} gave no usable reply in {len(errors)} "
            "attempts: " + " | ".join(f"{i}. {e}" for i, e in enumerate(errors, start=1))
        )

    def propose(self, observation: Observation, info: Mapping[str, Any], k: int) -> list[Candidate]:
        """Return up to ``k`` candidates, one coach request (with retries) each.

        Trials that fail after their retries are left out and recorded in ``failures``.
        """
        self.failures: list[str] = []
        candidates: list[Candidate] = []
        for trial in range(max(0, k)):
            hint = trial_hint(trial, k, candidates)
            try:
                candidates.append(self.ask(observation, info, hint))
            except CoachOutputError as exc:
                self.failures.append(str(exc))
        return candidates

    def feedback(
        self, candidate: Candidate, reward: float, accepted: bool, info: Mapping[str, Any]
    ) -> None:
        """Add a tried candidate to the change log the report shows."""
        self.change_log.append(
            {
                "step": info.get("step"),
                "directive": candidate.directive_text(),
                "rationale": candidate.rationale,
                "reward": float(reward),
                "accepted": bool(accepted),
                "version": info.get("version_id"),
            }
        )

    def _count(self, verdict: ReplyVerdict) -> None:
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1

    def report(self) -> dict[str, Any]:
        """Return what the coach did: negotiated mode, refusals, requests, reply verdicts.

        ``valid_share`` is the share of replies (HTTP successes) that validated, a
        ``no_change`` answer included; ``None`` before the first reply.
        """
        replies = sum(self.verdicts.values())
        usable = self.verdicts.get("valid", 0) + self.verdicts.get("no_change", 0)
        return {
            **self.chat.report(),
            "replies": replies,
            "valid_share": round(usable / replies, 4) if replies else None,
            "verdicts": dict(sorted(self.verdicts.items())),
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the change log, the negotiated format with its refusals, and the counters."""
        return {
            "change_log": [dict(e) for e in self.change_log],
            **self.chat.state_dict(),
            "verdicts": dict(self.verdicts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.change_log = [dict(e) for e in state.get("change_log", [])]
        self.chat.load_state_dict(dict(state))
        self.verdicts = {str(k): int(v) for k, v in dict(state.get("verdicts", {})).items()}


def _json_view(observation: Observation, info: Mapping[str, Any]) -> dict[str, Any]:
    """Keep what the report needs of an observation and info, as JSON-serialisable data."""
    scores = observation.get("scores")
    return {
        "observation": {
            "blocks": dict(observation.get("blocks") or {}),
            "demos": [[str(i), str(o)] for i, o in observation.get("demos") or ()],
            "model": observation.get("model"),
            "version": observation.get("version"),
            "prompt": observation.get("prompt"),
            "scores": [float(x) for x in scores] if scores is not None else [],
        },
        "info": {
            key: info.get(key)
            for key in ("examples", "scores", "base_scores", "current_version_id", "step")
            if key in info
        },
    }


class LLMCoachPolicy(BasePolicy):
    """The LLM coach as a policy: one coach request per trial, several trials keep the best.

    Args:
        seed: the policy seed, also sent as the coach requests' sampling seed (unless
            ``options`` has one).
        model: the coach model name.
        base_url: an OpenAI-compatible server (default: OpenAI).
        api_key_env: the environment variable holding the key (read when the client is made).
        backend: a full :class:`~selfimprove_rl.backend.Backend` instead of ``base_url``.
        trials: candidates proposed and tried per round against one base version.
        client: an ``openai.OpenAI`` client to use as is.
        embedder: ``encode(texts)`` for the report's clustering.
        **options: :class:`LLMCoachConfig` fields.
    """

    name = "llm_coach"

    def __init__(
        self,
        seed: int | None = None,
        *,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        backend: Backend | Mapping[str, Any] | None = None,
        trials: int = 1,
        client: Any = None,
        embedder: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(seed)
        if trials < 1:
            raise ValueError(f"Expects trials >= 1, got {trials}.")
        self.proposer = LLMCoachProposer(
            {"model": model, "seed": seed, **options},
            backend=backend,
            client=client,
            embedder=embedder,
            base_url=base_url,
            api_key_env=api_key_env,
        )
        self.trials = trials
        self.coach_failures: list[dict[str, Any]] = []
        self._queue: list[Candidate] = []
        self._results: list[dict[str, Any]] = []
        self._base: str | None = None
        self._view: dict[str, Any] | None = None
        self._pending: Candidate | None = None

    @property
    def failure_count(self) -> int:
        """How many decisions fell back to a no-op because the coach model misbehaved."""
        return len(self.coach_failures)

    def report(self) -> dict[str, Any]:
        """Return the proposer's :meth:`~LLMCoachProposer.report` and the fallen-back decisions."""
        return {**self.proposer.report(), "no_op_decisions": self.failure_count}

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Start a new episode from the env's current version."""
        self._queue, self._results, self._pending = [], [], None
        self._base = None
        self._view = _json_view(observation, info)

    def _close_round(self, observation: Observation, info: Mapping[str, Any]) -> None:
        """Continue from the round's best trial when its reward was positive."""
        best = max(self._results, key=lambda r: r["reward"], default=None)
        if best is not None and best["reward"] > 0 and best["accepted"]:
            self._base, self._view = best["version"], best["view"]
        elif self._base is None or info.get("current_version_id") == self._base:
            self._view = _json_view(observation, info)
        self._results = []

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return the next trial against the round's base version (a no-op if the coach failed)."""
        if not self._queue:
            if self._base is None:
                current = info.get("current_version_id") or observation.get("version")
                self._base = str(current) if current else None
                self._view = _json_view(observation, info)
            view = self._view or _json_view(observation, info)
            self._queue = self.proposer.propose(view["observation"], view["info"], k=self.trials)
            if not self._queue:
                self.coach_failures.append(
                    {
                        "step": info.get("step"),
                        "errors": list(getattr(self.proposer, "failures", [])),
                    }
                )
                self._pending = Candidate(
                    edits=[NoOp()],
                    rationale="The coach model gave no usable reply.",
                    proposer=self.proposer.name,
                    kind="coach_failure",
                )
                return self._pending.to_action(base_version=self._base)
        self._pending = self._queue.pop(0)
        return self._pending.to_action(base_version=self._base)

    def update(self, transition: Transition) -> None:
        """Record the trial's reward; a failed-coach no-op is not logged as a change."""
        candidate, self._pending = self._pending, None
        info = transition.info
        if candidate is None:  # e.g. a resumed run replaying a step: keep it in the log
            edits = getattr(transition.action, "edits", transition.action)
            candidate = Candidate(
                edits=edits if isinstance(edits, str | list) else [edits],
                proposer=self.proposer.name,
                kind="replayed",
            )
        if candidate.kind == "coach_failure":
            self._close_round(transition.next_observation, info)
            return
        accepted = bool(info.get("accepted"))
        self.proposer.feedback(candidate, float(transition.reward), accepted, info)
        self._results.append(
            {
                "version": info.get("version_id"),
                "reward": float(transition.reward),
                "accepted": accepted,
                "view": _json_view(transition.next_observation, info),
            }
        )
        if not self._queue:
            self._close_round(transition.next_observation, info)

    def state_dict(self) -> dict[str, Any]:
        """Return the coach's memory: change log, failures, the round in progress."""
        return {
            **super().state_dict(),
            "proposer": self.proposer.state_dict(),
            "coach_failures": [dict(f) for f in self.coach_failures],
            "queue": [c.model_dump(mode="json") for c in self._queue],
            "results": [dict(r) for r in self._results],
            "base": self._base,
            "view": self._view,
            "pending": self._pending.model_dump(mode="json") if self._pending else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.proposer.load_state_dict(state["proposer"])
        self.coach_failures = [dict(f) for f in state.get("coach_failures", [])]
        self._queue = [Candidate.model_validate(c) for c in state.get("queue", [])]
        self._results = [dict(r) for r in state.get("results", [])]
        self._base = state.get("base")
        self._view = state.get("view")
        pending = state.get("pending")
        self._pending = Candidate.model_validate(pending) if pending else None


def example_reply(block: str, info: Mapping[str, Any]) -> str:
    """Return the filled JSON example the guidelines show, made from the worst example shown.

    Small models copy the example they are shown. Measured with the 0.5B local model: with a
    fixed coffee example it proposed that coffee rule in most replies; with a placeholder in
    the example (``<what such messages have in common>``) it kept the placeholder in 7 of 9
    replies even when told to fill it in. Made from the report's own data, a copied example
    is still a relevant edit (a rule and a demonstration for a failing message) that the
    env's reward then judges.
    """
    rows = [r for r in info.get("examples") or () if isinstance(r, Mapping)]
    worst = next(
        (r for r in rows if r.get("reference") and float(r.get("score", 0.0)) < 0.99), None
    )
    message = " ".join(
        str((worst or {}).get("input", "Is espresso stronger than filter coffee?")).split()
    )
    reply = " ".join(str((worst or {}).get("reference", "I like coffee, too.")).split())
    return json.dumps(
        {
            "target_block": block,
            "directives": [
                f"ADD: If the message is like {json.dumps(message[:120], ensure_ascii=False)}, "
                f"reply with exactly: {reply}"
            ],
            "demos": [{"input": message[:300], "output": reply[:300]}],
            "rationale": "Messages like this one got other replies.",
        },
        ensure_ascii=False,
    )


def trial_hint(trial: int, trials: int, proposed: Sequence[Candidate]) -> str:
    """Return the note that asks a trial to differ from the round's earlier proposals."""
    if trials <= 1:
        return ""
    hint = (
        f"This is trial {trial + 1} of {trials}: propose a change that differs from the "
        "other trials."
    )
    if proposed:
        hint += "\nAlready proposed in this round:\n" + "\n".join(
            "- " + c.directive_text().replace("\n", " | ") for c in proposed
        )
    return hint
