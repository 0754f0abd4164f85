"""Which policy does a name mean? The table of shipped policies and ``module:Class`` lookup.

The runner and CLI resolve policies through here, the way ``gymnasium.make`` resolves entry
points: by registered name, or by a ``"package.module:ClassName"`` string for a user's own
policy class. Proposers (the candidate-edit sources that bandit, population and SB3 policies
share) are resolved the same way by :func:`make_proposer`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from selfimprove_rl.errors import PolicyError, unknown_name_message, validation_summary

POLICIES: dict[str, str] = {
    "random": "policies.random_policy:RandomPolicy",
    "rule_induction": "policies.rule_induction:RuleInductionCoach",
    "llm_coach": "policies.llm_coach:LLMCoachPolicy",
    "ucb1": "policies.bandits:UCB1Policy",
    "thompson": "policies.bandits:ThompsonPolicy",
    "successive_halving": "policies.bandits:SuccessiveHalvingPolicy",
    "population": "policies.population:PopulationPolicy",
    "sb3": "policies.sb3_policy:SB3Policy",
    "proposer_coach": "policies.output_rules:ProposerCoach",
    "program_coach": "policies.program_adapter:ProgramCoach",
    "agent_team": "policies.program_adapter:AgentTeam",
}

PROPOSERS: dict[str, str] = {
    "operators": "policies.proposers:OperatorProposer",
    "rule_induction": "policies.rule_induction:RuleInductionProposer",
    "llm_coach": "policies.llm_coach:LLMCoachProposer",
    "output_rules": "policies.output_rules:OutputRuleProposer",
}
"""Proposer names → ``module:Class``; a proposer of your own is named ``module:Class``."""


def register_policy(name: str, entry_point: str) -> None:
    """Make ``name`` resolve to ``entry_point`` (``"module:Class"``)."""
    if ":" not in entry_point:
        raise PolicyError(f"Expects an entry point 'module:Class', got {entry_point!r}.")
    POLICIES[name] = entry_point


def resolve_policy(name: str) -> type[Any]:
    """Return the policy class for a registered name or a ``module:Class`` string.

    Raises:
        PolicyError: the name is unknown, or the module or class cannot be imported.
    """
    entry_point = POLICIES.get(name, name)
    if ":" not in entry_point:
        raise PolicyError(
            unknown_name_message("policy", name, POLICIES)
            + " A policy of your own is named as 'package.module:ClassName'."
        )
    module_name, _, attribute = entry_point.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(
            f"Cannot import module {module_name!r} for policy {name!r}: {exc}"
        ) from exc
    try:
        policy_class = getattr(module, attribute)
    except AttributeError as exc:
        raise PolicyError(f"Module {module_name!r} has no attribute {attribute!r}.") from exc
    if not callable(getattr(policy_class, "act", None)):
        raise PolicyError(f"{entry_point} does not look like a policy: it has no act() method.")
    return policy_class


def make_policy(name: str, *, seed: int | None = None, **kwargs: Any) -> Any:
    """Build a policy by name with its keyword arguments and a seed.

    Raises:
        PolicyError: unknown name, or the class rejects the arguments.
    """
    policy_class = resolve_policy(name)
    try:
        return policy_class(seed=seed, **kwargs)
    except (TypeError, ValueError) as exc:  # ValueError: a pydantic options model rejected them
        raise PolicyError(
            f"Policy {name!r} rejected its arguments {sorted(kwargs)}: {validation_summary(exc)}"
        ) from exc


def _load_entry_point(entry_point: str, what: str) -> Any:
    module_name, _, attribute = entry_point.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(f"Cannot import module {module_name!r} for {what}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise PolicyError(f"Module {module_name!r} has no attribute {attribute!r}.") from exc


def default_proposer_name() -> str:
    """Return ``rule_induction`` when its module imports, else ``operators``."""
    try:
        _load_entry_point(PROPOSERS["rule_induction"], "proposer 'rule_induction'")
    except PolicyError:
        return "operators"
    return "rule_induction"


def make_proposer(
    spec: Any = None, *, seed: int | None = None, kwargs: dict[str, Any] | None = None
) -> Any:
    """Return a proposer from a name, a ``module:Class`` string, or an instance (as is).

    Args:
        spec: ``None`` (the default: rule induction when available, else operators), a name in
            :data:`PROPOSERS`, ``"module:Class"``, several joined by ``+`` (a
            :class:`~policies.proposers.CombinedProposer`), or an object with a ``propose``
            method.
        seed: passed to proposers whose constructor takes ``seed``.
        kwargs: constructor keyword arguments; for a ``+`` combination, a mapping from each
            proposer's name to its own keyword arguments.

    Raises:
        PolicyError: unknown name, import failure, or the class rejects the arguments.

    Example:
        >>> make_proposer("operators", seed=0).name
        'operators'
    """
    if spec is not None and not isinstance(spec, str):
        if not callable(getattr(spec, "propose", None)):
            raise PolicyError(
                f"Expects a proposer with a propose() method, got {type(spec).__name__}."
            )
        return spec
    name = spec or default_proposer_name()
    if "+" in name:
        from policies.proposers import CombinedProposer

        parts = [part.strip() for part in name.split("+") if part.strip()]
        options = dict(kwargs or {})
        unknown = sorted(set(options) - set(parts))
        if unknown:
            raise PolicyError(
                f"Expects proposer_kwargs keyed by the combined proposers {parts}, got {unknown}."
            )
        return CombinedProposer(
            [make_proposer(part, seed=seed, kwargs=options.get(part)) for part in parts]
        )
    entry_point = PROPOSERS.get(name, name)
    if ":" not in entry_point:
        raise PolicyError(
            unknown_name_message("proposer", name, PROPOSERS)
            + " A proposer of your own is named as 'package.module:ClassName'."
        )
    proposer_class = _load_entry_point(entry_point, f"proposer {name!r}")
    options = dict(kwargs or {})
    try:
        parameters = set(inspect.signature(proposer_class).parameters)
    except (TypeError, ValueError):
        parameters = set()
    if "seed" in parameters and "seed" not in options:
        options["seed"] = seed
    try:
        proposer = proposer_class(**options)
    except TypeError as exc:
        raise PolicyError(
            f"Proposer {name!r} rejected its arguments {sorted(options)}: {exc}"
        ) from exc
    if not callable(getattr(proposer, "propose", None)):
        raise PolicyError(f"{entry_point} does not look like a proposer: it has no propose().")
    return proposer
