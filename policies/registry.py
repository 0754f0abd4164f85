"""Which policy does a name mean? The table of shipped policies and ``module:Class`` lookup.

The runner and CLI resolve policies through here, the way ``gymnasium.make`` resolves entry
points: by registered name, or by a ``"package.module:ClassName"`` string for a user's own
policy class.
"""

from __future__ import annotations

import importlib
from typing import Any

from selfimprove_rl.errors import PolicyError, unknown_name_message

POLICIES: dict[str, str] = {
    "random": "policies.random_policy:RandomPolicy",
    "rule_induction": "policies.rule_induction:RuleInductionCoach",
    "llm_coach": "policies.llm_coach:LLMCoachPolicy",
}


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
    except TypeError as exc:
        raise PolicyError(
            f"Policy {name!r} rejected its arguments {sorted(kwargs)}: {exc}"
        ) from exc
