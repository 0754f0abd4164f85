"""What has the coach seen? Remembered inputs, references, and the target's observed answers.

Everything here comes from the env's ``info["examples"]`` rows (sample id, input, output,
reference, score): the coach learns the task from references and the target's behaviour from
what the target actually answered, never from a model of the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def reply_key(text: str) -> str:
    """Return the identity of a reply: its text with whitespace collapsed.

    Example:
        >>> reply_key("  Hello   there ")
        'Hello there'
    """
    return " ".join(text.split())


@dataclass
class Observed:
    """One sample as the current version answered it."""

    output: str
    correct: bool


@dataclass
class Memory:
    """Remembered samples and the current version's observed answers.

    Attributes:
        samples: sample id → ``(input, reference)``, oldest first, at most ``limit``.
        observed: sample id → the current version's answer (cleared when the version changes).
        version: the version ``observed`` belongs to.
        remembered: how many distinct samples were ever added (new evidence counter).
        skipped: rows that could not be used, counted by reason.
    """

    limit: int = 1000
    correct_at: float = 0.99
    samples: dict[str, tuple[str, str]] = field(default_factory=dict)
    observed: dict[str, Observed] = field(default_factory=dict)
    version: str = ""
    remembered: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def add_rows(self, version: str, rows: Any) -> None:
        """Remember the rows of ``info["examples"]`` of ``version``."""
        if version != self.version:
            self.version, self.observed = version, {}
        for row in rows or ():
            if not isinstance(row, Mapping):
                self._skip("row_not_a_mapping")
                continue
            sample_id, text, reference = (
                row.get("sample_id"),
                row.get("input"),
                row.get("reference"),
            )
            if not isinstance(sample_id, str) or not isinstance(text, str) or not text.strip():
                self._skip("row_without_input")
                continue
            if not isinstance(reference, str) or not reference.strip():
                self._skip("row_without_reference")
                continue
            if self.samples.pop(sample_id, None) is None:
                self.remembered += 1
            self.samples[sample_id] = (text, reference.strip())
            if row.get("failed"):
                self.observed.pop(sample_id, None)
            else:
                output = row.get("output")
                self.observed[sample_id] = Observed(
                    output=output if isinstance(output, str) else "",
                    correct=float(row.get("score", 0.0)) >= self.correct_at,
                )
        while len(self.samples) > self.limit:
            oldest = next(iter(self.samples))
            self.samples.pop(oldest)
            self.observed.pop(oldest, None)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def classes(self, min_support: int) -> dict[str, list[str]]:
        """Return reply → sample ids, for replies with at least ``min_support`` samples."""
        groups: dict[str, list[str]] = {}
        for sample_id, (_, reference) in self.samples.items():
            groups.setdefault(reply_key(reference), []).append(sample_id)
        return {reply: ids for reply, ids in groups.items() if len(ids) >= min_support}

    def errors(self, sample_ids: Any) -> list[str]:
        """Return the ids among ``sample_ids`` the current version was seen to get wrong."""
        return [i for i in sample_ids if i in self.observed and not self.observed[i].correct]

    def answered_with(self, reply: str) -> list[str]:
        """Return the ids the current version answered with ``reply`` but should not have."""
        return [
            i
            for i, seen in self.observed.items()
            if reply_key(seen.output) == reply and reply_key(self.samples[i][1]) != reply
        ]

    def state_dict(self) -> dict[str, Any]:
        """Return the memory as JSON-serialisable data."""
        return {
            "samples": [[i, text, ref] for i, (text, ref) in self.samples.items()],
            "observed": [[i, o.output, o.correct] for i, o in self.observed.items()],
            "version": self.version,
            "remembered": self.remembered,
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.samples = {str(i): (str(t), str(r)) for i, t, r in state["samples"]}
        self.observed = {str(i): Observed(str(o), bool(c)) for i, o, c in state["observed"]}
        self.version = str(state["version"])
        self.remembered = int(state["remembered"])
        self.skipped = {str(k): int(v) for k, v in state.get("skipped", {}).items()}
