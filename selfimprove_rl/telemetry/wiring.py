"""How does Phoenix plug into a run? The fetcher of Phoenix data and the ``[phoenix]`` callbacks.

The runner knows no telemetry; the composition root (the CLI, the demo, a script) passes
:func:`phoenix_integrations` to :func:`~selfimprove_rl.runner.run_experiment` or
:func:`~selfimprove_rl.compare.run_compare`, and a config with ``[data] kind = "phoenix"`` or
a ``[phoenix]`` section then works as documented there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfimprove_rl.hooks import Integrations
from selfimprove_rl.telemetry.builder import build_checkpoint
from selfimprove_rl.telemetry.callbacks import build_callbacks
from selfimprove_rl.telemetry.source import PhoenixSource

if TYPE_CHECKING:
    from selfimprove_rl.checkpoint import Checkpoint
    from selfimprove_rl.config import DataConfig


def fetch_phoenix_checkpoint(data: DataConfig, *, progress: bool) -> Checkpoint:
    """Fetch the spans and evals of ``data.project`` in ``[since, until)`` as a checkpoint.

    Args:
        data: a ``kind = "phoenix"`` data section (endpoint, project and since are set).
        progress: show the fetch's progress bars.

    Returns:
        The checkpoint built from the fetched telemetry.
    """
    assert data.endpoint and data.project and data.since  # DataConfig validates these
    source = PhoenixSource(data.endpoint, data.project, progress=progress)
    return build_checkpoint(source.fetch(since=data.since, until=data.until))


def phoenix_integrations() -> Integrations:
    """Return the Phoenix wiring: Phoenix data as a checkpoint, and the ``[phoenix]`` callbacks.

    Example:
        >>> wiring = phoenix_integrations()
        >>> sorted(wiring.fetchers), wiring.name
        (['phoenix'], 'phoenix')
    """
    return Integrations(
        fetchers={"phoenix": fetch_phoenix_checkpoint}, callbacks=build_callbacks, name="phoenix"
    )
