"""Does the loop win on a real model? Human baselines, transfers and shipped policies, side by side.

On a real instruction-tuned model behind an OpenAI-compatible server (by default the local
Qwen2.5-Coder-0.5B-Instruct of ``make llm``), for ``support_intents`` (4 replies) and
``coffee_sports`` (2 replies), exact match against the reference, one fixed split (seed 0):

* **seed** — the checkpoint's logged prompt (a vague placeholder);
* **human: rules** — a routing prompt hand-written once, here, for this benchmark;
* **human: demos** — 3 demonstrations per reply (from the train split) as chat turns under a
  one-line instruction;
* **human: rules + demos** — both;
* **sim-learned** — the prompt ``rule_induction`` promotes on ``sim-large``, transferred
  unchanged;
* **rule_induction**, **llm_coach** (the same local model as coach), **ucb1 over both
  proposers** — the shipped policies run directly on the real model, from the seed prompt,
  each capped at ``--budget`` target-model calls.

Per row: holdout exact match (mean and 95% t-interval clipped to [0, 1] over seeds), target
calls, coach calls, wall time. Then the simulator's fidelity: the Spearman rank correlation
between the real model's holdout scores and ``sim-large``'s (and ``sim-max-cue``'s,
sim-large's earlier reading, for comparison) over every prompt scored (seed, human baselines,
sim-learned, each real-learned prompt, and peers from ``bench_peers.py``'s prompts file when given).

The fidelity **panel** adds prompts of the forms optimizers write, built mechanically from
the train split so that every data set gets the same ones (labelled ``panel: ...``): the
reply list alone; one rule for one reply; a rule per reply named by its label, without and
with the list; word-list rules (the terms ``rule_induction`` induces), without and with 2
typical demonstrations per reply; 1 demonstration per reply under the one-line instruction;
the seed prompt with 3 demonstrations per reply. Real scores of a prompt on 32-40 samples
differ by sampling noise alone, so the table also prints the **noise ceiling**: the split-half
rank correlation of the real model with itself over the same panel (Spearman-Brown corrected,
mean over 200 random halves) and its square root, the ρ a noiseless perfect simulator would
be expected to reach against these real scores.

Every result is a JSON file under ``--out`` (one per data set, row and seed), so an
interrupted benchmark continues where it stopped; replays of fixed prompts go through a
persistent response cache, so re-scoring is free.

    .venv/bin/python benchmarks/bench_real.py --quick            # one seed, support_intents
    .venv/bin/python benchmarks/bench_real.py --seeds 3 --data support_intents,coffee_sports
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scipy import stats

from policies.proposers import coach_reports
from selfimprove_rl.backend import Backend
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Action, Checkpoint, Demo, Sample
from selfimprove_rl.config import parse_config
from selfimprove_rl.evals.code import ExactMatch
from selfimprove_rl.evals.scoring import score_outcomes
from selfimprove_rl.local_llm import DEFAULT_ALIAS
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.prompt import PromptState
from selfimprove_rl.registry import Registry
from selfimprove_rl.replay import ReplayConfig, Replayer
from selfimprove_rl.runner import run_experiment

DATA_SETS = ("support_intents", "coffee_sports")
# The simulated readings whose ranking of prompts is compared with the real model's.
FIDELITY_SIMS = ("sim-large", "sim-max-cue")

# Written once, by hand, for this benchmark: what a careful engineer would write for the
# real model without any optimizer. Labelled as such in every table.
HAND_WRITTEN: dict[str, str] = {
    "support_intents": (
        "You are the first-line support assistant of an online shop. Read the customer's "
        "message and answer with the one canned reply that fits, copied word for word. Do not "
        "add, change or explain anything.\n"
        "\n"
        "- If the customer cannot sign in, forgot a password, is locked out, or has another "
        "problem with their account or profile, reply: {account}\n"
        "- If the message is about a payment, a charge, an invoice, a refund or a "
        "subscription, reply: {billing}\n"
        "- If the message is about the delivery of an order: shipping, tracking, a courier or "
        "a package, reply: {shipping}\n"
        "- For anything else (feedback, product questions, suggestions), reply: {other}"
    ),
    "coffee_sports": (
        "Answer the user's message with exactly one of two replies, copied word for word.\n"
        "\n"
        "- If the message is about coffee (espresso, lattes, beans, cafés, brewing), reply: "
        "{coffee}\n"
        "- If the message is about sports, exercise, games or athletes, reply: {sports}"
    ),
}
ONE_LINE_INSTRUCTION = (
    "Answer the message with the matching reply from the examples, word for word."
)
DEMOS_PER_REPLY = 3
SPLIT_HALVES = 200


# ----------------------------------------------------------------------------- data
MAX_TOKENS = 96  # the longest reference is ~45 tokens; a longer answer cannot match


def load(name: str, model: str) -> tuple[Checkpoint, dict[str, list[Sample]]]:
    """Return the exact-match checkpoint of a shipped data set and its split (seed 0).

    The call is made deterministic (temperature 0, a seed) and its answers are capped at
    :data:`MAX_TOKENS`, as a production routing call would be; otherwise a vague prompt's long
    answers dominate the benchmark's time without changing any score.
    """
    loaded = load_dataset(name, model=model, eval_kind="exact_match")
    action = loaded.action.model_copy(
        update={"temperature": 0.0, "seed": 0, "max_tokens": MAX_TOKENS}
    )
    checkpoint = loaded.model_copy(update={"action": action})
    splits = checkpoint.split(seed=0)
    return checkpoint, {"train": splits.train, "test": splits.test, "holdout": splits.holdout}


def replies_by_label(name: str, checkpoint: Checkpoint) -> dict[str, str]:
    """Return each reply by the label its data set gives it (``intent`` or ``topic``)."""
    labels: dict[str, str] = {}
    for sample in checkpoint.samples:
        label = sample.metadata.get("intent") or sample.metadata.get("topic")
        if isinstance(label, str) and sample.reference:
            labels.setdefault(label, sample.reference)
    return labels


def human_baselines(name: str, checkpoint: Checkpoint, train: list[Sample]) -> dict[str, Action]:
    """Return the three human baselines as actions (see the module docstring)."""
    replies = replies_by_label(name, checkpoint)
    rules = HAND_WRITTEN[name]
    for label, reply in replies.items():
        rules = rules.replace("{" + label + "}", reply)
    demos = _demos(train, DEMOS_PER_REPLY)
    base = checkpoint.action
    return {
        "human: rules": base.model_copy(update={"system_prompt": rules}),
        "human: demos": base.model_copy(
            update={"system_prompt": ONE_LINE_INSTRUCTION, "demos": demos}
        ),
        "human: rules + demos": base.model_copy(update={"system_prompt": rules, "demos": demos}),
    }


def _demos(train: list[Sample], per_reply: int, typical: bool = False) -> tuple[Demo, ...]:
    """``per_reply`` demonstrations of each reply, round-robin; the first train inputs or, with
    ``typical``, those nearest their reply's mean embedding (as ``rule_induction`` picks)."""
    by_reply: dict[str, list[Sample]] = {}
    for sample in train:
        by_reply.setdefault(sample.reference or "", []).append(sample)
    if typical:
        from selfimprove_rl.embeddings import default_embedder

        for reply, samples in by_reply.items():
            vectors = default_embedder().encode([s.input_text for s in samples])
            centre = vectors.mean(axis=0)
            order = sorted(range(len(samples)), key=lambda i: -float(vectors[i] @ centre))
            by_reply[reply] = [samples[i] for i in order]
    return tuple(
        Demo(input=samples[round_].input_text, output=reply)
        for round_ in range(per_reply)
        for reply, samples in sorted(by_reply.items())
        if round_ < len(samples)
    )


