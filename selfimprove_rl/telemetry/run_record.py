"""What did a run write to Phoenix? ``phoenix.json``, the run directory's record of it.

:class:`PhoenixRunRecord` is shared by the reporter that publishes builds
(:mod:`selfimprove_rl.telemetry.callbacks`) and the tracer that traces the optimizer
(:mod:`selfimprove_rl.telemetry.optimizer_tracing`); it lives apart from both so that neither
imports the other. The record also makes publishing idempotent: a resumed run, or ``promote``
after the fact, never publishes a build twice.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from selfimprove_rl.errors import TelemetryError
from selfimprove_rl.fileio import atomic_write_text

RUN_RECORD = "phoenix.json"
RUN_RECORD_SCHEMA_VERSION = 1


class PublishedBuild(BaseModel):
    """One build published as a Phoenix prompt version (for a program: one node of it)."""

    registry_version: str
    phoenix_version_id: str
    prompt_name: str
    node: str | None = Field(default=None, description="The program node, for programs.")
    scores: dict[str, float] = Field(description="Split -> aggregate score at publication.")
    published_at: datetime


class ProductionMove(BaseModel):
    """The ``production`` tag moved to a build."""

    registry_version: str
    phoenix_version_id: str
    previous_version_id: str | None = None
    by: Literal["run", "promote"]
    moved_at: datetime


class LoggedResult(BaseModel):
    """One version's per-sample results logged as a Phoenix experiment."""

    split: str
    role: Literal["baseline", "promoted"]
    registry_version: str
    aggregate: float
    dataset_name: str
    dataset_id: str
    experiment_id: str
    url: str | None = None


class OptimizerTraceRecord(BaseModel):
    """Where the optimizer's own trace went."""

    project: str
    trace_id: str | None = None
    spans: int = 0


class PhoenixRunRecord(BaseModel):
    """``phoenix.json``: what a run wrote to Phoenix."""

    schema_version: int = RUN_RECORD_SCHEMA_VERSION
    endpoint: str
    prompt_name: str | None = None
    source_prompt: dict[str, str] | None = Field(
        default=None, description="The Phoenix prompt version the traced calls used."
    )
    published: list[PublishedBuild] = Field(default_factory=list)
    production: ProductionMove | None = None
    experiments: list[LoggedResult] = Field(default_factory=list)
    optimizer: OptimizerTraceRecord | None = None
    notes: list[str] = Field(default_factory=list)

    @classmethod
    def load(cls, run_dir: Path, *, endpoint: str | None = None) -> PhoenixRunRecord:
        """Read ``run_dir/phoenix.json``, or start a new record for ``endpoint``.

        Raises:
            TelemetryError: the file is unreadable, or missing and no endpoint is given.
        """
        path = run_dir / RUN_RECORD
        if path.exists():
            try:
                return cls.model_validate_json(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise TelemetryError(f"{path} is not a valid Phoenix run record: {exc}") from exc
        if endpoint is None:
            raise TelemetryError(f"{path} does not exist: this run wrote nothing to Phoenix.")
        return cls(endpoint=endpoint)

    def save(self, run_dir: Path) -> Path:
        """Write ``run_dir/phoenix.json`` atomically."""
        return atomic_write_text(run_dir / RUN_RECORD, self.model_dump_json(indent=2) + "\n")

    def published_for(
        self, registry_version: str, node: str | None = None
    ) -> PublishedBuild | None:
        """The publication of a build (of one node of a program build), if it was published."""
        return next(
            (
                p
                for p in self.published
                if p.registry_version == registry_version and p.node == node
            ),
            None,
        )

    def published_nodes(self, registry_version: str) -> list[PublishedBuild]:
        """Every publication of a build: one, or one per node of a program build."""
        return [p for p in self.published if p.registry_version == registry_version]
