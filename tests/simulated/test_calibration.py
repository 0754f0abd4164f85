"""Tier thresholds on the shipped coffee/sports data: good prompts generalize, keywords do not.

Measured at the committed thresholds (sim-large 0.25 / 0.20, sim-small 0.32 / 0.30):

=============================================  ===========  =========  =========
SOP                                            sim-keyword  sim-small  sim-large
=============================================  ===========  =========  =========
about coffee (terse) + else                    0.500        0.835      0.910
about coffee, espresso or coffee drinks + else 0.500        0.855      0.945
6 examples                                     0.000        0.445      0.945
6 examples + else                              0.500        0.445      0.980
keyword coffee/espresso + else                 0.675        0.675      0.675
keyword 5 terms + else                         0.730        0.730      0.730
=============================================  ===========  =========  =========
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import selfimprove_rl
from selfimprove_rl.simulated import SIMULATED_MODELS, SimulatedChatModel

DATA = Path(selfimprove_rl.__file__).parent / "data" / "coffee_sports.jsonl"
COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
EXAMPLES = [
    f'example: "I drink a cappuccino every morning." -> "{COFFEE}"',
    f'example: "Espresso is my favourite pick-me-up." -> "{COFFEE}"',
    f'example: "I brew pour-over coffee at home." -> "{COFFEE}"',
    f'example: "I play tennis every weekend." -> "{SPORTS}"',
    f'example: "I run marathons." -> "{SPORTS}"',
    f'example: "I watch football with friends." -> "{SPORTS}"',
]
SOPS = {
    "about": f'if input is about coffee, espresso or coffee drinks: respond "{COFFEE}"\n'
    f'else: respond "{SPORTS}"',
    "examples": "\n".join(EXAMPLES),
    "examples+else": "\n".join([*EXAMPLES, f'else: respond "{SPORTS}"']),
    "keywords": "if input mentions coffee, espresso, latte, cappuccino or beans: "
    f'respond "{COFFEE}"\nelse: respond "{SPORTS}"',
}


@pytest.fixture(scope="module")
def accuracy() -> dict[tuple[str, str], float]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert len(rows) == 200 and {r["output"] for r in rows} == {COFFEE, SPORTS}
    model = SimulatedChatModel()
    model.embedder.encode([r["input"] for r in rows])
    return {
        (sop, tier): sum(
            model.decide(SIMULATED_MODELS[tier], text, r["input"]).reply == r["output"]
            for r in rows
        )
        / len(rows)
        for sop, text in SOPS.items()
        for tier in ("sim-keyword", "sim-small", "sim-large")
    }


def test_good_prompts_reach_high_accuracy_on_the_large_tier(
    accuracy: dict[tuple[str, str], float],
) -> None:
    assert accuracy["about", "sim-large"] >= 0.93
    assert accuracy["examples", "sim-large"] >= 0.93
    assert accuracy["examples+else", "sim-large"] >= 0.95


def test_small_tier_generalizes_less(accuracy: dict[tuple[str, str], float]) -> None:
    assert 0.75 <= accuracy["about", "sim-small"] < accuracy["about", "sim-large"]
    # it reads only the first 3 lines: the three coffee examples
    assert accuracy["examples+else", "sim-small"] < 0.6


def test_keywords_do_not_generalize(accuracy: dict[tuple[str, str], float]) -> None:
    assert 0.6 <= accuracy["keywords", "sim-large"] <= 0.8
    assert accuracy["keywords", "sim-keyword"] == accuracy["keywords", "sim-large"]
    assert accuracy["about", "sim-keyword"] == 0.5  # semantic rule ignored: always the else