def panel_prompts(name: str, checkpoint: Checkpoint, train: list[Sample]) -> dict[str, Action]:
    """Return the fidelity panel: prompts of the forms optimizers write (module docstring)."""
    from policies.rule_induction.phrasing import LIST_HEADER, join_terms, rule_line
    from policies.rule_induction.terms import TermStats, describe

    replies = replies_by_label(name, checkpoint)
    reply_list = "\n".join([LIST_HEADER, *(f"- {r}" for r in sorted(replies.values()))])
    label_rules = "\n".join(rule_line(label, reply) for label, reply in sorted(replies.items()))
    first_label = sorted(replies)[0]
    texts = [s.input_text for s in train]
    labels = [s.reference or "" for s in train]
    word_rules = "\n".join(
        rule_line(join_terms(describe(texts, labels, reply, TermStats()).terms), reply)
        for reply in sorted(replies.values())
        if describe(texts, labels, reply, TermStats()).terms
    )
    base = checkpoint.action

    def prompt(system: str, demos: tuple[Demo, ...] = ()) -> Action:
        return base.model_copy(update={"system_prompt": system, "demos": demos})

    return {
        "panel: reply list": prompt(reply_list),
        "panel: one rule": prompt(rule_line(first_label, replies[first_label])),
        "panel: label rules": prompt(label_rules),
        "panel: label rules + list": prompt(reply_list + "\n" + label_rules),
        "panel: word-list rules": prompt(word_rules),
        "panel: word-list rules + 2 typical demos": prompt(
            word_rules, _demos(train, 2, typical=True)
        ),
        "panel: 1 demo per reply": prompt(ONE_LINE_INSTRUCTION, _demos(train, 1)),
        "panel: seed + 3 demos per reply": prompt(base.system_prompt, _demos(train, 3)),
    }


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """Scores fixed prompts on samples through our replay, with a persistent cache per model."""

    def __init__(self, backend: Backend, cache_dir: Path, concurrency: int) -> None:
        self.backend = backend
        self.cache_dir = cache_dir
        self.concurrency = concurrency

    def score(self, action: Action, samples: list[Sample], model: str) -> tuple[float, int]:
        """Return the exact-match score of ``action`` on ``model`` and the calls it sent."""
        per_sample, calls = self.score_samples(action, samples, model)
        return sum(per_sample) / len(per_sample), calls

    def score_samples(
        self, action: Action, samples: list[Sample], model: str
    ) -> tuple[list[float], int]:
        """Return the exact match of ``action`` on each sample and the calls it sent."""
        action = action.model_copy(update={"model": model})
        backend = self.backend if not model.startswith("sim-") else Backend()
        real = backend is self.backend
        # The simulator's answers are recomputed: a stored one may predate a simulator change.
        cache = ResponseCache(self.cache_dir / f"{model}.sqlite") if real else None
        config = ReplayConfig(
            concurrency=self.concurrency if real else 16, timeout_s=600.0 if real else 30.0
        )

        async def run() -> tuple[list[float], int]:
            client = backend.async_client()
            try:
                replayer = Replayer(client, cache=cache, config=config)
                report = await replayer.replay(samples, action)
            finally:
                await client.close()
            table = await score_outcomes([ExactMatch()], samples, report.outcomes)
            return table.per_sample(), report.usage.calls

        return asyncio.run(run())


