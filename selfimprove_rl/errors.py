"""One exception hierarchy for selfimprove-rl.

Every error the package raises on purpose derives from :class:`SelfImproveError`, so a caller
can catch the whole family in one clause. Messages follow "expected, got, fix".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, Literal

InvalidEditReason = Literal[
    "frozen_block",
    "line_out_of_range",
    "empty_text",
    "multiline_text",
    "invalid_text",
    "heading_text",
    "malformed_edit",
    "unknown_block",
    "unknown_model",
    "unparseable_directive",
    "conflicting_edits",
    "duplicate_block",
    "demo_out_of_range",
    "unknown_node",
    "frozen_node",
]


class SelfImproveError(Exception):
    """Base class of every error raised on purpose by selfimprove-rl."""


class ConfigError(SelfImproveError):
    """A configuration value is missing, malformed or names something unknown."""


class CheckpointError(SelfImproveError):
    """A checkpoint file or its contents cannot be read, validated or split."""


class DataError(SelfImproveError):
    """An input data file (mimic JSONL, telemetry export) is malformed."""


class InvalidEdit(SelfImproveError):
    """An edit cannot be applied to a prompt state; the state is left unchanged.

    Attributes:
        reason: a machine-readable reason (see ``InvalidEditReason``).
        block: the block the edit targeted, when known.
        line: the 1-based line number the edit targeted, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: InvalidEditReason,
        block: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: InvalidEditReason = reason
        self.block = block
        self.line = line


class ProgramError(SelfImproveError):
    """A program's wiring is invalid (unknown node, cycle, malformed template placeholder)."""


class ReplayError(SelfImproveError):
    """A replay cannot run at all (a systemic fault, not a failed sample)."""


class BackendUnavailableError(ReplayError):
    """The backend failed too many requests in a row (or in a window): the run stops.

    Attributes:
        base_url: where the requests went.
        model: the model they asked for.
        last_error: one line describing the last failure (API keys redacted).
        failures: requests that failed in the window that tripped the threshold.
    """

    def __init__(
        self,
        message: str,
        *,
        base_url: str = "",
        model: str = "",
        last_error: str = "",
        failures: int = 0,
    ) -> None:
        super().__init__(message)
        self.base_url = base_url
        self.model = model
        self.last_error = last_error
        self.failures = failures


class EvaluatorError(SelfImproveError):
    """An evaluator is misconfigured or cannot run at all."""


class SimulatedModelError(SelfImproveError):
    """The simulated model was asked for something it does not serve (unknown tier, bad request)."""


class SimulatedRequestError(SimulatedModelError):
    """The simulated API rejects a request; carries the HTTP status and OpenAI error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.error_type = error_type


class TelemetryError(SelfImproveError):
    """Phoenix telemetry cannot be reached, read or written."""


class NoUsableSamplesError(TelemetryError):
    """A checkpoint build found no usable rows; the message says why rows were skipped."""


class LocalModelError(SelfImproveError):
    """The local model server cannot be set up, found, started or reached."""


class ModelIntegrityError(LocalModelError):
    """Model weights fail the GGUF magic, size or checksum check."""


class EnvError(SelfImproveError):
    """The prompt environment was misused (step before reset, unknown base version)."""


class PolicyError(SelfImproveError):
    """A policy is misconfigured or could not produce an action."""


class CoachOutputError(PolicyError):
    """A coach model's reply could not be parsed into valid edits after all retries."""


class CoachUnavailableError(PolicyError):
    """The coach model failed systemically (consecutive request failures); the run stops."""


class RegistryError(SelfImproveError):
    """The prompt registry is corrupt or was asked for a version it does not hold."""


class BudgetExhausted(SelfImproveError):
    """A call or token budget is spent; the run stops cleanly and keeps what it has."""


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """Build an "unknown X" message that suggests the closest valid name.

    Args:
        kind: what was looked up, e.g. ``"policy"``.
        name: the name that was not found.
        known: every valid name.

    Returns:
        A message naming the closest valid name when one is close, and listing the options.

    Example:
        >>> unknown_name_message("policy", "randon", ["random", "rule_induction"])
        "Unknown policy 'randon'. Did you mean 'random'? Valid options: random, rule_induction."
    """
    options = sorted(known)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Valid options: {', '.join(options)}."


def validation_summary(
    exc: Exception, *, prefix: str = "", known: Iterable[str] | None = None
) -> str:
    """Say on one line which fields of a pydantic ``ValidationError`` are wrong, and why.

    Args:
        exc: the error (anything else gives the first line of its message).
        prefix: put before each field path, e.g. ``"env."``.
        known: the valid field names; an unknown field then gets the closest one suggested.

    Returns:
        ``"a: message (got 0); b: ..."``.

    Example:
        >>> from pydantic import BaseModel, ConfigDict, ValidationError
        >>> class Options(BaseModel):
        ...     model_config = ConfigDict(extra="forbid")
        ...     size: int = 1
        >>> try:
        ...     Options.model_validate({"sise": 2})
        ... except ValidationError as error:
        ...     print(validation_summary(error, prefix="env.", known=["size"]))
        env.sise: Unknown option 'sise'. Did you mean 'size'? Valid options: size.
    """
    errors: Any = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).split("\n")[0]
    parts = []
    for error in errors():
        location = prefix + (".".join(str(part) for part in error["loc"]) or "<root>")
        if error["type"] == "extra_forbidden" and known is not None and error["loc"]:
            name = str(error["loc"][-1])
            parts.append(f"{location}: {unknown_name_message('option', name, known)}")
            continue
        got = _scalar_repr(error.get("input"))
        parts.append(f"{location}: {error['msg']}" + (f" (got {got})" if got else ""))
    return "; ".join(parts)


def _scalar_repr(value: object) -> str | None:
    if not isinstance(value, str | int | float | bool) and value is not None:
        return None
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a huge number"
    return text if len(text) <= 40 else text[:37] + "..."
