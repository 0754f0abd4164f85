"""Hand-built observations, info rows and a tiny embedder for policy tests."""

from __future__ import annotations

from typing import Any

import numpy as np

COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."


class HashEmbedder:
    """Bag-of-words vectors (hashed words), unit length: similar wording, similar vectors."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                out[row, sum(map(ord, word)) % self.dim] += 1.0
            out[row, -1] += 0.1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def observation(sop: str = "Answer the user in a way that fits what they said.") -> dict[str, Any]:
    return {
        "prompt": "You are a friendly assistant.\n\n## SOP\n" + sop,
        "blocks": {"general": "You are a friendly assistant.", "sop": sop},
        "model": "sim-large",
        "version": "v0",
        "scores": np.array([0.1, 0.1], dtype=np.float32),
    }


def row(
    sample_id: str, text: str, reference: str, output: str = "Hi.", score: float = 0.1
) -> dict[str, Any]:
    return {
        "sample_id": sample_id,
        "input": text,
        "output": output,
        "reference": reference,
        "score": score,
        "scores": {"similarity": score},
        "explanations": {"similarity": f"cosine {score}"},
        "failed": False,
    }


def info(rows: list[dict[str, Any]], version: str = "v0") -> dict[str, Any]:
    return {
        "step": 0,
        "version_id": version,
        "current_version_id": version,
        "accepted": True,
        "scores": {"aggregate": 0.1, "similarity": 0.1},
        "base_scores": {"aggregate": 0.1, "similarity": 0.1},
        "sample_scores": {r["sample_id"]: r["score"] for r in rows},
        "examples": rows,
        "invalid_edit": None,
    }


COFFEE_INPUTS = [
    "My espresso machine makes great coffee every morning.",
    "I grind coffee beans for my espresso before work.",
    "A double espresso with oat milk is my usual coffee order.",
    "Cold brew coffee tastes smoother than hot coffee to me.",
    "I tried a new espresso roast from the local roaster.",
    "Coffee at the office is terrible, so I bring espresso from home.",
    "My latte art is getting better with this espresso machine.",
    "Decaf coffee after dinner lets me sleep.",
    "The barista pulled a perfect espresso shot for my coffee.",
    "I drink three cups of coffee before noon.",
    "Pour-over coffee needs a gooseneck kettle.",
    "My grandmother drank her coffee black with an espresso chaser.",
]
SPORTS_INPUTS = [
    "I play football with my team every weekend.",
    "Our basketball team won the league final.",
    "I run marathons and train for the next race.",
    "The football match went to penalties.",
    "Tennis practice on Tuesday was exhausting for the team.",
    "I swim laps before the league game.",
    "Our team lost the football final yesterday.",
    "Cycling races in the mountains are brutal.",
    "The coach made the team run sprints after the match.",
    "I play tennis with my brother.",
    "Hockey season starts next week for our team.",
    "I watched the basketball game with friends.",
]


def coffee_sports_rows() -> list[dict[str, Any]]:
    rows = [row(f"c{i:02d}", text, COFFEE) for i, text in enumerate(COFFEE_INPUTS)]
    rows += [row(f"s{i:02d}", text, SPORTS) for i, text in enumerate(SPORTS_INPUTS)]
    return rows