# ----------------------------------------------------------------------------- runs
def policy_config(
    name: str, policy: str, seed: int, checkpoint_path: Path, backend: Backend | None, args: Any
) -> dict[str, Any]:
    """Return the experiment config of one policy run (real model when ``backend`` is given)."""
    model = args.model if backend is not None else "sim-large"
    kwargs: dict[str, Any] = {}
    if policy == "llm_coach":
        kwargs = {"model": args.model, "base_url": args.base_url}
    if policy == "ucb1":
        kwargs = {
            "proposer": "rule_induction+llm_coach",
            "proposer_kwargs": {"llm_coach": {"model": args.model, "base_url": args.base_url}},
        }
    config: dict[str, Any] = {
        "name": f"real-{name}",
        "seed": seed,
        "data": {"kind": "checkpoint", "path": str(checkpoint_path)},
        "target": {"model": model},
        "policy": {"name": policy, "kwargs": kwargs},
        "env": {
            "minibatch_size": args.minibatch,
            "max_steps": 12,
            "target_score": 0.99,
            "observe_on_no_op": True,
            "max_calls": args.budget,
        },
        # 32 test samples: the sequential gate's anytime-valid bound cannot certify the
        # 0.1-0.2 gains a real model shows (it rejected every one); the whole split decides.
        "gate": {"mode": "full_split", "min_improvement": 0.01, "max_eval_regression": 0.02},
        "stopping": {"max_total_steps": 40, "stagnation_steps": 8},
    }
    if backend is not None:
        config["backend"] = backend.model_dump(mode="json", exclude_none=True)
        config["replay"] = {"concurrency": args.concurrency, "timeout_s": 600.0}
    return config


