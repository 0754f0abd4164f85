"""What does the LLM coach read? The evaluator report: scores, clustered worst examples, history.

:func:`build_report` turns what a policy sees into the text a coach model reads:

1. **Scores** — the aggregate and each eval on the latest minibatch, for the current version
   and its base, and how many samples fall short or failed to replay;
2. **Worst examples, clustered** — the rows that fall short, embedded (input text) and
   grouped by scikit-learn k-means into clusters and sub-clusters, each shown with a few
   representatives (the rows nearest the centroid): input, output, reference and every
   eval's explanation;
3. **Change log** — past edits with their reward and whether the env kept them;
4. **Prompt** — every block's lines, numbered as directives refer to them;
5. **Demonstrations** — the few-shot user/assistant turns sent before each message, numbered
   as ``DEMO n`` / ``DEL_DEMO: n`` refer to them.

Model output and logged data are untrusted: everything here is joined as plain text, never
used as a format template.

Example:
    >>> rows = [{"input": "hi", "output": "x", "reference": "y", "score": 0.1}]
    >>> [len(c.members) for c in cluster_rows(rows, [[1.0, 0.0]], clusters=3)]
    [1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies.proposers import numbered_blocks

MAX_FIELD_CHARS = 300


@dataclass
class Cluster:
    """A group of similar rows: member indices, representatives, and sub-clusters."""

    members: list[int]
    representatives: list[int]
    children: list[Cluster] = field(default_factory=list)


def _kmeans(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k <= 1 or len(vectors) <= 1:
        return np.zeros(len(vectors), dtype=int)
    from sklearn.cluster import KMeans

    k = min(k, len(np.unique(np.round(vectors, 6), axis=0)))
    if k <= 1:
        return np.zeros(len(vectors), dtype=int)
    return np.asarray(KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(vectors))


def _representatives(vectors: np.ndarray, members: list[int], count: int) -> list[int]:
    centre = vectors[members].mean(axis=0)
    order = np.argsort(-(vectors[members] @ centre), kind="stable")
    return [members[int(i)] for i in order[:count]]


def cluster_rows(
    rows: Sequence[Mapping[str, Any]],
    vectors: Sequence[Sequence[float]] | np.ndarray,
    *,
    clusters: int = 3,
    subclusters: int = 2,
    per_cluster: int = 2,
    min_split: int = 4,
    seed: int = 0,
) -> list[Cluster]:
    """Group rows by their vectors into clusters (largest first) and sub-clusters.

    Args:
        rows: the rows (only their count is used here).
        vectors: one embedding per row.
        clusters: top-level k (fewer when there are fewer distinct rows).
        subclusters: k inside a cluster with at least ``min_split`` members.
        per_cluster: representatives per cluster (and per sub-cluster).
        min_split: smallest cluster that gets sub-clusters.
        seed: k-means seed.

    Returns:
        The clusters, largest first; ties keep the order of their first member.
    """
    matrix = np.asarray(vectors, dtype=np.float64).reshape(len(rows), -1)
    if not len(rows):
        return []
    labels = _kmeans(matrix, clusters, seed)
    result: list[Cluster] = []
    for label in sorted(
        set(labels.tolist()), key=lambda x: (-(labels == x).sum(), int(np.argmax(labels == x)))
    ):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        cluster = Cluster(members, _representatives(matrix, members, per_cluster))
        if len(members) >= min_split and subclusters > 1:
            sub_labels = _kmeans(matrix[members], subclusters, seed)
            if len(set(sub_labels.tolist())) > 1:
                for sub in sorted(set(sub_labels.tolist()), key=lambda x: -(sub_labels == x).sum()):
                    sub_members = [members[int(i)] for i in np.flatnonzero(sub_labels == sub)]
                    cluster.children.append(
                        Cluster(sub_members, _representatives(matrix, sub_members, per_cluster))
                    )
        result.append(cluster)
    return result


def _clip(value: Any) -> str:
    text = " ".join(str(value).split()) if value is not None else "(none)"
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def _row_text(row: Mapping[str, Any]) -> str:
    lines = [
        f"    input: {_clip(row.get('input'))}",
        f"    output: {_clip(row.get('output'))}",
        f"    reference: {_clip(row.get('reference'))}",
        f"    score: {float(row.get('score', 0.0)):.2f}",
    ]
    for name, explanation in dict(row.get("explanations") or {}).items():
        if explanation:
            lines.append(f"    {name} says: {_clip(explanation)}")
    if row.get("failed"):
        lines.append("    (the replay of this sample failed)")
    return "\n".join(lines)


def _scores_section(info: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], short: int) -> str:
    lines = ["## Scores on the latest minibatch (higher is better, 1.0 is perfect)"]
    current = dict(info.get("scores") or {})
    base = dict(info.get("base_scores") or {})
    for name, value in current.items():
        extra = f" (base {float(base[name]):.3f})" if name in base else ""
        lines.append(f"- {name}: {float(value):.3f}{extra}")
    failed = sum(1 for row in rows if row.get("failed"))
    lines.append(
        f"- samples shown: {len(rows)}; falling short: {short}; failed to replay: {failed}"
    )
    return "\n".join(lines)


def _change_log_section(change_log: Sequence[Mapping[str, Any]], limit: int) -> str:
    lines = ["## Change log (most recent last)"]
    if not change_log:
        lines.append("(no changes tried yet)")
    for entry in list(change_log)[-limit:]:
        verdict = "kept" if entry.get("accepted") else "rejected"
        lines.append(
            f"- step {entry.get('step')}: reward {float(entry.get('reward', 0.0)):+.3f} ({verdict})"
        )
        for directive in str(entry.get("directive", "")).split("\n"):
            lines.append(f"    {_clip(directive)}")
    return "\n".join(lines)


def build_report(
    observation: Mapping[str, Any],
    info: Mapping[str, Any],
    change_log: Sequence[Mapping[str, Any]] = (),
    *,
    embedder: Any = None,
    correct_at: float = 0.99,
    max_rows: int = 48,
    clusters: int = 3,
    subclusters: int = 2,
    per_cluster: int = 2,
    change_log_size: int = 10,
    seed: int = 0,
) -> str:
    """Return the evaluator report a coach model reads (see the module docstring).

    Args:
        observation: the observation of the version being improved.
        info: the env info of that version (``examples``, ``scores``, ``base_scores``).
        change_log: past edits: ``step``, ``directive``, ``reward``, ``accepted``.
        embedder: ``encode(texts)`` for clustering (default: the shipped MiniLM).
        correct_at: a row scoring below this falls short.
        max_rows: most rows (worst first) considered for clustering.
        clusters: top-level clusters.
        subclusters: sub-clusters per large cluster.
        per_cluster: representatives shown per (sub-)cluster.
        change_log_size: most recent change-log entries shown.
        seed: k-means seed.

    Returns:
        The report text.
    """
    rows = [r for r in info.get("examples") or () if isinstance(r, Mapping)]
    worst = [r for r in rows if float(r.get("score", 0.0)) < correct_at][:max_rows]
    sections = [_scores_section(info, rows, len(worst))]
    lines = ["## Worst examples, clustered by what the inputs are about"]
    if not worst:
        lines.append("(every sample shown meets the reference)")
    else:
        if embedder is None:
            from selfimprove_rl.embeddings import default_embedder

            embedder = default_embedder()
        vectors = np.asarray(embedder.encode([str(r.get("input", "")) for r in worst]))
        found = cluster_rows(
            worst,
            vectors,
            clusters=clusters,
            subclusters=subclusters,
            per_cluster=per_cluster,
            seed=seed,
        )
        for number, cluster in enumerate(found, start=1):
            lines.append(f"### Cluster {number}: {len(cluster.members)} examples")
            parts = cluster.children or [cluster]
            for sub_number, part in enumerate(parts, start=1):
                if cluster.children:
                    lines.append(
                        f"#### Sub-cluster {number}.{sub_number}: {len(part.members)} examples"
                    )
                for index in part.representatives:
                    lines.append("  - example")
                    lines.append(_row_text(worst[index]))
    sections.append("\n".join(lines))
    sections.append(_change_log_section(change_log, change_log_size))
    sections.append(
        "## Prompt (model: "
        + str(observation.get("model", "?"))
        + ")\n"
        + numbered_blocks(observation)
    )
    sections.append(_demos_section(observation.get("demos") or ()))
    return "\n\n".join(sections)


def _demos_section(demos: Sequence[Sequence[str]]) -> str:
    lines = ["## Demonstrations (user/assistant turns sent before each message)"]
    if not demos:
        lines.append("(none)")
    for number, (user, assistant) in enumerate(demos, start=1):
        lines.append(f"{number}. user: {_clip(user)}")
        lines.append(f"   assistant: {_clip(assistant)}")
    return "\n".join(lines)
