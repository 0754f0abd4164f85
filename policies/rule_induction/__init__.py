"""The rule-induction coach: plain-language rules and demonstrations, chosen by reward.

Rules and few-shot demonstrations are induced from remembered examples and chosen by measured
reward (no LLM, no model of the target).

Modules: :mod:`.config` (the one config), :mod:`.memory` (what was seen), :mod:`.terms`
(which words describe a reply), :mod:`.phrasing` (how a rule is said), :mod:`.demos` (which
inputs make good demonstrations), :mod:`.candidates` (which changes could help) and
:mod:`.coach` (the proposer and the policy).
"""

from policies.rule_induction.coach import RuleInductionCoach, RuleInductionProposer
from policies.rule_induction.config import RuleInductionConfig

__all__ = ["RuleInductionCoach", "RuleInductionConfig", "RuleInductionProposer"]