def run_policy(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one policy and return its summary, the promoted action and the wall time."""
    started = time.perf_counter()
    result = run_experiment(parse_config(config), out=out, progress=False)
    wall = time.perf_counter() - started
    promoted = Registry(out / "versions.jsonl").build(result.summary["promoted_version"])
    return {
        "summary": result.summary,
        "wall_s": wall,
        "promoted_state": promoted.state.model_dump(mode="json"),
    }


def action_of_state(state: dict[str, Any], base: Action) -> Action:
    """Return the action a registry state stands for (system prompt from its blocks, demos)."""
    return PromptState.model_validate(state).to_action(base)


# ----------------------------------------------------------------------------- statistics
def interval(values: Sequence[float]) -> tuple[float, float]:
    """Return the mean and the half-width of a 95% t-interval, clipped to [0, 1]."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, min(half, max(mean, 1 - mean))


def split_half_reliability(per_sample: Sequence[Sequence[float]], seed: int = 0) -> float:
    """Return how well the real scores rank prompts against themselves.

    Each row is one prompt's per-sample scores on the same samples. The samples are split into
    random halves :data:`SPLIT_HALVES` times; each time the prompts' mean scores on one half
    are rank-correlated with those on the other, and the mean correlation is corrected to the
    whole set's length (Spearman-Brown: ``2r / (1 + r)``). Halves where a side ranks every
    prompt equal are skipped.
    """
    rng = random.Random(seed)
    n = len(per_sample[0])
    indices = list(range(n))
    correlations: list[float] = []
    for _ in range(SPLIT_HALVES):
        rng.shuffle(indices)
        first, second = indices[: n // 2], indices[n // 2 :]
        a = [sum(row[i] for i in first) for row in per_sample]
        b = [sum(row[i] for i in second) for row in per_sample]
        if len(set(a)) < 2 or len(set(b)) < 2:
            continue
        correlations.append(float(stats.spearmanr(a, b).statistic))
    if not correlations:
        return float("nan")
    r = sum(correlations) / len(correlations)
    return 2 * r / (1 + r) if r > -1 else float("nan")


# ----------------------------------------------------------------------------- main
@contextmanager
def target_server(args: Any) -> Iterator[str]:
    """Yield the target's base URL: ``--base-url``, or a local model server started here."""
    if args.base_url:
        yield args.base_url
        return
    from selfimprove_rl.local_llm import LocalLLMOptions, shared_server

    with shared_server(LocalLLMOptions(alias=args.model)) as server:
        yield server.base_url


def stored(path: Path, compute: Any, *args: Any) -> dict[str, Any]:
    """Return the JSON result at ``path``, computing ``compute(*args)`` first when missing."""
    if path.exists():
        return dict(json.loads(path.read_text()))
    result = dict(compute(*args))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    return result


class DataSetBench:
    """Every row of one data set, each computed once and stored under ``out/<data set>``."""

    def __init__(self, name: str, scorer: Scorer, backend: Backend, args: Any) -> None:
        self.name, self.scorer, self.backend, self.args = name, scorer, backend, args
        self.out = Path(args.out) / name
        self.checkpoint, self.splits = load(name, args.model)
        self.checkpoint_path = self.checkpoint.save(self.out / "checkpoint.json")
        self.holdout = self.splits["holdout"]

    def fixed_prompts(self) -> list[tuple[str, Action]]:
        """The seed, the human baselines and the sim-learned prompt."""
        prompts: list[tuple[str, Action]] = [("seed", self.checkpoint.action)]
        prompts += list(human_baselines(self.name, self.checkpoint, self.splits["train"]).items())
        config = policy_config(
            self.name, "rule_induction", 0, self.checkpoint_path, None, self.args
        )
        sim = stored(
            self.out / "sim-learned.json", run_policy, config, self.out / "runs" / "sim-learned"
        )
        prompts.append(("sim-learned", action_of_state(sim["promoted_state"], self.base)))
        if self.args.panel:
            panel = panel_prompts(self.name, self.checkpoint, self.splits["train"])
            prompts += list(panel.items())
        return prompts

    @property
    def base(self) -> Action:
        """The checkpoint's logged action (invocation parameters every row keeps)."""
        return self.checkpoint.action

    def fixed(self, label: str, action: Action) -> dict[str, Any]:
        """Score a fixed prompt on holdout on the real model and on sim-large.

        A stored result is reused only for the same prompt: a row whose prompt changed (the
        sim-learned prompt after a simulator change, an edited baseline) is scored again.
        """
        slug = label.replace(" ", "_").replace(":", "").replace("+", "and")
        path = self.out / "fixed" / f"{slug}.json"
        if path.exists() and json.loads(path.read_text()).get("action") != action.model_dump(
            mode="json"
        ):
            path.unlink()
        return stored(path, self._score_fixed, action)

    def _score_fixed(self, action: Action) -> dict[str, Any]:
        started = time.perf_counter()
        per_sample, calls = self.scorer.score_samples(action, self.holdout, self.args.model)
        sim, _ = self.scorer.score(action, self.holdout, "sim-large")
        return {
            "holdout": sum(per_sample) / len(per_sample),
            "per_sample": per_sample,
            "sim_large": sim,
            "target_calls": calls,
            "coach_calls": 0,
            "wall_s": time.perf_counter() - started,
            "action": action.model_dump(mode="json"),
        }

    def policy(self, policy: str, seed: int) -> dict[str, Any]:
        """Run a shipped policy on the real model from the seed prompt (once per seed)."""
        path = self.out / "policies" / f"{policy}-s{seed}.json"
        return stored(path, self._run_policy, policy, seed)

    def _run_policy(self, policy: str, seed: int) -> dict[str, Any]:
        config = policy_config(
            self.name, policy, seed, self.checkpoint_path, self.backend, self.args
        )
        run = run_policy(config, self.out / "runs" / f"{policy}-s{seed}")
        action = action_of_state(run["promoted_state"], self.base)
        sim_score, _ = self.scorer.score(action, self.holdout, "sim-large")
        summary = run["summary"]
        return {
            "holdout": summary["holdout"],
            "sim_large": sim_score,
            "target_calls": summary["calls"],
            "coach_calls": sum(
                int(c.get("requests") or 0) for c in coach_reports(summary.get("policy_report"))
            ),
            "wall_s": run["wall_s"],
            "action": action.model_dump(mode="json"),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=",".join(DATA_SETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="One seed, support_intents.")
    parser.add_argument("--base-url", default=None, help="A running OpenAI-compatible server.")
    parser.add_argument("--model", default=DEFAULT_ALIAS, help="The target's name there.")
    parser.add_argument("--budget", type=int, default=1000, help="Target calls per policy run.")
    parser.add_argument("--minibatch", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=1, help="Requests in flight.")
    parser.add_argument("--policies", default="rule_induction,llm_coach,ucb1")
    parser.add_argument("--peers", default=None, help="bench_peers.py's prompts JSON file.")
    parser.add_argument("--out", default="runs/bench_real")
    parser.add_argument(
        "--panel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Score the fidelity panel's prompts too (module docstring).",
    )
    args = parser.parse_args()
    data_sets = ["support_intents"] if args.quick else args.data.split(",")
    seeds = [0] if args.quick else list(range(args.seeds))
    policies = [p for p in args.policies.split(",") if p]
    started = time.perf_counter()
    with target_server(args) as base_url:
        args.base_url = base_url
        backend = Backend(kind="openai", base_url=base_url, timeout_s=600.0)
        scorer = Scorer(backend, Path(args.out) / "cache", args.concurrency)
        for name in data_sets:
            bench = DataSetBench(name, scorer, backend, args)
            rows: dict[str, list[dict[str, Any]]] = {}
            for label, action in bench.fixed_prompts():
                rows[label] = [bench.fixed(label, action)]
            for policy in policies:
                label = "ucb1 over both proposers" if policy == "ucb1" else policy
                rows[label] = []
                for seed in seeds:
                    try:
                        rows[label].append(bench.policy(policy, seed))
                    except Exception as exc:  # a failed run is reported as such, not a crash
                        print(f"{name} {label} seed {seed}: FAILED: {type(exc).__name__}: {exc}")
            for results in rows.values():
                for result in results:
                    action = Action.model_validate(result["action"])
                    result["sim"] = {
                        sim: scorer.score(action, bench.holdout, sim)[0] for sim in FIDELITY_SIMS
                    }
                    result["sim_large"] = result["sim"]["sim-large"]
            _print_table(name, rows, len(bench.holdout))
            _print_fidelity(name, rows, args.peers, scorer, bench.holdout)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


def _print_table(name: str, rows: dict[str, list[dict[str, Any]]], n_holdout: int) -> None:
    print(f"\n{name} — holdout exact match on the real model ({n_holdout} samples)")
    sims = " | ".join(FIDELITY_SIMS)
    print(f"| row | holdout (mean ± 95%) | n | target calls | coach calls | wall s | {sims} |")
    print("|---|---|---|---|---|---|" + "---|" * len(FIDELITY_SIMS))
    for label, results in rows.items():
        if not results:
            print(f"| {label} | failed | 0 | | | |" + " |" * len(FIDELITY_SIMS))
            continue
        mean, half = interval([r["holdout"] for r in results])
        spread = "" if math.isnan(half) else f" ± {half:.3f}"

        def avg(key: str, results: list[dict[str, Any]] = results) -> float:
            return sum(float(r.get(key) or 0) for r in results) / len(results)

        simulated = " | ".join(
            f"{sum(r['sim'][sim] for r in results) / len(results):.3f}" for sim in FIDELITY_SIMS
        )
        print(
            f"| {label} | {mean:.3f}{spread} | {len(results)} | {avg('target_calls'):.0f} | "
            f"{avg('coach_calls'):.0f} | {avg('wall_s'):.0f} | {simulated} |"
        )


def _print_fidelity(
    name: str,
    rows: dict[str, list[dict[str, Any]]],
    peers: str | None,
    scorer: Scorer,
    holdout: list[Sample],
) -> None:
    """Print the rank correlation of each simulated reading with the real model's scores.

    Every row's prompt counts; a peer's prompt from ``bench_peers.py``'s prompts file counts
    when it is a system prompt and demos we can replay on each simulated model (DSPy's
    adapter-formatted messages carry only their sim-large score, and count for sim-large).
    """
    panel: dict[str, list[tuple[float, float]]] = {sim: [] for sim in FIDELITY_SIMS}
    for results in rows.values():
        for r in results:
            for sim in FIDELITY_SIMS:
                panel[sim].append((r["sim"][sim], r["holdout"]))
    extra_for_large: list[tuple[float, float]] = []
    if peers and Path(peers).exists():
        for entry in json.loads(Path(peers).read_text()):
            if entry.get("data") != name or "sim_large" not in entry or "holdout" not in entry:
                continue
            if entry.get("action"):
                action = Action.model_validate(entry["action"])
                for sim in FIDELITY_SIMS:
                    panel[sim].append((scorer.score(action, holdout, sim)[0], entry["holdout"]))
            else:
                extra_for_large.append((entry["sim_large"], entry["holdout"]))
    for sim, pairs in panel.items():
        if len(pairs) < 3:
            continue
        rho = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        print(f"\n{sim} vs real model, {len(pairs)} prompts: Spearman rho = {rho:.2f}")
    per_sample = [
        r["per_sample"] for results in rows.values() for r in results if "per_sample" in r
    ]
    if len(per_sample) >= 3:
        reliability = split_half_reliability(per_sample)
        print(
            f"noise ceiling over the {len(per_sample)} fixed prompts: the real model's split-half "
            f"rank reliability {reliability:.2f}, expected rho of a perfect simulator "
            f"{math.sqrt(max(reliability, 0.0)):.2f}"
        )
    if extra_for_large:
        pairs = panel["sim-large"] + extra_for_large
        rho = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        print(f"sim-large with the peers' own messages too, {len(pairs)} prompts: rho = {rho:.2f}")


if __name__ == "__main__":
    main()
