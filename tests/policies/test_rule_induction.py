from __future__ import annotations

import json
import re

import numpy as np
import pytest
from policy_helpers import (
    COFFEE,
    COFFEE_INPUTS,
    SPORTS,
    SPORTS_INPUTS,
    coffee_sports_rows,
    info,
    observation,
    row,
)

from envs.spaces import EnvAction
from policies.base import Transition
from policies.induction import (
    InductionConfig,
    Pool,
    content_terms,
    log_odds_z,
    parsed,
    source_credit,
)
from policies.proposers import state_from_observation
from policies.rule_induction import RuleInductionCoach, RuleInductionProposer
from policies.surrogate import Inputs, Surrogate, ThresholdFit, reply_key
from selfimprove_rl.prompt import apply, parse_directives
from selfimprove_rl.simulated import SIMULATED_MODELS, SimulatedChatModel
from selfimprove_rl.simulated.sop import parse_line, parse_sop


def _rule_candidates(proposer: RuleInductionProposer, kind: str) -> list:
    candidates = proposer.propose(observation(), info(coffee_sports_rows()), k=50)
    return [c for c in candidates if c.kind == kind]


def _added_lines(directive: str) -> list[str]:
    return [
        re.sub(r"^(ADD( \d+)?|EDIT: \d+ ->):?\s*", "", line) for line in directive.split("\n")[1:]
    ]


def test_log_odds_rewards_frequent_separating_terms_over_one_offs() -> None:
    frequent = log_odds_z(8, 12, 0, 12, 0.5)
    one_off = log_odds_z(1, 12, 0, 12, 0.5)
    shared = log_odds_z(6, 12, 6, 12, 0.5)
    assert frequent > 2.0 > one_off and shared == 0.0


def test_content_terms_drop_stop_words_and_short_words() -> None:
    assert content_terms("I am at the gym on a Monday") == ["gym", "monday"]


def test_mentions_rule_uses_separating_terms_with_minimum_document_frequency() -> None:
    proposer = RuleInductionProposer({"kinds": ("mentions",), "min_df": 2})
    candidates = _rule_candidates(proposer, "mentions")
    assert candidates, "expected a literal rule for at least one class"
    for candidate in candidates:
        (line,) = _added_lines(candidate.directive_text())
        statement = parse_line(line, 1)
        assert statement is not None and statement.kind == "mentions"
        own = COFFEE_INPUTS if reply_key(statement.reply) == reply_key(COFFEE) else SPORTS_INPUTS
        for term in statement.terms:
            occurrences = sum(bool(re.search(rf"\b{re.escape(term)}\b", t, re.I)) for t in own)
            assert occurrences >= 2, f"one-off word {term!r} in {line!r}"
    coffee_rules = [c for c in candidates if c.meta["class"] == COFFEE]
    assert coffee_rules and "espresso" in coffee_rules[0].directive_text()


def test_greedy_stops_when_a_term_adds_nothing_preferring_the_shorter_rule() -> None:
    rows = [row(f"c{i}", f"I love coffee number {w}", COFFEE) for i, w in enumerate("abcdefgh")]
    rows += [
        row(f"x{i}", f"Bad coffee and espresso, sample {w}", COFFEE) for i, w in enumerate("ab")
    ]
    rows += [row(f"s{i}", f"I play football game {w}", SPORTS) for i, w in enumerate("abcdefgh")]
    proposer = RuleInductionProposer({"kinds": ("mentions",), "folds": 2})
    candidates = proposer.propose(observation(), info(rows), k=50)
    coffee = [c for c in candidates if c.kind == "mentions" and c.meta["class"] == COFFEE]
    assert coffee, "expected a literal coffee rule"
    (line,) = _added_lines(coffee[0].directive_text())
    assert parse_line(line, 1).terms == ("coffee",)  # 'espresso' covers nothing more


