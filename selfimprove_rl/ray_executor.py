"""Run a comparison's runs on a Ray cluster: one Ray Core task per run.

``selfimprove-rl compare CONFIG --executor ray`` hands every (policy, seed) run to Ray instead
of local worker processes, for sweeps that outgrow one machine. Ray is an optional extra::

    pip install "selfimprove-rl[ray]"

Which cluster: ``--ray-address`` (``ray://head:10001`` for Ray Client, ``auto`` or
``head:6379`` from a node of the cluster), else the ``RAY_ADDRESS`` environment variable,
else a local Ray instance started for the command and stopped after it. A Ray session the
caller already started (``ray.init(...)`` in a script or test) is used as it is and left up.

What each task needs and gives back: every node needs ``selfimprove-rl`` installed (the same
version); the frozen checkpoint travels through Ray's object store, written on a node where
its path does not exist; each run writes its directory under the same absolute ``--out`` path
on its node and sends it back packed, so the driver's ``--out`` holds every run's directory
whether or not the nodes share a filesystem. ``module:Class`` policies are found in the
driver's current folder when the node sees it (one machine, or a shared filesystem); on
other clusters ship the module with Ray (e.g. ``RAY_RUNTIME_ENV`` or a ``runtime_env`` of the
session you start). The table is the one the local executor gives for the same seeds: runs
are seeded, and the records are sorted before the statistics.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from selfimprove_rl.compare import RunJob, RunRecord, run_one
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import atomic_write_text
from selfimprove_rl.hooks import Integrations


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "--executor ray needs Ray, which is an optional extra: pip install "
            "'selfimprove-rl[ray]' (or use the default local executor)."
        ) from exc
    return ray


def pack_dir(folder: str | Path) -> bytes:
    """Return a folder's files as a gzipped tar (paths relative to the folder)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(str(folder), arcname=".")
    return buffer.getvalue()


def unpack_dir(data: bytes, folder: str | Path) -> bool:
    """Unpack :func:`pack_dir`'s bytes into ``folder`` unless it already holds files.

    Returns:
        Whether anything was written (``False``: the run wrote here itself, e.g. the same
        machine or a shared filesystem).
    """
    target = Path(folder)
    if target.is_dir() and any(target.iterdir()):
        return False
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    return True


def run_shipped(
    job: RunJob,
    threshold: float | None,
    checkpoint: tuple[str, str] | None,
    sys_path: Sequence[str],
    integrations: Integrations | None = None,
) -> tuple[RunRecord, bytes | None]:
    """Run one job on whatever node this is (the body of the Ray task).

    Args:
        job: the run (config JSON, policy label, absolute run dir).
        threshold: the test score of "steps to threshold".
        checkpoint: ``(path, JSON text)`` of the frozen checkpoint, written when this node
            does not have that path.
        sys_path: folders to import ``module:Class`` policies from (the driver's current
            folder), used when they exist here.
        integrations: the outside systems the run may use, as the driver wired them.

    Returns:
        The run's record and its directory packed (``None`` when the run left none).
    """
    for entry in reversed(sys_path):
        if os.path.isdir(entry) and entry not in sys.path:
            sys.path.insert(0, entry)
    if checkpoint is not None and not Path(checkpoint[0]).exists():
        atomic_write_text(Path(checkpoint[0]), checkpoint[1])
    record = run_one(*job, threshold, integrations)
    run_dir = Path(job[2])
    return record, pack_dir(run_dir) if run_dir.is_dir() else None


class RayExecutor:
    """Run each job as one Ray task (``num_cpus`` per task) and yield records as they finish.

    Args:
        address: the cluster (default: ``RAY_ADDRESS``, else a local instance).
        cpus_per_run: CPUs Ray reserves for each run's task.
        num_cpus: CPUs of a local instance this executor starts (default: all).
    """

    def __init__(
        self, address: str | None = None, *, cpus_per_run: float = 1, num_cpus: int | None = None
    ) -> None:
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.num_cpus = num_cpus

    def _connect(self, ray: Any) -> bool:
        """Join or start a Ray session; returns whether this executor must shut it down."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        try:
            if address:
                ray.init(address=address, logging_level="WARNING")
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, logging_level="WARNING")
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = address or "a local Ray instance"
            raise ConfigError(
                f"Cannot start or reach {where}: {exc}. Check --ray-address / RAY_ADDRESS "
                "(ray://head:10001 for Ray Client, auto from a cluster node)."
            ) from exc
        return True

    def run(
        self,
        jobs: Sequence[RunJob],
        threshold: float | None,
        integrations: Integrations | None = None,
    ) -> Iterator[RunRecord]:
        """Run every job as a Ray task; yield the records in the order they finish.

        A task that Ray itself could not run (a node lost, ``selfimprove_rl`` missing on a
        node) is recorded as a failed run with Ray's reason, like a run that raised.

        Raises:
            ConfigError: Ray is not installed, or the cluster cannot be reached.
        """
        ray = _import_ray()
        started = self._connect(ray)
        try:
            yield from self._run(ray, jobs, threshold, integrations)
        finally:
            if started:
                ray.shutdown()

    def _run(
        self,
        ray: Any,
        jobs: Sequence[RunJob],
        threshold: float | None,
        integrations: Integrations | None,
    ) -> Iterator[RunRecord]:
        from ray.exceptions import RayError

        task = ray.remote(run_shipped).options(num_cpus=self.cpus_per_run, max_retries=0)
        checkpoints = {path: ray.put(_checkpoint(path)) for path in {_data_path(j) for j in jobs}}
        pending: dict[Any, RunJob] = {}
        for config_json, label, run_dir in jobs:
            job = (config_json, label, str(Path(run_dir).resolve()))
            ref = task.remote(
                job, threshold, checkpoints[_data_path(job)], [os.getcwd()], integrations
            )
            pending[ref] = (config_json, label, run_dir)
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            config_json, label, run_dir = pending.pop(ready)
            try:
                record, archive = ray.get(ready)
            except RayError as exc:
                yield _failed(config_json, label, run_dir, exc)
                continue
            if archive is not None:
                unpack_dir(archive, run_dir)
            yield record.model_copy(update={"run_dir": run_dir})


def _data_path(job: RunJob) -> str:
    import json

    data = json.loads(job[0]).get("data", {})
    return str(data.get("path")) if data.get("kind") == "checkpoint" else ""


def _checkpoint(path: str) -> tuple[str, str] | None:
    return (path, Path(path).read_text(encoding="utf-8")) if path else None


def _failed(config_json: str, label: str, run_dir: str, exc: Exception) -> RunRecord:
    import json

    seed = int(json.loads(config_json).get("seed", 0))
    reason = " ".join(str(exc).split())[:500]
    return RunRecord(
        policy=label, seed=seed, run_dir=run_dir, error=f"{type(exc).__name__}: {reason}"
    )
