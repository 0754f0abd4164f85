"""The rule-induction coach: plain-language rules and demos from memory, chosen by reward."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies.base import Transition
from policies.proposers import Candidate
from policies.rule_induction import RuleInductionCoach, RuleInductionProposer
from policies.rule_induction.memory import Memory
from policies.rule_induction.phrasing import LIST_HEADER, Plan, read_plan, rule_line
from policies.rule_induction.terms import TermStats, content_terms, describe, log_odds_z
from selfimprove_rl.prompt import AddDemo, PromptState, ReplaceBlock, SwapDemo, apply

REFUND = "Billing will review the charge."
SHIP = "We'll check with the carrier."
OTHER = "Thanks, we'll follow up."

INPUTS = {
    REFUND: [
        "I was charged twice for my order",
        "I want a refund for the broken lamp",
        "Why is there a charge on my card",
        "Please refund my payment",
        "The refund never reached my card",
        "My payment went through twice",
    ],
    SHIP: [
        "Where is my package",
        "My package has not arrived yet",
        "The tracking number shows nothing",
        "Do you ship to Canada",
        "The delivery is late again",
        "Tracking says delivered but no package",
    ],
    OTHER: [
        "I love your store",
        "Can I suggest a new color",
        "Your website looks great",
        "Who designed the logo",
        "Do you have a newsletter",
        "Nice work on the new app",
    ],
}


def rows(wrong: set[str] = frozenset(), output: str = "Hello!") -> list[dict[str, Any]]:
    found = []
    for reply, texts in INPUTS.items():
        for index, text in enumerate(texts):
            sample_id = f"{reply[:4]}-{index}"
            ok = sample_id not in wrong and output == "exact"
            found.append(
                {
                    "sample_id": sample_id,
                    "input": text,
                    "reference": reply,
                    "output": reply if ok else output,
                    "score": 1.0 if ok else 0.0,
                    "failed": False,
                }
            )
    return found


def observation(state: PromptState, version: str = "v0000") -> dict[str, Any]:
    return {
        "prompt": state.render(),
        "blocks": {b.name: "\n".join(b.lines) for b in state.blocks},
        "demos": tuple((d.input, d.output) for d in state.demos),
        "model": state.model,
        "version": version,
        "scores": np.zeros(2, dtype=np.float32),
    }


def encoder(texts: list[str]) -> np.ndarray:
    """A deterministic bag-of-words encoder, so tests need no embedding model."""
    vocab = sorted({w for ts in INPUTS.values() for t in ts for w in content_terms(t)} | {"x"})
    vectors = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in content_terms(text):
            if word in vocab:
                vectors[row, vocab.index(word)] = 1.0
        vectors[row, vocab.index("x")] = 0.1
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


START = PromptState.from_text("You are a helpful assistant.", model="m")


def proposer(**options: Any) -> RuleInductionProposer:
    return RuleInductionProposer(options, encoder=encoder)


def info(version: str = "v0000", **kwargs: Any) -> dict[str, Any]:
    return {"current_version_id": version, "examples": rows(**kwargs)}


# --- statistics and phrasing ---------------------------------------------------------------


def test_log_odds_rewards_frequent_separating_terms_over_one_offs() -> None:
    assert log_odds_z(6, 6, 0, 12, 0.5) > log_odds_z(1, 6, 0, 12, 0.5) > 0
    assert log_odds_z(3, 6, 6, 12, 0.5) == pytest.approx(0.0)


def test_a_description_names_different_facets_and_stops_when_nothing_is_new() -> None:
    texts = [t for ts in INPUTS.values() for t in ts]
    labels = [r for r, ts in INPUTS.items() for _ in ts]
    refund = describe(texts, labels, REFUND, TermStats())
    assert set(refund.terms) <= {"refund", "charged", "charge", "card", "payment", "twice"}
    assert refund.terms[0] == "refund" and refund.coverage == 1.0
    # each term is there because it covers inputs the earlier ones did not
    covered: set[str] = set()
    for term in refund.terms:
        new = {t for t in INPUTS[REFUND] if term in content_terms(t)} - covered
        assert new, f"{term!r} adds nothing"
        covered |= new
    assert describe(texts, labels, OTHER, TermStats()).coverage < 0.5


def test_a_plan_round_trips_through_its_lines_keeping_foreign_lines_first() -> None:
    plan = Plan(
        foreign=("Be kind.",), rules=(("refund or charge", REFUND),), default=OTHER
    ).with_list(True)
    lines = plan.lines()
    assert lines[0] == "Be kind." and lines[1] == LIST_HEADER
    assert lines[-1] == f"Otherwise, reply with exactly: {OTHER}"
    assert read_plan(lines) == plan
    assert read_plan(["- not a list item", rule_line("x", "y")]).foreign == ("- not a list item",)


# --- candidates -----------------------------------------------------------------------------


def test_the_first_proposal_is_a_plain_scaffold_with_the_vaguest_reply_as_default() -> None:
    (candidate,) = proposer(reply_list=True, scaffold_demos=0).propose(
        observation(START), info(), k=1
    )
    assert candidate.kind == "scaffold"
    (edit,) = candidate.edits
    assert isinstance(edit, ReplaceBlock) and edit.block == "sop"
    plan = read_plan(edit.lines)
    assert plan.default == OTHER
    assert {reply for _, reply in plan.rules} == {REFUND, SHIP}
    assert set(plan.reply_list) == {REFUND, SHIP, OTHER}
    assert "refund" in plan.rule_for(REFUND)  # type: ignore[operator]


def test_by_default_the_scaffold_has_no_list_and_the_listed_variant_comes_second() -> None:
    candidates = proposer(scaffold_demos=0).propose(observation(START), info(), k=5)
    assert candidates[0].kind == "scaffold"
    assert read_plan(candidates[0].edits[0].lines).reply_list == ()  # type: ignore[union-attr]
    listed = [c for c in candidates if c.kind == "scaffold:list"]
    assert listed and read_plan(listed[0].edits[0].lines).reply_list  # type: ignore[union-attr]


def test_by_default_the_first_proposal_is_the_scaffold_with_typical_demos_of_every_reply() -> None:
    first, *rest = proposer().propose(observation(START), info(), k=5)
    assert first.kind == "scaffold:demos"
    scaffold = next(c for c in rest if c.kind == "scaffold")
    assert first.edits[0] == scaffold.edits[0]
    demos = first.edits[1:]
    assert all(isinstance(e, AddDemo) for e in demos)
    outputs = [e.output for e in demos]  # type: ignore[union-attr]
    assert len(demos) == 3 * len(INPUTS)
    assert sorted(outputs[:3]) == sorted(INPUTS)  # one round of every reply, then the next
    for edit in demos:
        assert edit.input in INPUTS[edit.output]  # type: ignore[union-attr]
    assert len({e.input for e in demos}) == len(demos)  # type: ignore[union-attr]
    (capped,) = proposer(max_demos=4).propose(observation(START), info(), k=1)
    assert len(capped.edits) == 1 + 4


def test_demo_rounds_add_one_typical_input_per_reply_and_respect_the_caps() -> None:
    state = apply(
        START, proposer(scaffold_demos=0).propose(observation(START), info(), k=1)[0].edits
    )
    found = proposer().propose(observation(state, "v0001"), info("v0001"), k=10)
    (round_,) = [c for c in found if c.kind == "demos:round"]
    assert all(isinstance(e, AddDemo) for e in round_.edits)
    assert sorted(e.output for e in round_.edits) == sorted(INPUTS)  # type: ignore[union-attr]
    for edit in round_.edits:
        assert edit.input in INPUTS[edit.output]  # type: ignore[union-attr]
    capped = proposer(max_demos=2).propose(observation(state, "v0001"), info("v0001"), k=10)
    (small,) = [c for c in capped if c.kind == "demos:round"]
    assert len(small.edits) == 2
    full = apply(state, round_.edits)
    none_left = proposer(max_demos_per_reply=1).propose(
        observation(full, "v0002"), info("v0002"), k=20
    )
    assert not [c for c in none_left if c.kind in ("demos:round", "demo:add")]


def test_a_swap_brings_in_a_wrongly_answered_input_of_the_worst_reply() -> None:
    state = apply(
        START, proposer(scaffold_demos=0).propose(observation(START), info(), k=1)[0].edits
    )
    round_ = next(
        c
        for c in proposer().propose(observation(state, "v1"), info("v1"), k=10)
        if c.kind == "demos:round"
    )
    state = apply(state, round_.edits)
    wrong = {"Bill-3", "Bill-4"}
    found = proposer().propose(
        observation(state, "v2"), info("v2", wrong=wrong, output="exact"), 10
    )
    (swap,) = [c for c in found if c.kind == "demo:swap"]
    (edit,) = swap.edits
    assert isinstance(edit, SwapDemo)
    assert edit.output == REFUND and edit.input in {INPUTS[REFUND][3], INPUTS[REFUND][4]}
    assert state.demos[edit.index - 1].output == REFUND


def test_a_free_form_task_gets_demonstrations_only() -> None:
    free = [
        {
            "sample_id": f"s{i}",
            "input": f"question {i} about x",
            "reference": f"answer {i}",
            "output": "",
            "score": 0.0,
        }
        for i in range(10)
    ]
    found = proposer().propose(
        observation(START), {"current_version_id": "v0", "examples": free}, 5
    )
    assert [c.kind for c in found] == ["demos:free"]
    assert all(isinstance(e, AddDemo) for e in found[0].edits)


def test_no_memory_means_no_proposal() -> None:
    assert proposer().propose(observation(START), {"examples": []}, k=3) == []


# --- learning from reward -------------------------------------------------------------------


def test_a_rejected_change_is_never_proposed_again_on_that_base() -> None:
    ri = proposer()
    first = ri.propose(observation(START), info(), k=1)[0]
    ri.feedback(first, -0.1, False, {})
    again = ri.propose(observation(START), info(), k=5)
    assert first.directive_text() not in [c.directive_text() for c in again]
    elsewhere = ri.propose(observation(START, "v9"), info("v9"), k=5)
    assert first.kind in [c.kind for c in elsewhere]  # another base may still try it


def test_kind_weights_follow_the_rewards() -> None:
    ri = proposer()
    candidate = Candidate(
        edits="no_change", proposer=ri.name, kind="demo:swap", meta={"signature": "s", "base": "b"}
    )
    before = ri.weight("demo:swap")
    ri.feedback(candidate, -0.1, False, {})
    ri.feedback(candidate, -0.1, False, {})
    assert ri.weight("demo:swap") < before
    ri.feedback(candidate, 0.2, True, {})
    ri.feedback(candidate, 0.2, True, {})
    ri.feedback(candidate, 0.2, True, {})
    assert ri.weight("demo:swap") > before


def test_memory_is_bounded_and_unusable_rows_are_counted() -> None:
    memory = Memory(limit=8)
    memory.add_rows("v", [*rows(), {"sample_id": "z", "input": "hi", "reference": None}, 3])
    assert len(memory.samples) == 8
    assert memory.skipped == {"row_without_reference": 1, "row_not_a_mapping": 1}


def test_coach_logs_changes_and_its_state_round_trips() -> None:
    coach = RuleInductionCoach(seed=0, encoder=encoder)
    first = info()
    coach.reset(observation(START), first)
    action = coach.act(observation(START), first)
    after = apply(START, action.edits)
    step = {**info("v0001", output="exact"), "accepted": True, "version_id": "v0001", "step": 1}
    coach.update(
        Transition(observation(START), action, 0.6, observation(after, "v0001"), False, False, step)
    )
    assert coach.change_log[0]["kind"] == "scaffold:demos" and coach.change_log[0]["accepted"]
    restored = RuleInductionCoach(seed=3, encoder=encoder)
    restored.load_state_dict(json.loads(json.dumps(coach.state_dict())))
    assert restored.act(observation(after, "v0001"), step) == coach.act(
        observation(after, "v0001"), step
    )


def test_an_update_without_a_pending_action_is_logged_as_replayed() -> None:
    coach = RuleInductionCoach(seed=0, encoder=encoder)
    coach.update(
        Transition(
            observation(START), "ADD: x", 0.0, observation(START), False, False, {"accepted": False}
        )
    )
    assert coach.change_log[-1]["kind"] == "replayed"


# --- the layering rule ------------------------------------------------------------------------


def test_policies_import_nothing_from_the_simulated_model() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.startswith("selfimprove_rl.simulated")
            ]
    assert offenders == []


def test_the_reply_the_target_gives_too_often_moves_to_the_end() -> None:
    (scaffold,) = proposer(reply_list=True).propose(observation(START), info(), k=1)
    state = apply(START, scaffold.edits)
    first = read_plan(state.block("sop").lines).rules[0][1]
    found = proposer().propose(observation(state, "v0001"), info("v0001", output=first), k=20)
    (moved,) = [c for c in found if c.kind == "rule:last"]
    plan = read_plan(moved.edits[0].lines)  # type: ignore[union-attr]
    assert plan.rules[-1][1] == first and len(plan.rules) == 2
    assert plan.reply_list[-2] == first and plan.reply_list[-1] == OTHER
    right = proposer().propose(observation(state, "v0001"), info("v0001", output="exact"), k=20)
    assert not [c for c in right if c.kind == "rule:last"]