def test_estimate_charges_prompt_tokens() -> None:
    proposer = RuleInductionProposer({"token_weight": 0.0})
    free = {
        c.directive_text(): c.estimate
        for c in proposer.propose(observation(), info(coffee_sports_rows()), k=50)
    }
    costly = RuleInductionProposer({"token_weight": 0.001})
    for candidate in costly.propose(observation(), info(coffee_sports_rows()), k=50):
        if candidate.directive_text() in free:
            expected = free[candidate.directive_text()] - 0.001 * candidate.prompt_tokens
            assert candidate.estimate == pytest.approx(expected, abs=1e-5)


def test_every_candidate_is_a_valid_sop_directive() -> None:
    proposer = RuleInductionProposer()
    obs = observation()
    candidates = proposer.propose(obs, info(coffee_sports_rows()), k=50)
    kinds = {c.kind for c in candidates}
    assert {"else", "about"} <= kinds
    state = state_from_observation(obs)
    for candidate in candidates:
        new_state = apply(state, parse_directives(candidate.directive_text()))
        assert new_state != state
        for line in _added_lines(candidate.directive_text()):
            assert parse_line(line, 1) is not None, f"not SOP grammar: {line!r}"
        assert isinstance(candidate.to_action("v0"), EnvAction)
        json.dumps(candidate.model_dump(mode="json"))


def test_about_rule_generalizes_to_unseen_inputs_on_the_simulated_model() -> None:
    proposer = RuleInductionProposer({"kinds": ("about",)})
    rules = [c for c in _rule_candidates(proposer, "about") if c.meta["class"] == COFFEE]
    assert rules
    (line,) = _added_lines(rules[0].directive_text())
    prompt = f'{line}\nelse: respond "{SPORTS}"'
    unseen = {
        "A flat white with cinnamon, please.": COFFEE,
        "Which grinder gives the best crema?": COFFEE,
        "We beat them three to one in the derby.": SPORTS,
        "My knee hurts after the half-marathon.": SPORTS,
    }
    model = SimulatedChatModel()
    tier = SIMULATED_MODELS["sim-large"]
    right = sum(model.decide(tier, prompt, text).reply == want for text, want in unseen.items())
    assert right >= 3, prompt


def test_fallback_goes_to_the_reply_rules_describe_worst() -> None:
    rows = coffee_sports_rows()
    rows += [
        row(f"o{i}", text, "Thanks for writing!")
        for i, text in enumerate(
            [
                "What time is it in Tokyo?",
                "Tell me a joke.",
                "How tall is the Eiffel tower?",
                "Is it going to rain?",
                "Recommend a novel.",
                "What's the capital of Peru?",
            ]
        )
    ]
    candidates = RuleInductionProposer().propose(observation(), info(rows), k=50)
    fallbacks = [c for c in candidates if c.kind == "else"]
    assert len(fallbacks) == 1 and fallbacks[0].meta["class"] == "Thanks for writing!"


def test_a_rejected_change_is_not_proposed_again_on_that_base() -> None:
    proposer = RuleInductionProposer()
    obs, data = observation(), info(coffee_sports_rows())
    first = proposer.propose(obs, data, k=1)[0]
    proposer.feedback(first, 0.0, False, {**data, "sample_scores": {}})
    second = proposer.propose(obs, data, k=1)[0]
    assert second.meta["signature"] != first.meta["signature"]
    assert proposer.stats[first.kind] == [0, 1]
    assert proposer._weight(first.kind) < proposer._weight(second.kind) or first.kind == second.kind


def test_threshold_fit_learns_that_semantic_rules_are_ignored() -> None:
    surrogate = Surrogate(SimulatedChatModel().embedder, semantic_prior=0.3)
    (statement,) = parse_sop(f'if input is about coffee: respond "{COFFEE}"').statements
    texts = COFFEE_INPUTS[:6]
    inputs = Inputs(texts, surrogate.encode(texts), [reply_key(COFFEE)] * 6)
    scores = surrogate.about_scores(statement, inputs)
    surrogate.observe([statement], inputs, ["Generic reply."] * 6, [False] * 6)
    assert surrogate.semantic.value > float(scores.max())


