"""What can a user tune in the rule-induction coach? Its one config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RuleInductionConfig(BaseModel):
    """Options of :class:`~policies.rule_induction.RuleInductionCoach` and its proposer.

    Every field has a one-line description; the CLI passes ``[policy] kwargs`` through here,
    so an unknown option is an error rather than silently ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    block: str | None = Field(
        default=None, description="Block the coach writes (default: sop, else the last)."
    )
    min_support: int = Field(
        default=2, ge=1, description="Remembered inputs a reply needs before it gets a rule."
    )
    max_classes: int = Field(
        default=12,
        ge=1,
        description="More distinct replies than this (with support) means a free-form task: "
        "no routing rules, demonstrations only.",
    )
    min_df: int = Field(default=2, ge=1, description="Inputs of the reply a term must occur in.")
    alpha: float = Field(default=0.5, gt=0, description="Prior of the smoothed log-odds.")
    z_min: float = Field(default=1.0, description="Minimum log-odds z-score of a term.")
    min_precision: float = Field(default=0.6, ge=0, le=1, description="Minimum term precision.")
    max_terms: int = Field(default=6, ge=1, description="Terms in one rule's description.")
    reply_list: bool = Field(
        default=False,
        description="Start with a 'reply with exactly one of these replies' list above the "
        "rules (the coach may still add it later when the target answers outside the known "
        "replies). Off by default: on the local 0.5B model the list cost exact match, most "
        "with demonstrations (0.11 vs 0.31 with 3 demos per reply, 64 samples).",
    )
    scaffold_demos: int = Field(
        default=3,
        ge=0,
        description="Typical demonstrations per reply in the first candidate, beside the "
        "rules (0: rules alone first). On the local 0.5B model rules with 3 typical demos per "
        "reply scored 0.41 vs 0.20 for the rules alone (64 samples).",
    )
    max_demos_per_reply: int = Field(
        default=4, ge=0, description="Demonstrations the coach gives any one reply."
    )
    max_demos: int = Field(default=16, ge=0, description="Demonstrations in the prompt at most.")
    diversity: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Demo picking: weight of difference from the demos already chosen against "
        "typicality of the reply's inputs (maximal marginal relevance). 0 by default: the "
        "most typical inputs made better demonstrations on the local 0.5B model (0.41 vs 0.31 "
        "at 0.5, 64 samples).",
    )
    correct_at: float = Field(default=0.99, description="Sample score that counts as correct.")
    max_memory: int = Field(default=1000, ge=8, description="Remembered (input, reference) pairs.")
