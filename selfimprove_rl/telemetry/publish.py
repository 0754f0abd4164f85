"""How does a new build reach the application, and its scores the team? Prompts, experiments.

Prompts: a build is published as a new version of a named Phoenix prompt — the system
message, the model and the invocation parameters, with its scores in the version's
``metadata`` — and tagged ``candidate``. The ``production`` tag moves only when
:func:`promote_version` is called, so an application that loads its prompt by tag
(:func:`load_version`, or ``client.prompts.get(prompt_identifier=..., tag="production")``)
changes only on purpose. Tags are unique per prompt: tagging a version moves the tag to it.

Scores: :func:`log_experiment` records a scored prompt version as a Phoenix *experiment* over
a *dataset* of the checkpoint's samples (one example per sample, linked to its span): one run
per sample holding the replayed output, one evaluation per eval (score, label, explanation),
the version and aggregate scores in the experiment metadata. It uses the public phoenix-client
3.5 calls ``datasets.create_dataset``, ``experiments.create``, ``experiments.log_run`` and
``experiments.log_evaluation``; Phoenix's compare view then shows versions side by side.

API notes (phoenix-client 3.5 against Phoenix 20.x): the server stores ``metadata`` on a
prompt version, but the client's ``PromptVersion`` neither sends nor returns it; publishing
therefore extends ``PromptVersion`` to include it, and :func:`load_version` reads it with a
plain GET on the same REST route the client uses. The system prompt is stored with
``template_format="NONE"`` so braces in it are never treated as template variables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.checkpoint import Action, Demo, Sample
from selfimprove_rl.errors import TelemetryError
from selfimprove_rl.telemetry.tracing import split_endpoint

if TYPE_CHECKING:
    import httpx

    from selfimprove_rl.evals.base import ScoreTable

CANDIDATE_TAG = "candidate"
PRODUCTION_TAG = "production"
METADATA_KEY = "selfimprove"


class PublishedPrompt(BaseModel):
    """One version of a Phoenix prompt, as this package reads and writes it."""

    model_config = ConfigDict(frozen=True)

    prompt_name: str
    version_id: str
    system_prompt: str
    model: str
    demos: tuple[Demo, ...] = Field(
        default=(), description="Few-shot turns stored after the system message."
    )
    model_provider: str = "OPENAI"
    invocation_parameters: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)

    def to_action(self) -> Action:
        """The :class:`Action` this version encodes."""
        extra = dict(self.invocation_parameters)
        return Action(
            system_prompt=self.system_prompt,
            model=self.model,
            demos=self.demos,
            temperature=extra.pop("temperature", None),
            top_p=extra.pop("top_p", None),
            max_tokens=extra.pop("max_tokens", None),
            seed=extra.pop("seed", None),
            extra_parameters=extra,
        )

    def request(self, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Keyword arguments for ``client.chat.completions.create`` with this version.

        Args:
            messages: the conversation after the system prompt and the demos.
        """
        return {
            "model": self.model,
            "messages": [*self.to_action().prefix_messages(), *messages],
            **self.invocation_parameters,
        }