def test_threshold_fit_splits_fired_from_not_fired() -> None:
    fit = ThresholdFit(prior=0.5)
    for score in (0.1, 0.15, 0.2):
        fit.observe(score, False)
    for score in (0.3, 0.4):
        fit.observe(score, True)
    assert 0.2 < fit.value < 0.3
    restored = ThresholdFit(prior=0.0)
    restored.load_state_dict(json.loads(json.dumps(fit.state_dict())))
    assert restored.value == fit.value


def test_coach_logs_changes_and_its_state_round_trips() -> None:
    coach = RuleInductionCoach(seed=3)
    obs, data = observation(), info(coffee_sports_rows())
    coach.reset(obs, data)
    action = coach.act(obs, data)
    next_info = {**data, "step": 1, "accepted": False, "version_id": "v0"}
    coach.update(Transition(obs, action, -0.1, obs, False, False, next_info))
    assert coach.change_log[-1]["accepted"] is False and coach.change_log[-1]["reward"] == -0.1
    state = json.loads(json.dumps(coach.state_dict()))
    restored = RuleInductionCoach(seed=99)
    restored.load_state_dict(state)
    assert restored.act(obs, data) == coach.act(obs, data)
    assert restored.act(obs, data) != action


def test_memory_is_bounded_and_rows_without_reference_are_counted() -> None:
    proposer = RuleInductionProposer({"max_memory": 8})
    rows = coffee_sports_rows()
    rows.append({**row("z", "No reference here", COFFEE), "reference": None})
    proposer.remember(observation(), info(rows))
    assert len(proposer.memory) == 8
    assert proposer.skipped == {"row_without_reference": 1}


def test_no_memory_means_no_proposal() -> None:
    coach = RuleInductionCoach(seed=0)
    action = coach.act(observation(), info([]))
    assert action.edits[0].kind == "no_op"


def test_induction_config_is_exposed_with_the_documented_knobs() -> None:
    knobs = RuleInductionProposer({"min_df": 3, "z_min": 1.5}).config.induction()
    assert isinstance(knobs, InductionConfig) and (knobs.min_df, knobs.z_min) == (3, 1.5)
    assert np.isfinite(log_odds_z(0, 5, 5, 5, 0.5))


def test_surrogate_learns_that_the_target_reads_only_the_first_statements() -> None:
    from policy_helpers import HashEmbedder

    surrogate = Surrogate(HashEmbedder())
    lines = [
        'if input mentions tea: respond "Tea."',
        'if input mentions cake: respond "Cake."',
        'if input mentions soup: respond "Soup."',
        'else: respond "Other."',
    ]
    texts = ["tea please", "cake now", "hot soup", "hello", "good morning", "what time", "hi there"]
    outputs = ["Tea.", "Cake.", "Soup.", "Generic.", "Generic.", "Generic.", "Generic."]
    surrogate.record(lines, texts, outputs)
    assert surrogate.limit == 3
    statements = surrogate.statements(lines)
    inputs = Inputs(["hello"], surrogate.encode(["hello"]), [reply_key("Other.")])
    assert surrogate.accuracy(statements, inputs) == 0.0, "the else line is out of reach"
    restored = Surrogate(HashEmbedder())
    restored.load_state_dict(json.loads(json.dumps(surrogate.state_dict())))
    assert restored.limit == 3 and restored.fit_limit() == 3
    surrogate.record(
        lines, texts, ["Tea.", "Cake.", "Soup.", "Other.", "Other.", "Other.", "Other."]
    )
    assert surrogate.limit is None


def test_an_update_without_a_pending_action_is_logged_as_replayed() -> None:
    coach = RuleInductionCoach(seed=0)
    obs, data = observation(), info(coffee_sports_rows())
    action = EnvAction(edits=f'BLOCK: sop\nADD: else: respond "{SPORTS}"', base_version="v0")
    coach.update(Transition(obs, action, 0.3, obs, False, False, {**data, "accepted": True}))
    assert coach.change_log[-1]["kind"] == "replayed" and coach.change_log[-1]["reward"] == 0.3
    assert len(coach.proposer.memory) == len(data["examples"])


