"""Does each policy beat RandomPolicy at an equal call budget? coffee/sports on sim-noisy.

Runs every policy of ``experiments/configs/compare_noisy.toml`` (random, the rule-induction
coach, UCB1, Thompson sampling, successive halving, the population policy, SB3 PPO) over
``--seeds`` seeds, each run capped at the same number of model calls, through the
``compare`` workflow, then prints its table and, per policy, the difference to random in
final test and holdout score with Welch's t-test.

    .venv/bin/python benchmarks/bench_policies.py --seeds 5 --jobs 2

The numbers come from the simulated model (``sim-noisy``), never from a real LLM.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from scipy.stats import ttest_ind

from selfimprove_rl.compare import load_compare_config, markdown_table, run_compare

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "compare_noisy.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-calls", type=int, default=None, help="Default: the config's.")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--policies", default=None, help="Comma-separated (random is added).")
    parser.add_argument("--out", default=None, help="Output folder (default: a temporary one).")
    args = parser.parse_args()

    experiment, compare = load_compare_config(CONFIG)
    updates: dict[str, object] = {"seeds": args.seeds, "jobs": args.jobs}
    if args.budget_calls:
        updates["budget_calls"] = args.budget_calls
    compare = compare.model_copy(update=updates)
    names = [p.title for p in compare.policies]
    if args.policies:
        names = ["random", *(n for n in args.policies.split(",") if n and n != "random")]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-policies-"))
    started = time.perf_counter()
    result = run_compare(experiment, compare, policies=names, out=out / "compare", progress=True)
    elapsed = time.perf_counter() - started

    print(
        f"\ncoffee_sports on sim-noisy, {compare.seeds} seeds, {compare.budget_calls} calls per run"
    )
    print(markdown_table(result.rows))
    runs = [r for r in result.runs if r.error is None]
    random_runs = [r for r in runs if r.policy == "random"]
    verdicts = {}
    print("| policy | test − random | p (Welch) | holdout − random | p (Welch) | beats random |")
    print("|---|---|---|---|---|---|")
    for name in names:
        if name == "random":
            continue
        mine = [r for r in runs if r.policy == name]
        line = {}
        for key in ("test", "holdout"):
            a = [float(getattr(r, key)) for r in mine]
            b = [float(getattr(r, key)) for r in random_runs]
            delta = sum(a) / len(a) - sum(b) / len(b) if a and b else float("nan")
            with warnings.catch_warnings():  # random's scores may all be equal: still valid
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(ttest_ind(a, b, equal_var=False).pvalue) if len(a) > 1 else 1.0
            line[key] = (delta, p)
        beats = all(d > 0 and p < 0.05 for d, p in line.values())
        verdicts[name] = beats
        (dt, pt), (dh, ph) = line["test"], line["holdout"]
        print(
            f"| {name} | {dt:+.3f} | {pt:.2g} | {dh:+.3f} | {ph:.2g} | {'yes' if beats else 'no'} |"
        )
    failed = [f"{r.policy}/{r.seed}: {r.error}" for r in result.runs if r.error]
    print(json.dumps({"out": str(result.out_dir), "seconds": round(elapsed, 1),
                      "beats_random": verdicts, "failed_runs": failed}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
