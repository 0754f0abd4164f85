"""What does the composition root plug into a run? Callbacks, data fetchers, their factories.

The runner knows no integration: whatever talks to an outside system (Phoenix) reaches a run
through the types here, built by the caller that composes the application (the CLI, the
demo, a script) and passed in:

* :class:`RunCallback`: side-effect hooks on a run (publishing, tracing);
* :class:`CheckpointFetcher`: loads the checkpoint of a data kind the runner cannot read
  itself (``[data] kind = "phoenix"``);
* :class:`Integrations`: the fetchers by data kind and the factory of the callbacks a
  config's integration sections (``[phoenix]``) ask for.
  :func:`selfimprove_rl.telemetry.phoenix_integrations` builds the Phoenix one.

An :class:`Integrations` crosses process boundaries (``compare`` workers), so its
fetchers and factory are module-level functions, which pickle by reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from selfimprove_rl.checkpoint import Checkpoint
    from selfimprove_rl.config import DataConfig, ExperimentConfig
    from selfimprove_rl.registry import GateDecision
    from selfimprove_rl.runner import ExperimentRunner


class RunCallback(Protocol):
    """Hooks for side effects of a run (publishing to Phoenix, tracing the optimizer).

    Optional hooks, called when a callback defines them: ``on_start(run)`` (env and policy
    built), ``on_episode_start(run, episode)`` (before the env resets, and when a resumed run
    continues an episode), ``on_step_start(run, step)`` (before the policy acts),
    ``on_step_end(run, line)`` (the step committed), ``on_loop_end(run, reason)`` (before the
    final report), ``on_stage(run, stage)`` (fine-grained progress: ``"stepped"`` the env
    step returned, ``"gated"`` the gate decided, ``"saved"`` the run state was written,
    ``"logged"`` the step line was appended, ``"reset"`` a new episode started,
    ``"reported"`` the final scores are in), and ``on_close(run, error)`` (always, last;
    ``error`` is the exception ending the run); ``should_stop(run) -> str`` ends the run
    early when it returns a non-empty reason.
    """

    def on_promotion(self, run: ExperimentRunner, version_id: str, decision: GateDecision) -> None:
        """Called after the gate promotes a build."""
        ...

    def on_finish(self, run: ExperimentRunner, summary: dict[str, Any]) -> None:
        """Called once the summary is written."""
        ...


class CheckpointFetcher(Protocol):
    """Loads the checkpoint of a data kind from an outside system (e.g. Phoenix telemetry)."""

    def __call__(self, data: DataConfig, *, progress: bool) -> Checkpoint:
        """Return the checkpoint ``data`` describes (``progress``: show fetch bars)."""
        ...


CallbackFactory = Callable[["ExperimentConfig"], "list[RunCallback]"]
"""Builds the callbacks a config's integration sections (``[phoenix]``) ask for."""


@dataclass(frozen=True)
class Integrations:
    """The outside systems a run may use, as the composition root wires them.

    Attributes:
        fetchers: data kind -> the fetcher of its checkpoint (e.g. ``"phoenix"``).
        callbacks: the factory of the callbacks a config's ``[phoenix]`` section asks for;
            ``None`` when no integration is wired (a config asking for one is refused).
        name: what the wiring is, for error messages.
    """

    fetchers: Mapping[str, CheckpointFetcher] = field(default_factory=dict)
    callbacks: CallbackFactory | None = None
    name: str = "none"
