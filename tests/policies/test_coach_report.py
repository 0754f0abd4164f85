from __future__ import annotations

import numpy as np
from policy_helpers import COFFEE, SPORTS, HashEmbedder, coffee_sports_rows, info, observation, row

from policies.coach_report import build_report, cluster_rows


def test_clusters_are_largest_first_with_subclusters_and_member_representatives() -> None:
    vectors = np.array([[1, 0]] * 6 + [[0, 1]] * 2, dtype=float)
    vectors[:3] += [0, 0.2]
    rows = [{"input": str(i)} for i in range(len(vectors))]
    clusters = cluster_rows(rows, vectors, clusters=2, subclusters=2, per_cluster=2)
    assert [len(c.members) for c in clusters] == [6, 2]
    big = clusters[0]
    assert sorted(len(c.members) for c in big.children) == [3, 3]
    for cluster in [*clusters, *big.children]:
        assert set(cluster.representatives) <= set(cluster.members)
        assert len(cluster.representatives) == min(2, len(cluster.members))
    assert clusters[1].children == []


def test_identical_rows_make_one_cluster() -> None:
    clusters = cluster_rows([{}] * 3, np.ones((3, 4)), clusters=3)
    assert len(clusters) == 1 and clusters[0].members == [0, 1, 2]


def test_report_shows_scores_worst_examples_change_log_and_numbered_prompt() -> None:
    rows = coffee_sports_rows()
    rows[0] = row("ok", "Perfect espresso", COFFEE, output=COFFEE, score=1.0)
    log = [
        {
            "step": 1,
            "directive": 'BLOCK: sop\nADD: else: respond "x"',
            "reward": -0.05,
            "accepted": False,
        }
    ]
    report = build_report(observation(), info(rows), log, embedder=HashEmbedder(), clusters=2)
    assert "- similarity: 0.100 (base 0.100)" in report
    assert f"falling short: {len(rows) - 1}" in report
    assert "### Cluster 1:" in report and "#### Sub-cluster 1.1:" in report
    assert f"reference: {SPORTS}" in report or f"reference: {COFFEE}" in report
    assert "similarity says: cosine 0.1" in report
    assert "Perfect espresso" not in report, "rows that meet the reference are not 'worst'"
    assert "step 1: reward -0.050 (rejected)" in report and "ADD: else: respond" in report
    assert "[sop]\n1. Answer the user" in report and "[general]\n1. You are a friendly" in report


def test_report_without_shortfalls_needs_no_embedder() -> None:
    rows = [row("a", "hi", "x", output="x", score=1.0)]
    report = build_report(observation(), info(rows), embedder=None)
    assert "(every sample shown meets the reference)" in report
    assert "(no changes tried yet)" in report
