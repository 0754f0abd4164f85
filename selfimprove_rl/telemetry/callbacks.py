"""What does a run give back to Phoenix? Its builds as prompt versions, its results, its tags.

:class:`PhoenixReporter` is the run callback behind the config's ``[phoenix]`` section:

* ``publish_prompt``: when the run ends (every split of the final build scored), each build
  the gate promoted is published, in promotion order, as a new version of the Phoenix prompt
  ``prompt_name`` (default: the prompt the traced calls were made with, from the
  checkpoint's ``provenance.phoenix_prompt``): system prompt, model, invocation parameters,
  and in the version's metadata its scores per split, the baseline's, the gate decision, the
  edits and the lineage. The ``candidate`` tag ends on the final build;
* ``promote_production``: the ``production`` tag moves to the final build (it is published
  first). Otherwise production moves only by ``selfimprove-rl promote RUN_DIR``
  (:func:`promote_run`);
* ``log_results``: the baseline and the final build are logged as Phoenix experiments over a
  dataset of the test samples and one of the holdout samples (one run per sample: the
  replayed output and its eval scores), so Phoenix's compare view shows them per sample.

Everything written is recorded in the run directory's ``phoenix.json``
(:class:`PhoenixRunRecord`), which also makes publishing idempotent: a resumed run, or
``promote`` after the fact, never publishes a build twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from selfimprove_rl.errors import ConfigError, TelemetryError
from selfimprove_rl.program_state import ProgramState
from selfimprove_rl.telemetry.optimizer_tracing import OptimizerTracer
from selfimprove_rl.telemetry.publish import (
    PRODUCTION_TAG,
    PhoenixPrompts,
    load_version,
    log_experiment,
    promote_version,
    publish_version,
)
from selfimprove_rl.telemetry.run_record import (
    RUN_RECORD,
    LoggedResult,
    PhoenixRunRecord,
    ProductionMove,
    PublishedBuild,
)

if TYPE_CHECKING:
    from selfimprove_rl.checkpoint import Action, Checkpoint
    from selfimprove_rl.config import ExperimentConfig
    from selfimprove_rl.registry import GateDecision, Registry
    from selfimprove_rl.runner import ExperimentRunner, RunCallback

RESULT_SPLITS = ("test", "holdout")


def phoenix_endpoint(config: ExperimentConfig) -> str | None:
    """The Phoenix a run reports to: ``phoenix.endpoint``, else a Phoenix data source's."""
    if config.phoenix.endpoint:
        return config.phoenix.endpoint
    return config.data.endpoint if config.data.kind == "phoenix" else None


def build_callbacks(config: ExperimentConfig) -> list[RunCallback]:
    """The run callbacks the config's ``[phoenix]`` section asks for (none by default).

    Raises:
        ConfigError: publishing, results or tracing are asked for without a Phoenix endpoint,
            or the optimizer would trace into the production project.
    """
    section = config.phoenix
    reporting = section.publish_prompt or section.promote_production or section.log_results
    if not (reporting or section.trace_optimizer):
        return []
    endpoint = phoenix_endpoint(config)
    if endpoint is None:
        asked = [
            name
            for name in ("publish_prompt", "promote_production", "log_results", "trace_optimizer")
            if getattr(section, name)
        ]
        raise ConfigError(
            f"phoenix.{', phoenix.'.join(asked)} need a Phoenix server: use a Phoenix data "
            "source (data.kind = 'phoenix') or set phoenix.endpoint = 'http://host:6006'."
        )
    callbacks: list[RunCallback] = []
    if reporting:
        callbacks.append(
            PhoenixReporter(
                endpoint,
                prompt_name=section.prompt_name,
                publish=section.publish_prompt or section.promote_production,
                promote=section.promote_production,
                log_results=section.log_results,
            )
        )
    if section.trace_optimizer:
        production = config.data.project if config.data.kind == "phoenix" else None
        callbacks.append(
            OptimizerTracer(endpoint, section.optimizer_project, production_project=production)
        )
    return callbacks


def default_prompt_name(config: ExperimentConfig, checkpoint: Checkpoint) -> str | None:
    """``phoenix.prompt_name``, else the Phoenix prompt the traced calls used, else None."""
    if config.phoenix.prompt_name:
        return config.phoenix.prompt_name
    source = checkpoint.provenance.phoenix_prompt or {}
    return source.get("name") or None


