"""Policies that act on the prompt environments through one protocol.

Shipped policies are resolved by name (see :data:`POLICIES`); a policy of your own is named
``"package.module:ClassName"``. Candidate edits come from proposers (:class:`Proposer`),
shared by the coaches and by bandit and population policies.
"""

from policies.base import BasePolicy, Policy, Transition
from policies.coach_report import build_report
from policies.llm_coach import CoachReply, LLMCoachConfig, LLMCoachPolicy, LLMCoachProposer
from policies.proposers import OPERATOR_LIBRARY, Candidate, OperatorProposer, Proposer
from policies.random_policy import RandomPolicy
from policies.registry import POLICIES, make_policy, register_policy, resolve_policy
from policies.rule_induction import RuleInductionCoach, RuleInductionConfig, RuleInductionProposer

__all__ = [
    "OPERATOR_LIBRARY",
    "POLICIES",
    "BasePolicy",
    "Candidate",
    "CoachReply",
    "LLMCoachConfig",
    "LLMCoachPolicy",
    "LLMCoachProposer",
    "OperatorProposer",
    "Policy",
    "Proposer",
    "RandomPolicy",
    "RuleInductionCoach",
    "RuleInductionConfig",
    "RuleInductionProposer",
    "Transition",
    "build_report",
    "make_policy",
    "register_policy",
    "resolve_policy",
]
