"""Policies that act on the prompt environments through one protocol.

Shipped policies are resolved by name (see :data:`POLICIES`); a policy of your own is named
``"package.module:ClassName"``. Candidate edits come from proposers (:class:`Proposer`),
shared by the coaches and by bandit and population policies.
"""

from policies.bandits import SuccessiveHalvingPolicy, ThompsonPolicy, UCB1Policy
from policies.base import BasePolicy, Policy, Transition
from policies.catalog import (
    POLICIES,
    PROPOSERS,
    make_policy,
    make_proposer,
    register_policy,
    resolve_policy,
)
from policies.coach_report import build_report
from policies.llm_coach import CoachReply, LLMCoachConfig, LLMCoachPolicy, LLMCoachProposer
from policies.output_rules import OutputRuleProposer, ProposerCoach
from policies.population import PopulationPolicy
from policies.program_adapter import AgentTeam, NodeAgent, ProgramCoach, node_view
from policies.proposers import OPERATOR_LIBRARY, Candidate, OperatorProposer, Proposer
from policies.random_policy import RandomPolicy
from policies.rule_induction import RuleInductionCoach, RuleInductionConfig, RuleInductionProposer
from policies.sb3_policy import SB3Policy

__all__ = [
    "OPERATOR_LIBRARY",
    "POLICIES",
    "PROPOSERS",
    "AgentTeam",
    "BasePolicy",
    "Candidate",
    "CoachReply",
    "LLMCoachConfig",
    "LLMCoachPolicy",
    "LLMCoachProposer",
    "NodeAgent",
    "OperatorProposer",
    "OutputRuleProposer",
    "Policy",
    "PopulationPolicy",
    "ProgramCoach",
    "Proposer",
    "ProposerCoach",
    "RandomPolicy",
    "RuleInductionCoach",
    "RuleInductionConfig",
    "RuleInductionProposer",
    "SB3Policy",
    "SuccessiveHalvingPolicy",
    "ThompsonPolicy",
    "Transition",
    "UCB1Policy",
    "build_report",
    "make_policy",
    "make_proposer",
    "node_view",
    "register_policy",
    "resolve_policy",
]
