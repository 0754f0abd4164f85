"""How is a PromptEnv built from names? The entry point behind ``gymnasium.make``.

``gymnasium.make("selfimprove_rl/PromptEnv-v0")`` with no arguments builds the coffee/sports
mimic env on the simulated model (``sim-large``), no API key needed. Every argument can be
overridden through ``make`` keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from envs.prompt_env import PromptEnv, PromptEnvConfig
from selfimprove_rl.backend import Backend
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Checkpoint
from selfimprove_rl.errors import ConfigError, validation_summary
from selfimprove_rl.evals import Evaluator
from selfimprove_rl.evals.factory import build_evaluators
from selfimprove_rl.mimic import load_dataset, load_mimic_jsonl
from selfimprove_rl.registry import Registry
from selfimprove_rl.replay import ReplayConfig


def load_checkpoint_source(data: str | Path | Checkpoint, *, model: str) -> Checkpoint:
    """Return a checkpoint from a shipped data set name, a mimic JSONL, or a checkpoint JSON.

    Args:
        data: a :class:`Checkpoint`, a shipped data set name (``coffee_sports``), a path to a
            mimic JSONL file, or a path to a checkpoint ``.json`` file.
        model: the target model for mimic data (checkpoints keep their logged model).
    """
    if isinstance(data, Checkpoint):
        return data
    path = Path(data)
    if path.suffix == ".json":
        return Checkpoint.load(path)
    if path.suffix == ".jsonl" or path.exists():
        return load_mimic_jsonl(path, model=model)
    return load_dataset(str(data), model=model)


def make_prompt_env(
    *,
    data: str | Path | Checkpoint = "coffee_sports",
    model: str | None = None,
    backend: Backend | dict[str, Any] | None = None,
    evaluators: Sequence[Evaluator] | None = None,
    config: PromptEnvConfig | dict[str, Any] | None = None,
    registry: Registry | None = None,
    cache: ResponseCache | None = None,
    replay_config: ReplayConfig | dict[str, Any] | None = None,
    render_mode: str | None = None,
    **config_overrides: Any,
) -> PromptEnv:
    """Build a :class:`PromptEnv` from names and plain values.

    Args:
        data: see :func:`load_checkpoint_source`.
        model: the target model (default: the local model's alias on a ``local_llm``
            backend, ``sim-large`` for mimic data, else as logged).
        backend: which server answers (default: the in-process simulated model); a
            ``local_llm`` backend without ``base_url`` holds the local model server while the
            env is open (joining the one a run already holds; released by ``close``).
        evaluators: default: built from the checkpoint's eval constants, judged on ``backend``.
        config: env options.
        registry: where versions live (default: in memory).
        cache: the response cache (default: a new in-memory one); a run passes one on disk so
            a resumed run neither pays twice nor forgets what was paid.
        replay_config: concurrency, retries, timeouts and failure thresholds of the replay
            (a ``[replay]`` table).
        render_mode: ``"ansi"`` or ``None``.
        **config_overrides: env options merged on top of ``config``.

    Returns:
        The environment (not wrapped; ``gymnasium.make`` adds its wrappers).

    Raises:
        ConfigError: an env option is unknown or invalid (one line naming each).
    """
    resolved_backend = (
        backend if isinstance(backend, Backend) else Backend.model_validate(backend or {})
    )
    if resolved_backend.kind == "local_llm" and model is None:
        model = resolved_backend.local_options.alias
    parts: dict[str, Any] = {
        "data": data,
        "model": model,
        "evaluators": evaluators,
        "config": config,
        "registry": registry,
        "cache": cache,
        "replay_config": replay_config,
        "render_mode": render_mode,
        "config_overrides": config_overrides,
    }
    if resolved_backend.kind != "local_llm" or resolved_backend.base_url is not None:
        return _make(resolved_backend, PromptEnv, **parts)
    from selfimprove_rl.local_llm import acquire, release

    server = acquire(resolved_backend.local_options)
    try:
        served = resolved_backend.model_copy(update={"base_url": server.base_url})
        return _make(served, partial(_ServedPromptEnv, server=server), **parts)
    except BaseException:
        release(server)
        raise


def _make(
    resolved_backend: Backend,
    env_class: Callable[..., PromptEnv],
    *,
    data: str | Path | Checkpoint,
    model: str | None,
    evaluators: Sequence[Evaluator] | None,
    config: PromptEnvConfig | dict[str, Any] | None,
    registry: Registry | None,
    cache: ResponseCache | None,
    replay_config: ReplayConfig | dict[str, Any] | None,
    render_mode: str | None,
    config_overrides: dict[str, Any],
) -> PromptEnv:
    checkpoint = load_checkpoint_source(data, model=model or "sim-large")
    target_model = model or checkpoint.action.model
    try:
        base_config = (
            config
            if isinstance(config, PromptEnvConfig)
            else PromptEnvConfig.model_validate(config or {})
        )
        env_config = (
            base_config.model_copy(update=config_overrides) if config_overrides else base_config
        )
        env_config = PromptEnvConfig.model_validate(env_config.model_dump())
    except ValidationError as exc:
        raise ConfigError(
            "Invalid env options: "
            + validation_summary(exc, prefix="env.", known=PromptEnvConfig.model_fields)
        ) from exc
    if evaluators is None:
        evaluators = build_evaluators(
            checkpoint.eval_constants,
            judge_llm_kwargs=resolved_backend.phoenix_llm_kwargs(),
            target_model=target_model,
        )
    return env_class(
        checkpoint,
        resolved_backend.async_client(),
        evaluators,
        env_config,
        model=target_model,
        cache=cache,
        replay_config=_replay_config(replay_config, resolved_backend),
        registry=registry,
        render_mode=render_mode,
    )


def _replay_config(
    given: ReplayConfig | dict[str, Any] | None, backend: Backend
) -> ReplayConfig | None:
    """The replay settings: what the caller gave, with the backend's needs where it gave none."""
    if isinstance(given, ReplayConfig):
        return given
    defaults = backend.replay_defaults()
    if given is None and not defaults:
        return None
    return ReplayConfig.model_validate({**defaults, **(given or {})})


class _ServedPromptEnv(PromptEnv):
    """A PromptEnv that holds a local model server and gives it back when closed."""

    def __init__(self, *args: Any, server: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server = server

    def close(self) -> None:
        """Close the env, then release the local model server (once)."""
        try:
            super().close()
        finally:
            server, self._server = self._server, None
            if server is not None:
                from selfimprove_rl.local_llm import release

                release(server)
