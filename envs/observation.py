"""What does a policy see of a prompt version? The one builder of PromptEnv observations.

The env, the runner (restoring a policy after a kill) and the policies' version views all
show a version the same way, so they all call :func:`build_observation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from selfimprove_rl.prompt import PromptState

Observation = dict[str, Any]


def build_observation(state: PromptState, version_id: str, scores: Sequence[float]) -> Observation:
    """Return the observation of a prompt version.

    Args:
        state: the version's prompt state.
        version_id: the version's registry id.
        scores: the aggregate score, then one score per eval (clipped to [0, 1]).

    Returns:
        ``prompt`` (the rendered system message), ``blocks`` (each block's lines joined by
        newlines), ``demos`` (a tuple of ``(input, output)`` pairs), ``model``, ``version``
        and ``scores`` (float32).

    Example:
        >>> state = PromptState.from_text("Be kind.", model="sim-large")
        >>> observation = build_observation(state, "v0000", [0.5, 0.5])
        >>> observation["blocks"], observation["demos"]
        ({'general': 'Be kind.', 'sop': ''}, ())
    """
    return {
        "prompt": state.render(),
        "blocks": {b.name: "\n".join(b.lines) for b in state.blocks},
        "demos": tuple((demo.input, demo.output) for demo in state.demos),
        "model": state.model,
        "version": version_id,
        "scores": np.clip(np.asarray(list(scores), dtype=np.float32), 0.0, 1.0),
    }
