"""Policies that act on the prompt environments through one protocol.

Shipped policies are resolved by name (see :data:`POLICIES`); a policy of your own is named
``"package.module:ClassName"``.
"""

from policies.base import BasePolicy, Policy, Transition
from policies.registry import POLICIES, make_policy, register_policy, resolve_policy

__all__ = [
    "POLICIES",
    "BasePolicy",
    "Policy",
    "Transition",
    "make_policy",
    "register_policy",
    "resolve_policy",
]
