"""Which simulated models exist, and how do they differ? One :class:`TierSpec` per tier.

=============  ==========================================================================
tier           behaviour
=============  ==========================================================================
sim-keyword    literal ``mentions`` rules and ``else`` only; ``is about`` rules and
               examples are ignored. The cheapest.
sim-small      every kind of line, but only the first 3 understood lines of the SOP, with
               stricter semantic and example thresholds. Cheap.
sim-large      everything, at the calibrated thresholds, read as a small instruction-tuned
               model reads (measured against one, see ``benchmarks/bench_real.py``): the
               evidence for each reply adds up (every rule, example and demonstration
               above its threshold votes for its reply with its margin, so rules and
               demonstrations of one reply reinforce each other); a reply only listed, or
               demonstrated once, is no evidence. The most expensive.
sim-noisy      like sim-large, but deviates (a wrong line's reply, the generic reply, or a
               garbled reply) with probability ``0.08 + 0.3 * temperature`` (temperature
               defaults to 1.0, OpenAI's default), from an RNG seeded by the request.
sim-max-cue    sim-large's earlier reading, kept for comparison: the single strongest
               rule, example or demonstration answers, a listed reply answers a message
               nothing else matches, and a reply demonstrated once is copied. It ranks
               prompts unlike the real model does (``bench_real.py`` prints both).
=============  ==========================================================================

Thresholds were calibrated on the coffee/sports data set shipped in ``selfimprove_rl/data``
(see the calibration test in ``tests/simulated``). Prices are per 1,000 tokens, in US dollars,
modelled on real price ratios so that cost objectives behave realistically.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.errors import SimulatedRequestError, unknown_name_message


class TierSpec(BaseModel):
    """What one simulated model tier understands, how strictly, and what it costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The model name requests use, e.g. 'sim-large'.")
    description: str = Field(description="One line for reports and the /v1/models listing.")
    literal_only: bool = Field(
        default=False, description="Follow only 'mentions' rules and 'else' lines."
    )
    max_statements: int | None = Field(
        default=None, ge=1, description="Read only the first N understood SOP lines."
    )
    semantic_threshold: float = Field(
        ge=-1.0, le=1.0, description="Cosine an 'is about' rule needs to match."
    )
    example_threshold: float = Field(
        ge=-1.0, le=1.0, description="Cosine the nearest example needs to answer."
    )
    weighs_evidence: bool = Field(
        default=False,
        description="Answer with the reply the strongest rule, example or demonstration "
        "supports (as instruction-tuned models weigh a whole prompt), not the first match.",
    )
    sums_evidence: bool = Field(
        default=False,
        description="With weighs_evidence: each reply's support is the sum of the margins "
        "above threshold of every rule, example and demonstration for it, and the best-"
        "supported reply answers (several moderate cues can outweigh one strong one).",
    )
    reply_list_answers: bool = Field(
        default=True,
        description="Whether a listed reply (under 'Reply with exactly one of these') "
        "answers a message nothing else matches (the closest one). Off: a list alone is no "
        "evidence, as a small model given only a menu answers in its own words.",
    )
    demos_to_copy: int = Field(
        default=1,
        ge=1,
        description="With weighs_evidence: examples and demonstrations of a reply count as "
        "evidence only once the prompt shows that reply this many times; shown fewer times, "
        "a small model paraphrases it rather than copying it.",
    )
    noise_base: float = Field(default=0.0, ge=0.0, le=1.0)
    noise_per_temperature: float = Field(default=0.0, ge=0.0)
    prompt_price_per_1k: float = Field(ge=0.0, description="USD per 1,000 prompt tokens.")
    completion_price_per_1k: float = Field(ge=0.0, description="USD per 1,000 completion tokens.")

    @property
    def noisy(self) -> bool:
        """Whether this tier ever deviates from its SOP."""
        return self.noise_base > 0.0 or self.noise_per_temperature > 0.0

    def noise_probability(self, temperature: float) -> float:
        """Probability of a deviation at ``temperature``, clipped to [0, 1].

        Example:
            >>> round(SIMULATED_MODELS["sim-noisy"].noise_probability(0.5), 2)
            0.23
        """
        return min(1.0, max(0.0, self.noise_base + self.noise_per_temperature * temperature))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the USD cost of one call.

        Example:
            >>> SIMULATED_MODELS["sim-large"].cost(1000, 1000)
            0.0125
        """
        return (
            prompt_tokens * self.prompt_price_per_1k
            + completion_tokens * self.completion_price_per_1k
        ) / 1000.0


SIMULATED_MODELS: dict[str, TierSpec] = {
    spec.name: spec
    for spec in (
        TierSpec(
            name="sim-keyword",
            description="Literal 'mentions' rules and 'else' only.",
            literal_only=True,
            semantic_threshold=1.0,
            example_threshold=1.0,
            prompt_price_per_1k=0.00005,
            completion_price_per_1k=0.0002,
        ),
        TierSpec(
            name="sim-small",
            description="Only the first 3 SOP lines; stricter semantic and example matching.",
            max_statements=3,
            semantic_threshold=0.32,
            example_threshold=0.3,
            prompt_price_per_1k=0.00015,
            completion_price_per_1k=0.0006,
        ),
        TierSpec(
            name="sim-large",
            description="Every SOP line, semantic rules and in-context examples; the evidence "
            "for each reply adds up.",
            weighs_evidence=True,
            sums_evidence=True,
            reply_list_answers=False,
            demos_to_copy=2,
            semantic_threshold=0.25,
            example_threshold=0.2,
            prompt_price_per_1k=0.0025,
            completion_price_per_1k=0.01,
        ),
        TierSpec(
            name="sim-noisy",
            description="Like sim-large, but deviates with p = 0.08 + 0.3 * temperature.",
            weighs_evidence=True,
            sums_evidence=True,
            reply_list_answers=False,
            demos_to_copy=2,
            semantic_threshold=0.25,
            example_threshold=0.2,
            noise_base=0.08,
            noise_per_temperature=0.3,
            prompt_price_per_1k=0.0005,
            completion_price_per_1k=0.0015,
        ),
        TierSpec(
            name="sim-max-cue",
            description="sim-large's earlier reading: the single strongest cue answers.",
            weighs_evidence=True,
            semantic_threshold=0.25,
            example_threshold=0.2,
            prompt_price_per_1k=0.0025,
            completion_price_per_1k=0.01,
        ),
    )
}


def get_tier(name: str) -> TierSpec:
    """Return the tier called ``name``.

    Raises:
        SimulatedRequestError: an unknown model (HTTP 404, code ``model_not_found``); the
            message suggests the closest tier and lists them all.
    """
    spec = SIMULATED_MODELS.get(name)
    if spec is None:
        raise SimulatedRequestError(
            unknown_name_message("simulated model", name, SIMULATED_MODELS),
            status=404,
            code="model_not_found",
            param="model",
        )
    return spec
