"""Which texts to embed ahead of time, so that a fresh process's first reset loads no model.

An env's reset replays the start prompt on a minibatch and scores it: the simulated model
embeds the inputs and the prompt's statements, the similarity eval the replies and the
references. On a new machine the first process to meet a text loads torch and the sentence
model for it (seconds). :func:`warm_up` does that once, at install time, for every shipped
data set: it replays each data set's seed prompt on all of its samples (train, test and
holdout), so every text a reset from the seed prompt can meet — whatever the minibatch —
lands in the on-disk embedding store (:mod:`selfimprove_rl.embeddings`). Vectors are stored
per text and do not depend on their batch mates, so warmed and computed vectors are equal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import BaseModel

from selfimprove_rl.embeddings import default_embedder
from selfimprove_rl.mimic import dataset_names

__all__ = ["WarmUpReport", "warm_up"]


class WarmUpReport(BaseModel):
    """What :func:`warm_up` did."""

    data_sets: list[str]
    texts_computed: int
    """Texts embedded by the model now (0: every text was already in the store)."""
    store: str | None
    """The on-disk store's path; ``None``: the store is off, nothing outlives this process."""
    seconds: float


def warm_up(data_sets: Sequence[str] | None = None, *, model: str = "sim-large") -> WarmUpReport:
    """Replay the seed prompt of each shipped data set on all its samples; see the module.

    Args:
        data_sets: shipped data set names; default: all of them.
        model: the simulated model to replay on.

    Returns:
        The data sets, how many texts were embedded now, the store and the time taken.
    """
    from envs.factory import make_prompt_env

    names = list(data_sets) if data_sets is not None else dataset_names()
    embedder = default_embedder()
    before = embedder.computed
    started = time.perf_counter()
    for name in names:
        env = make_prompt_env(data=name, model=model, minibatch_size=None)
        try:
            env.reset(seed=0)
            for split in ("test", "holdout"):
                env.evaluate_version(env.current_version_id, split)
        finally:
            env.close()
    store = embedder.store
    return WarmUpReport(
        data_sets=names,
        texts_computed=embedder.computed - before,
        store=str(store.path) if store is not None else None,
        seconds=round(time.perf_counter() - started, 2),
    )