def split_scores(registry: Registry, version_id: str) -> dict[str, dict[str, Any]]:
    """A version's recorded scores: split -> aggregate, per eval, samples, failures."""
    record = registry.record(version_id)
    return {split: score.model_dump(mode="json") for split, score in record.scores.items()}


def publish_build(
    px: PhoenixPrompts,
    prompt_name: str,
    *,
    run_dir: Path,
    config: ExperimentConfig,
    registry: Registry,
    checkpoint: Checkpoint,
    version_id: str,
    record: PhoenixRunRecord,
) -> PublishedBuild:
    """Publish one build of a run as a Phoenix prompt version (once) and record it.

    Returns:
        The publication (the existing one when the build was already published).

    Raises:
        TelemetryError: Phoenix refused the version.
    """
    build = registry.build(version_id)
    if isinstance(build.state, ProgramState):
        program, base_actions = checkpoint.as_program()
        actions = build.state.to_actions(base_actions)
        entries = [
            _publish_one(
                px,
                f"{prompt_name}-{node}",
                actions[node],
                run_dir=run_dir,
                config=config,
                registry=registry,
                checkpoint=checkpoint,
                version_id=version_id,
                record=record,
                node=node,
            )
            for node in program.order
        ]
        return entries[program.order.index(program.output_name)]
    return _publish_one(
        px,
        prompt_name,
        build.state.to_action(checkpoint.action),
        run_dir=run_dir,
        config=config,
        registry=registry,
        checkpoint=checkpoint,
        version_id=version_id,
        record=record,
    )


def _publish_one(
    px: PhoenixPrompts,
    prompt_name: str,
    action: Action,
    *,
    run_dir: Path,
    config: ExperimentConfig,
    registry: Registry,
    checkpoint: Checkpoint,
    version_id: str,
    record: PhoenixRunRecord,
    node: str | None = None,
) -> PublishedBuild:
    """Publish one action of a build (a program's: one node's) once, and record it."""
    existing = record.published_for(version_id, node)
    if existing is not None:
        return existing
    build = registry.build(version_id)
    baseline_id = registry.baseline_id
    earlier = [p for p in record.published if p.prompt_name == prompt_name]
    previous = earlier[-1].phoenix_version_id if earlier else None
    source = checkpoint.provenance.phoenix_prompt or {}
    if previous is None and source.get("name") == prompt_name:
        previous = source.get("version_id")
    decision = next((d for d in registry.decisions if d.candidate_id == version_id), None)
    scores = split_scores(registry, version_id)
    test = scores.get("test", {}).get("aggregate")
    base_test = split_scores(registry, baseline_id).get("test", {}).get("aggregate")
    summary = f"selfimprove-rl {config.name} build {version_id}"
    if test is not None and base_test is not None:
        summary += f": test {test:.3f} (logged prompt {base_test:.3f})"
    published = publish_version(
        px,
        prompt_name,
        action,
        scores=scores,
        metadata={
            "run": run_dir.name,
            "experiment": config.name,
            "policy": config.policy.name,
            "backend": config.backend.describe(),
            "registry_version": version_id,
            "node": node,
            "parent_phoenix_version": previous,
            "lineage": registry.lineage(version_id),
            "edits": build.directive,
            "gate": None if decision is None else decision.model_dump(mode="json"),
            "baseline_scores": split_scores(registry, baseline_id),
            "data": _data_note(checkpoint),
        },
        description=summary,
    )
    entry = PublishedBuild(
        registry_version=version_id,
        phoenix_version_id=published.version_id,
        prompt_name=prompt_name,
        node=node,
        scores={split: float(s["aggregate"]) for split, s in scores.items()},
        published_at=datetime.now(UTC),
    )
    record.published.append(entry)
    record.save(run_dir)
    return entry


def _data_note(checkpoint: Checkpoint) -> dict[str, Any]:
    provenance = checkpoint.provenance
    return {
        "source": provenance.source,
        "project": provenance.project,
        "since": provenance.since.isoformat() if provenance.since else None,
        "until": provenance.until.isoformat() if provenance.until else None,
        "samples": len(checkpoint.samples),
    }