def _pool(rows: list[dict], proposer: RuleInductionProposer | None = None) -> Pool:
    proposer = proposer or RuleInductionProposer()
    proposer.remember(observation(), info(rows))
    ids = list(proposer.memory)
    return Pool.build(
        proposer.surrogate,
        ids,
        [proposer.memory[i][0] for i in ids],
        [proposer.memory[i][1] for i in ids],
        proposer.config.induction(),
    )


def test_a_term_is_not_credited_for_fixing_the_one_input_it_came_from() -> None:
    pool = _pool(coffee_sports_rows())
    config = InductionConfig()
    is_class = np.array([r == reply_key(COFFEE) for r in pool.inputs.refs])
    rows = [pool.vocabulary.index(t) for t in ("espresso", "gooseneck")]
    credit = source_credit("about", pool, rows, np.arange(pool.n), is_class, set(), config)
    gooseneck_input = pool.inputs.texts.index("Pour-over coffee needs a gooseneck kettle.")
    assert credit[0].all(), "espresso occurs in many coffee inputs: credited everywhere"
    assert not credit[1, gooseneck_input] and credit[1].sum() == pool.n - 1


def test_an_example_never_answers_its_own_input() -> None:
    pool = _pool(coffee_sports_rows())
    own = COFFEE_INPUTS[0]
    statements = parsed([f'example: "{own}" -> "{COFFEE}"'])
    at = np.array([pool.inputs.texts.index(own)])
    assert not pool.correct(statements, at)[0]
    assert pool.correct(statements, np.arange(pool.n)).sum() > 1, "it still answers others"


def test_examples_come_as_a_balanced_set_of_every_class() -> None:
    proposer = RuleInductionProposer({"kinds": ("examples",)})
    candidates = proposer.propose(observation(), info(coffee_sports_rows()), 50)
    (candidate,) = [c for c in candidates if c.kind == "examples"]
    replies = [parse_line(line, 1).reply for line in _added_lines(candidate.directive_text())]
    assert COFFEE in replies and SPORTS in replies


def test_examples_are_re_picked_from_memory() -> None:
    sop = (
        f'example: "The weather is nice today." -> "{COFFEE}"\n'
        f'example: "I am reading a long novel." -> "{SPORTS}"\n'
        f'else: respond "{SPORTS}"'
    )
    state = state_from_observation(observation(sop))
    proposer = RuleInductionProposer({"kinds": ("examples",)})
    candidates = proposer.propose(observation(sop), info(coffee_sports_rows()), k=50)
    (redo,) = [c for c in candidates if c.meta["signature"] == "redo:examples:*"]
    new_state = apply(state, parse_directives(redo.edits))
    lines = list(new_state.block("sop").lines)
    assert lines == redo.meta["lines"][-len(lines) :]
    assert not any("weather" in line or "novel" in line for line in lines)
    assert lines[-1].startswith("else:") and sum(line.startswith("example:") for line in lines) > 1


def test_a_second_rule_can_go_before_the_first() -> None:
    sop = f'if input is about sports: respond "{SPORTS}"\nelse: respond "{COFFEE}"'
    candidates = RuleInductionProposer().propose(observation(sop), info(coffee_sports_rows()), 50)
    ahead = [c for c in candidates if c.meta["signature"].startswith("add^:")]
    assert ahead and all("ADD 1:" in c.directive_text() for c in ahead)


