"""How is a ProgramEnv built from names? The entry point behind ``gymnasium.make``.

``gymnasium.make("selfimprove_rl/ProgramEnv-v0")`` with no arguments builds the shipped
``support_pipeline`` (a router labelling the ``support_intents`` messages, a responder
answering from the label) on the simulated model (``sim-large``) from its blank starting
prompts; no API key is needed. Every argument can be overridden through ``make`` keyword
arguments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.program_env import ProgramEnv, ProgramEnvConfig
from selfimprove_rl.backend import Backend
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Checkpoint
from selfimprove_rl.errors import DataError
from selfimprove_rl.evals import Evaluator
from selfimprove_rl.evals.factory import build_evaluators
from selfimprove_rl.program_data import load_pipeline, load_pipeline_file, pipeline_names
from selfimprove_rl.registry import Registry
from selfimprove_rl.replay import ReplayConfig


def load_program_source(data: str | Path | Checkpoint, *, model: str) -> Checkpoint:
    """Return a program checkpoint from a shipped pipeline, a definition file or a checkpoint.

    Args:
        data: a :class:`Checkpoint`, a shipped pipeline name (``support_pipeline``), a
            pipeline definition ``.json`` (see :mod:`selfimprove_rl.program_data`), or a
            checkpoint ``.json`` (a single-call checkpoint is a one-node program).
        model: every node's starting model for pipeline data (checkpoints keep theirs).

    Raises:
        DataError: a file that is neither a checkpoint nor a pipeline definition.
    """
    if isinstance(data, Checkpoint):
        return data
    if str(data) in pipeline_names():
        return load_pipeline(str(data), model=model)
    path = Path(data)
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"Expects a shipped pipeline ({', '.join(pipeline_names())}), a pipeline definition "
            f"or a checkpoint JSON, got {str(data)!r} ({exc})."
        ) from exc
    if isinstance(head, dict) and "samples" in head:
        return Checkpoint.load(path)
    return load_pipeline_file(path, model=model)


def make_program_env(
    *,
    data: str | Path | Checkpoint = "support_pipeline",
    model: str | None = None,
    backend: Backend | dict[str, Any] | None = None,
    evaluators: Sequence[Evaluator] | None = None,
    config: ProgramEnvConfig | dict[str, Any] | None = None,
    registry: Registry | None = None,
    cache: ResponseCache | None = None,
    replay_config: ReplayConfig | dict[str, Any] | None = None,
    render_mode: str | None = None,
    **config_overrides: Any,
) -> ProgramEnv:
    """Build a :class:`ProgramEnv` from names and plain values.

    Args:
        data: see :func:`load_program_source`.
        model: a model for every node (default: ``sim-large`` for pipeline data, else as
            logged per node).
        backend: which server answers (default: the in-process simulated model).
        evaluators: default: built from the checkpoint's eval constants, judged on ``backend``.
        config: env options.
        registry: where program versions live (default: in memory).
        cache: the response cache (default: a new in-memory one; a run passes its own).
        replay_config: the replay's concurrency, retries, timeouts and failure thresholds.
        render_mode: ``"ansi"`` or ``None``.
        **config_overrides: env options merged on top of ``config``.

    Returns:
        The environment (not wrapped; ``gymnasium.make`` adds its wrappers).
    """
    resolved_backend = (
        backend if isinstance(backend, Backend) else Backend.model_validate(backend or {})
    )
    checkpoint = load_program_source(data, model=model or "sim-large")
    options = config.model_dump() if isinstance(config, ProgramEnvConfig) else dict(config or {})
    options.update(config_overrides)
    env_config = ProgramEnvConfig.model_validate(options)
    if evaluators is None:
        evaluators = build_evaluators(
            checkpoint.eval_constants,
            judge_llm_kwargs=resolved_backend.phoenix_llm_kwargs(),
            target_model=model or checkpoint.action.model,
        )
    return ProgramEnv(
        checkpoint,
        resolved_backend.async_client(),
        evaluators,
        env_config,
        model=model,
        cache=cache,
        replay_config=(
            replay_config
            if isinstance(replay_config, ReplayConfig) or replay_config is None
            else ReplayConfig.model_validate(replay_config)
        ),
        registry=registry,
        render_mode=render_mode,
    )