def results_dataset_name(config: ExperimentConfig, registry: Registry, split: str) -> str:
    """``<experiment>-<run start, UTC>-<split>``: one Phoenix dataset per run and split."""
    started = registry.build(registry.baseline_id).created_at.astimezone(UTC)
    return f"{config.name}-{started:%Y%m%dT%H%M%SZ}-{split}"


def _production_id(px: PhoenixPrompts, prompt_name: str) -> str | None:
    try:
        return load_version(px, prompt_name, tag=PRODUCTION_TAG).version_id
    except TelemetryError:
        return None


class PhoenixReporter:
    """Publishes a run's builds, moves ``production`` on request, logs results back.

    Args:
        endpoint: the Phoenix base URL.
        prompt_name: the Phoenix prompt to publish under (default: the prompt the traced calls
            used, from the checkpoint).
        publish: publish every promoted build at the end of the run.
        promote: move ``production`` to the final build (implies ``publish``).
        log_results: log baseline and final build on test and holdout as experiments.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        prompt_name: str | None = None,
        publish: bool = True,
        promote: bool = False,
        log_results: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.prompt_name = prompt_name
        self.publish = publish or promote
        self.promote = promote
        self.log_results = log_results
        self.record: PhoenixRunRecord | None = None

    def on_start(self, run: ExperimentRunner) -> None:
        """Resolve the prompt name before any work, so a missing one fails fast."""
        assert run.checkpoint is not None
        self.record = PhoenixRunRecord.load(run.run_dir, endpoint=self.endpoint)
        if self.publish:
            name = self.prompt_name or default_prompt_name(run.config, run.checkpoint)
            if name is None:
                raise ConfigError(
                    "phoenix.publish_prompt needs a prompt name: the traced calls carried no "
                    "Phoenix prompt version, so set phoenix.prompt_name = 'my-prompt'."
                )
            self.prompt_name = name
        self.record.prompt_name = self.prompt_name
        self.record.source_prompt = run.checkpoint.provenance.phoenix_prompt
        self.record.save(run.run_dir)

    def on_promotion(self, run: ExperimentRunner, version_id: str, decision: GateDecision) -> None:
        """Nothing yet: builds are published when the run ends, with every split scored."""

    def on_finish(self, run: ExperimentRunner, summary: dict[str, Any]) -> None:
        """Publish, promote and log results as configured; records all in ``phoenix.json``.

        Raises:
            TelemetryError: Phoenix refused a write (the run's own files are complete).
        """
        if self.record is None:
            self.on_start(run)
        record = self.record
        assert record is not None and run.checkpoint is not None
        registry = run.registry
        live_id = registry.live_id
        with PhoenixPrompts(self.endpoint) as px:
            if self.publish and self.prompt_name is not None:
                promoted = [v for v in registry.promoted_ids if v != registry.baseline_id]
                note = "No build passed the gate: nothing was published."
                if live_id == registry.baseline_id and note not in record.notes:
                    record.notes.append(note)
                for version_id in promoted:
                    publish_build(
                        px,
                        self.prompt_name,
                        run_dir=run.run_dir,
                        config=run.config,
                        registry=registry,
                        checkpoint=run.checkpoint,
                        version_id=version_id,
                        record=record,
                    )
                moved = record.production is not None and (
                    record.production.registry_version == live_id
                )
                if self.promote and live_id != registry.baseline_id and not moved:
                    entries = record.published_nodes(live_id)
                    assert entries
                    for entry in entries:  # a program moves every node's prompt
                        _move_production(px, entry, record, by="run")
            if self.log_results:
                self._log_results(px, run, record)
        record.save(run.run_dir)

    def _log_results(
        self, px: PhoenixPrompts, run: ExperimentRunner, record: PhoenixRunRecord
    ) -> None:
        env = run.env.unwrapped
        registry = run.registry
        roles: dict[str, Literal["baseline", "promoted"]] = {registry.baseline_id: "baseline"}
        roles.setdefault(registry.live_id, "promoted")
        done = {(r.split, r.registry_version) for r in record.experiments}
        for split in RESULT_SPLITS:
            samples = env.splits.by_name(split)
            dataset_name = results_dataset_name(run.config, registry, split)
            for version_id, role in roles.items():
                if (split, version_id) in done:
                    continue
                report, table = env.evaluate_version(version_id, split)
                outputs = {o.sample_id: o.text for o in report.outcomes if o.ok}
                published = record.published_for(version_id)
                logged = log_experiment(
                    px,
                    dataset_name=dataset_name,
                    samples=samples,
                    table=table,
                    outputs=outputs,
                    experiment_name=f"{role} {version_id} ({split})",
                    description=f"selfimprove-rl run {run.run_dir.name}: the {role} prompt "
                    f"replayed on the {split} split.",
                    metadata={
                        "run": run.run_dir.name,
                        "role": role,
                        "registry_version": version_id,
                        "split": split,
                        "phoenix_prompt_version": published.phoenix_version_id
                        if published
                        else None,
                        "system_prompt": registry.build(version_id).state.render(),
                    },
                )
                record.experiments.append(
                    LoggedResult(
                        split=split,
                        role=role,
                        registry_version=version_id,
                        aggregate=table.aggregate(),
                        dataset_name=dataset_name,
                        dataset_id=logged.dataset_id,
                        experiment_id=logged.experiment_id,
                        url=logged.url,
                    )
                )
                record.save(run.run_dir)


def _move_production(
    px: PhoenixPrompts,
    entry: PublishedBuild,
    record: PhoenixRunRecord,
    *,
    by: Literal["run", "promote"],
) -> ProductionMove:
    previous = _production_id(px, entry.prompt_name)
    if previous != entry.phoenix_version_id:
        promote_version(
            px,
            entry.phoenix_version_id,
            description=f"selfimprove-rl build {entry.registry_version}",
        )
    move = ProductionMove(
        registry_version=entry.registry_version,
        phoenix_version_id=entry.phoenix_version_id,
        previous_version_id=previous,
        by=by,
        moved_at=datetime.now(UTC),
    )
    record.production = move
    return move


class PromotionResult(BaseModel):
    """What :func:`promote_run` did."""

    endpoint: str
    prompt_name: str
    registry_version: str
    phoenix_version_id: str
    previous_version_id: str | None
    published_now: bool
    already_production: bool
    scores: dict[str, float]

    def describe(self) -> str:
        """One paragraph for the command line."""
        scores = ", ".join(f"{split} {value:.3f}" for split, value in self.scores.items())
        lines = []
        if self.published_now:
            lines.append(
                f"published build {self.registry_version} as version "
                f"{self.phoenix_version_id} of prompt {self.prompt_name!r}"
            )
        if self.already_production:
            lines.append(
                f"production of prompt {self.prompt_name!r} at {self.endpoint} is already "
                f"version {self.phoenix_version_id} (build {self.registry_version}); nothing moved"
            )
        else:
            before = self.previous_version_id or "no version"
            lines.append(
                f"moved 'production' of prompt {self.prompt_name!r} at {self.endpoint}: "
                f"{before} -> {self.phoenix_version_id} (build {self.registry_version}"
                + (f"; {scores})" if scores else ")")
            )
        return "\n".join(lines)


def promote_run(
    run_dir: str | Path,
    *,
    version: str | None = None,
    endpoint: str | None = None,
    prompt_name: str | None = None,
) -> PromotionResult:
    """Move ``production`` to a build of a finished run (publishing it first if needed).

    Args:
        run_dir: the run directory (``config.json``, ``summary.json``, ``versions.jsonl``).
        version: the build (registry id, e.g. ``v0003``); default: the run's promoted build.
            It must be a build the gate promoted (or the baseline, to roll back).
        endpoint: the Phoenix URL (default: from ``phoenix.json`` or the run's config).
        prompt_name: the Phoenix prompt (default: from ``phoenix.json``, the config, or the
            prompt the traced calls used).

    Returns:
        What moved.

    Raises:
        ConfigError: not a finished run directory, an unknown or unpromoted version, or no
            endpoint or prompt name to use.
        TelemetryError: Phoenix refused.
    """
    folder = Path(run_dir)
    run = _FinishedRun.load(folder)
    url = endpoint or (PhoenixRunRecord.load(folder).endpoint if run.has_record else None)
    url = url or phoenix_endpoint(run.config)
    if url is None:
        raise ConfigError(
            f"No Phoenix endpoint for {folder}: its data did not come from Phoenix; pass "
            "--endpoint http://host:6006."
        )
    record = PhoenixRunRecord.load(folder, endpoint=url)
    record.endpoint = url
    name = prompt_name or record.prompt_name or default_prompt_name(run.config, run.checkpoint)
    if name is None:
        raise ConfigError(
            "No Phoenix prompt name: the run published nothing and its traced calls carried "
            "no prompt; pass --prompt NAME."
        )
    chosen = run.promotable(version)
    with PhoenixPrompts(url) as px:
        entry, published_now = _published_entry(px, run, record, chosen, name)
        record.prompt_name = record.prompt_name or name
        for node_entry in record.published_nodes(chosen):  # a program: every node's prompt
            if node_entry.node is not None and node_entry is not entry:
                _move_production(px, node_entry, record, by="promote")
        move = _move_production(px, entry, record, by="promote")
    record.save(folder)
    return PromotionResult(
        endpoint=url,
        prompt_name=entry.prompt_name,
        registry_version=chosen,
        phoenix_version_id=entry.phoenix_version_id,
        previous_version_id=move.previous_version_id,
        published_now=published_now,
        already_production=move.previous_version_id == entry.phoenix_version_id,
        scores={
            split: entry.scores[split]
            for split in ("train", "test", "holdout")
            if split in entry.scores
        },
    )


class _FinishedRun:
    """The files of a finished run directory that ``promote`` reads."""

    def __init__(self, folder: Path) -> None:
        from selfimprove_rl.checkpoint import Checkpoint
        from selfimprove_rl.config import parse_config
        from selfimprove_rl.registry import Registry

        self.folder = folder
        self.config = parse_config(
            json.loads((folder / "config.json").read_text(encoding="utf-8")),
            source=str(folder / "config.json"),
        )
        self.summary: Mapping[str, Any] = json.loads(
            (folder / "summary.json").read_text(encoding="utf-8")
        )
        self.registry = Registry(folder / "versions.jsonl")
        self.checkpoint = Checkpoint.load(folder / "checkpoint.json")
        self.has_record = (folder / RUN_RECORD).exists()

    @classmethod
    def load(cls, folder: Path) -> _FinishedRun:
        """Read a finished run directory.

        Raises:
            ConfigError: a file a finished run writes is missing.
        """
        missing = [
            name
            for name in ("config.json", "summary.json", "versions.jsonl", "checkpoint.json")
            if not (folder / name).exists()
        ]
        if missing:
            raise ConfigError(
                f"{folder} is not a finished run directory (missing {', '.join(missing)}); "
                "pass the folder `selfimprove-rl run` wrote, after the run ended."
            )
        return cls(folder)

    def promotable(self, version: str | None) -> str:
        """Return ``version`` (default: the promoted build) once the gate is known to pass it.

        Raises:
            ConfigError: an unknown build, or one the gate did not promote.
        """
        registry = self.registry
        chosen = version or str(self.summary["promoted_version"])
        if chosen not in registry:
            raise ConfigError(
                f"Unknown build {chosen!r} in {self.folder}; promoted builds: "
                f"{registry.promoted_ids}."
            )
        if chosen not in registry.promoted_ids:
            raise ConfigError(
                f"Build {chosen} did not pass the gate; only a promoted build goes to "
                f"production: {registry.promoted_ids}."
            )
        return chosen


def _published_entry(
    px: PhoenixPrompts, run: _FinishedRun, record: PhoenixRunRecord, chosen: str, name: str
) -> tuple[PublishedBuild, bool]:
    """Return the Phoenix version of build ``chosen``, publishing it now when it is not yet.

    The baseline, when the traced calls used prompt ``name``, is that version itself.
    Returns the entry and whether it was published by this call.
    """
    nodes = record.published_nodes(chosen)
    entry = record.published_for(chosen) or (nodes[-1] if nodes else None)
    if entry is not None:
        return entry, False
    source = run.checkpoint.provenance.phoenix_prompt or {}
    if chosen == run.registry.baseline_id and source.get("name") == name:
        scores = split_scores(run.registry, chosen)
        baseline = PublishedBuild(
            registry_version=chosen,
            phoenix_version_id=source["version_id"],
            prompt_name=name,
            scores={split: value["aggregate"] for split, value in scores.items()},
            published_at=datetime.now(UTC),
        )
        return baseline, False
    published = publish_build(
        px,
        name,
        run_dir=run.folder,
        config=run.config,
        registry=run.registry,
        checkpoint=run.checkpoint,
        version_id=chosen,
        record=record,
    )
    return published, True