def test_with_nothing_worth_a_step_the_coach_explores_once_per_prompt() -> None:
    options = {"min_gain": 1.0, "explore_margin": 0.5}
    obs, data = observation(), info(coffee_sports_rows())
    assert RuleInductionProposer({**options, "explore_margin": None}).propose(obs, data, 1) == []
    proposer = RuleInductionProposer(options)
    (first,) = proposer.propose(obs, data, k=1)
    assert first.meta["explore"] is True
    proposer.feedback(first, 0.0, False, {**data, "sample_scores": {}})
    proposer.banned.clear()
    again = proposer.propose(obs, data, k=50)
    assert all(c.meta["lines"] != first.meta["lines"] for c in again)


def test_a_ban_lifts_once_enough_new_inputs_are_remembered() -> None:
    rows = coffee_sports_rows()
    proposer = RuleInductionProposer({"retry_after": 4})
    obs, data = observation(), info(rows[:8] + rows[12:20])
    first = proposer.propose(obs, data, k=1)[0]
    proposer.feedback(first, 0.0, False, {**data, "sample_scores": {}})
    signatures = {c.meta["signature"] for c in proposer.propose(obs, data, k=50)}
    assert first.meta["signature"] not in signatures
    signatures = {c.meta["signature"] for c in proposer.propose(obs, info(rows), k=50)}
    assert first.meta["signature"] in signatures


def test_candidates_respect_a_learned_reading_limit() -> None:
    proposer = RuleInductionProposer()
    proposer.surrogate.limit = 1
    sop = (
        f'if input is about sports: respond "{SPORTS}"\n'
        f'if input mentions coffee: respond "{COFFEE}"'
    )
    assert proposer.propose(observation(sop), info(coffee_sports_rows()), k=50)


def test_examples_bring_an_else_when_the_prompt_has_none() -> None:
    proposer = RuleInductionProposer({"kinds": ("examples",)})
    candidates = proposer.propose(observation(), info(coffee_sports_rows()), 50)
    (made,) = [c for c in candidates if c.kind == "examples"]
    assert _added_lines(made.directive_text())[-1].startswith("else: respond")
    sop = f'else: respond "{SPORTS}"'
    candidates = proposer.propose(observation(sop), info(coffee_sports_rows()), 50)
    for candidate in (c for c in candidates if c.kind == "examples"):
        assert not any(line.startswith("else") for line in _added_lines(candidate.directive_text()))


def test_an_unread_else_moves_within_the_learned_reading_limit() -> None:
    sop = "\n".join(
        [
            f'if input mentions espresso: respond "{COFFEE}"',
            f'example: "{SPORTS_INPUTS[0]}" -> "{SPORTS}"',
            f'example: "{SPORTS_INPUTS[1]}" -> "{SPORTS}"',
            f'else: respond "{SPORTS}"',
        ]
    )
    proposer = RuleInductionProposer({"min_gain": -1.0})
    data = info(coffee_sports_rows())
    proposer.remember(observation(sop), data)
    proposer.surrogate.limit = 2  # as if learned: the target reads the first two statements
    candidates = proposer.propose(observation(sop), data, k=100)
    (reach,) = [c for c in candidates if c.meta["signature"].startswith("reach:")]
    state = apply(state_from_observation(observation(sop)), parse_directives(reach.edits))
    statements = parse_sop("\n".join(state.block("sop").lines)).statements
    assert [s.kind for s in statements] == ["mentions", "else"]
    assert (reach.estimate or 0) > 0


def test_the_reading_limit_is_the_largest_that_explains_the_outputs() -> None:
    from policy_helpers import HashEmbedder

    surrogate = Surrogate(HashEmbedder())
    lines = [
        'if input mentions tea: respond "Tea."',
        'if input mentions cake: respond "Cake."',
        'if input mentions soup: respond "Soup."',
        'if input mentions jam: respond "Jam."',
        'else: respond "Other."',
    ]
    texts = ["tea please", "cake now", "hot soup", "hello", "good morning", "what time"]
    outputs = ["Tea.", "Cake.", "Soup.", "Generic.", "Generic.", "Generic."]
    surrogate.record(lines, texts, outputs)
    assert surrogate.limit == 4, "limits 3 and 4 explain the outputs alike: the larger wins"