class PhoenixPrompts:
    """Publishes, tags and loads prompt versions and logs experiments on one Phoenix server.

    Args:
        endpoint: the Phoenix base URL.
        api_key: for a Phoenix with authentication.
        timeout: seconds per request.
    """

    def __init__(self, endpoint: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        import httpx
        from phoenix.client import Client

        self.endpoint = split_endpoint(endpoint)[0]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http: httpx.Client = httpx.Client(
            base_url=self.endpoint, headers=headers, timeout=timeout
        )
        self.client = Client(http_client=self.http)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()

    def __enter__(self) -> PhoenixPrompts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prompts(target: PhoenixPrompts | str) -> PhoenixPrompts:
    return target if isinstance(target, PhoenixPrompts) else PhoenixPrompts(target)


def publish_version(
    phoenix: PhoenixPrompts | str,
    prompt_name: str,
    action: Action,
    *,
    scores: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    description: str | None = None,
    tags: Sequence[str] = (CANDIDATE_TAG,),
    model_provider: str = "OPENAI",
) -> PublishedPrompt:
    """Publish ``action`` as a new version of the Phoenix prompt ``prompt_name``.

    The prompt is created when missing. ``production`` is refused here: use
    :func:`promote_version`.

    Args:
        phoenix: a :class:`PhoenixPrompts` or a Phoenix base URL.
        prompt_name: the Phoenix prompt (letters, digits, ``-`` and ``_``).
        action: system prompt, model and invocation parameters to publish.
        scores: stored under ``metadata["selfimprove"]["scores"]`` (e.g. per split, per eval).
        metadata: more keys for ``metadata["selfimprove"]`` (run id, parent version, diff...).
        description: the version description shown in Phoenix.
        tags: tags to put on the new version (default ``candidate``).
        model_provider: Phoenix's provider name for the model (``OPENAI``...).

    Returns:
        The published version, with its Phoenix id.

    Raises:
        TelemetryError: Phoenix refused the version or the tag, or ``tags`` holds production.
    """
    import httpx
    from phoenix.client.types.prompts import PromptVersion

    if PRODUCTION_TAG in tags:
        raise TelemetryError(
            f"publish_version() does not set the {PRODUCTION_TAG!r} tag; publish, then call "
            "promote_version() when the build should go live."
        )
    px = _prompts(phoenix)
    version_metadata = {
        METADATA_KEY: {
            **dict(metadata or {}),
            "scores": dict(scores or {}),
            "published_at": datetime.now(UTC).isoformat(),
        }
    }

    class _VersionWithMetadata(PromptVersion):
        """``PromptVersion`` that also sends the version metadata the server stores."""

        def _dumps(self) -> Any:
            data: dict[str, Any] = dict(super()._dumps())
            data["metadata"] = version_metadata
            return data

    request = {
        "model": action.model,
        "messages": action.prefix_messages(),
        **action.invocation_parameters(),
    }
    try:
        version = _VersionWithMetadata.from_openai(
            cast(Any, request),
            template_format="NONE",
            description=description,
            model_provider=cast(Any, model_provider),
        )
        created = px.client.prompts.create(name=prompt_name, version=version)
        version_id = str(created.id)
        for tag in tags:
            px.client.prompts.tags.create(prompt_version_id=version_id, name=tag)
    except (httpx.HTTPError, ValueError) as exc:
        raise TelemetryError(
            f"Phoenix at {px.endpoint} did not accept a version of prompt {prompt_name!r}: "
            f"{_http_detail(exc)}"
        ) from exc
    return load_version(px, prompt_name, version_id=version_id)


def promote_version(
    phoenix: PhoenixPrompts | str,
    version_id: str,
    *,
    tag: str = PRODUCTION_TAG,
    description: str | None = None,
) -> None:
    """Move ``tag`` (``production`` by default) to the prompt version ``version_id``.

    Raises:
        TelemetryError: Phoenix refused (e.g. an unknown version id).
    """
    import httpx

    px = _prompts(phoenix)
    try:
        px.client.prompts.tags.create(
            prompt_version_id=version_id, name=tag, description=description
        )
    except httpx.HTTPError as exc:
        raise TelemetryError(
            f"Could not tag prompt version {version_id!r} as {tag!r}: {_http_detail(exc)}"
        ) from exc


def load_version(
    phoenix: PhoenixPrompts | str,
    prompt_name: str,
    *,
    tag: str | None = None,
    version_id: str | None = None,
) -> PublishedPrompt:
    """Load a prompt version by tag, by id, or the latest one.

    Raises:
        TelemetryError: no such prompt, tag or version, or a version this package cannot read
            (no system message).
    """
    import httpx

    px = _prompts(phoenix)
    if version_id is not None:
        route = f"v1/prompt_versions/{version_id}"
    elif tag is not None:
        route = f"v1/prompts/{prompt_name}/tags/{tag}"
    else:
        route = f"v1/prompts/{prompt_name}/latest"
    try:
        response = px.http.get(route)
        response.raise_for_status()
        data = response.json()["data"]
        version = px.client.prompts.get(prompt_version_id=data["id"])
        tags = [t["name"] for t in px.client.prompts.tags.list(prompt_version_id=data["id"])]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        what = f"tag {tag!r}" if tag else f"version {version_id!r}" if version_id else "latest"
        raise TelemetryError(
            f"No {what} of Phoenix prompt {prompt_name!r} at {px.endpoint}: {_http_detail(exc)}"
        ) from exc
    formatted = version.format()
    messages = list(formatted.messages)
    kwargs = dict(formatted.kwargs)
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    if not system or not isinstance(system[0].get("content"), str):
        raise TelemetryError(
            f"Prompt {prompt_name!r} version {data['id']} has no plain system message; "
            "selfimprove-rl publishes and reads single-system-message prompts."
        )
    model = str(kwargs.pop("model", data.get("model_name")))
    return PublishedPrompt(
        prompt_name=prompt_name,
        version_id=str(data["id"]),
        system_prompt=str(system[0]["content"]),
        model=model,
        demos=_demos_after_system(messages[messages.index(system[0]) + 1 :]),
        model_provider=str(data.get("model_provider", "OPENAI")),
        invocation_parameters=kwargs,
        description=data.get("description") or None,
        metadata=dict(data.get("metadata") or {}),
        tags=sorted(tags),
    )


def _demos_after_system(messages: Sequence[Mapping[str, Any]]) -> tuple[Demo, ...]:
    """Read the user/assistant pairs stored after the system message back into demos."""
    demos: list[Demo] = []
    for user, assistant in zip(messages[::2], messages[1::2], strict=False):
        if user.get("role") != "user" or assistant.get("role") != "assistant":
            break
        if not isinstance(user.get("content"), str) or not isinstance(
            assistant.get("content"), str
        ):
            break
        demos.append(Demo(input=str(user["content"]), output=str(assistant["content"])))
    return tuple(demos)


@contextmanager
def using_prompt_version(version: PublishedPrompt) -> Iterator[None]:
    """Mark the LLM calls inside the block as made with ``version``.

    The OpenInference instrumentors copy these onto each span: ``llm.prompt_template.version``
    (the version id) and the metadata keys ``phoenix.prompt.name``,
    ``phoenix.prompt.version_id`` and ``phoenix.prompt.tag``; the checkpoint builder reads
    them back into ``provenance.phoenix_prompt``. (It sets the context's metadata, replacing
    an outer ``using_metadata`` for the block.)
    """
    from openinference.instrumentation import using_attributes

    metadata = {
        "phoenix.prompt.name": version.prompt_name,
        "phoenix.prompt.version_id": version.version_id,
    }
    if version.tags:
        metadata["phoenix.prompt.tag"] = ",".join(version.tags)
    with using_attributes(
        metadata=metadata,
        prompt_template=version.system_prompt,
        prompt_template_version=version.version_id,
    ):
        yield


class LoggedExperiment(BaseModel):
    """Ids of what :func:`log_experiment` wrote."""

    dataset_id: str
    dataset_version_id: str | None = None
    experiment_id: str
    runs: int
    evaluations: int
    url: str | None = None


def log_experiment(
    phoenix: PhoenixPrompts | str,
    *,
    dataset_name: str,
    samples: Sequence[Sample],
    table: ScoreTable,
    outputs: Mapping[str, str] | None = None,
    experiment_name: str,
    metadata: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> LoggedExperiment:
    """Record one scored prompt version as a Phoenix experiment over ``samples``.

    The dataset ``dataset_name`` is created on first use (one example per sample: the
    conversation as input, the logged output as expected output, the sample and span ids as
    metadata) and reused afterwards, so every version of a run lands in one comparison.

    Args:
        phoenix: a :class:`PhoenixPrompts` or a Phoenix base URL.
        dataset_name: the dataset of the samples (e.g. ``"<run>-holdout"``).
        samples: the samples scored (their ids must cover ``table.sample_ids``).
        table: per-sample scores, labels and explanations of the version.
        outputs: sample id → the version's output text.
        experiment_name: e.g. the version id or fingerprint.
        metadata: experiment metadata (version, action, aggregate scores are added).
        description: experiment description.

    Returns:
        What was written.

    Raises:
        TelemetryError: Phoenix refused a write, or the table names unknown samples.
    """
    import httpx

    px = _prompts(phoenix)
    by_id = {s.sample_id: s for s in samples}
    unknown = [i for i in table.sample_ids if i not in by_id]
    if unknown:
        raise TelemetryError(
            f"The score table names {len(unknown)} samples not given to log_experiment(), "
            f"e.g. {unknown[:3]}; pass the samples that were scored."
        )
    try:
        dataset = _ensure_dataset(px, dataset_name, [by_id[i] for i in table.sample_ids])
        example_ids = {
            str((example.get("metadata") or {}).get("sample_id")): example["id"]
            for example in dataset.examples
        }
        experiment = px.client.experiments.create(
            dataset_id=dataset.id,
            dataset_version_id=dataset.version_id,
            experiment_name=experiment_name,
            experiment_description=description,
            experiment_metadata={
                **dict(metadata or {}),
                "aggregate": table.aggregate(),
                "per_eval": table.per_eval(),
                "samples": len(table.sample_ids),
                "failed": len(table.failed),
            },
        )
        experiment_id = str(experiment["id"])
        runs, evaluations = _log_runs(
            px, experiment_id, example_ids, table, outputs or {}, dataset_name
        )
    except httpx.HTTPError as exc:
        raise TelemetryError(
            f"Could not log experiment {experiment_name!r} to Phoenix at {px.endpoint}: "
            f"{_http_detail(exc)}"
        ) from exc
    return LoggedExperiment(
        dataset_id=str(dataset.id),
        dataset_version_id=str(dataset.version_id) if dataset.version_id else None,
        experiment_id=experiment_id,
        runs=runs,
        evaluations=evaluations,
        url=px.client.experiments.get_experiment_url(dataset.id, experiment_id),
    )


def _log_runs(
    px: PhoenixPrompts,
    experiment_id: str,
    example_ids: Mapping[str, Any],
    table: ScoreTable,
    outputs: Mapping[str, str],
    dataset_name: str,
) -> tuple[int, int]:
    """Log one experiment run per sample and its eval scores (none for a failed sample).

    Returns:
        The runs and the evaluations written.

    Raises:
        TelemetryError: the dataset has no example for a sample of the table.
    """
    runs = evaluations = 0
    now = datetime.now(UTC)
    for index, sample_id in enumerate(table.sample_ids):
        if sample_id not in example_ids:
            raise TelemetryError(
                f"Dataset {dataset_name!r} has no example for sample {sample_id!r}; use a "
                "new dataset name for a different sample set."
            )
        run = px.client.experiments.log_run(
            experiment_id=experiment_id,
            dataset_example_id=example_ids[sample_id],
            output={"content": outputs.get(sample_id)},
            start_time=now,
            end_time=now,
            error=table.failed.get(sample_id),
        )
        runs += 1
        if sample_id in table.failed:
            continue
        for name, values in table.scores.items():
            px.client.experiments.log_evaluation(
                experiment_run_id=str(run["id"]),
                name=name,
                annotator_kind="LLM",
                score=float(values[index]),
                label=_at(table.labels.get(name), index),
                explanation=_at(table.explanations.get(name), index),
                start_time=now,
            )
            evaluations += 1
    return runs, evaluations


def _ensure_dataset(px: PhoenixPrompts, name: str, samples: Sequence[Sample]) -> Any:
    """The dataset ``name`` with one example per sample (created or extended as needed)."""
    try:
        dataset = px.client.datasets.get_dataset(dataset=name)
    except ValueError:
        dataset = None
    except Exception as exc:  # the client raises HTTPStatusError for unknown names
        if "404" not in str(exc):
            raise
        dataset = None
    have = (
        {str((e.get("metadata") or {}).get("sample_id")) for e in dataset.examples}
        if dataset is not None
        else set()
    )
    missing = [s for s in samples if s.sample_id not in have]
    if dataset is not None and not missing:
        return dataset
    examples = [
        {
            "input": {"messages": s.chat_history},
            "output": {"content": s.output_text},
            "metadata": {"sample_id": s.sample_id, "span_id": s.span_id},
            **({"span_id": s.span_id} if s.span_id else {}),
        }
        for s in missing
    ]
    if dataset is None:
        return px.client.datasets.create_dataset(
            name=name,
            examples=examples,
            dataset_description="Logged samples scored by selfimprove-rl.",
        )
    return px.client.datasets.add_examples_to_dataset(dataset=name, examples=examples)


def _at(values: Sequence[str | None] | None, index: int) -> str | None:
    if values is None or index >= len(values):
        return None
    return values[index]


def _http_detail(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.text[:300]
        except Exception:
            body = ""
        return f"HTTP {response.status_code} {body}".strip()
    return json.dumps(str(exc))[1:-1]
