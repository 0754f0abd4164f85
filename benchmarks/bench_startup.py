"""Startup benchmark: how long does a newcomer wait for the first observation? Prints JSON.

Each trial is a fresh Python process that runs::

    import gymnasium, envs
    env = gymnasium.make("selfimprove_rl/PromptEnv-v0")
    env.reset(seed=0)

and reports its own import, make and reset seconds, whether it loaded torch, its CPU seconds
and peak RSS; the parent times the whole process (interpreter start to exit). Two cases:

* ``cold``: an empty embedding store (a new ``SELFIMPROVE_EMBEDDING_CACHE`` folder per
  trial): the process loads torch and the embedding model and embeds every text it meets;
* ``warm``: the store a previous process filled (one untimed process fills it first): the
  case of every run after the first on a machine;
* ``installed``: the store ``selfimprove-rl warm-up`` filled (``make install`` runs it), each
  trial resetting with another seed (another minibatch): a newcomer's first process.

Also printed: ``len(repr(env.observation_space))``. Medians are the figures to quote on a
shared machine; best and worst show the noise. Run:
``.venv/bin/python benchmarks/bench_startup.py [--trials 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROBE = """
import json, resource, sys, time
began = time.perf_counter()
import gymnasium, envs
imported = time.perf_counter()
env = gymnasium.make("selfimprove_rl/PromptEnv-v0")
made = time.perf_counter()
env.reset(seed=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
reset = time.perf_counter()
print(json.dumps({
    "import": imported - began,
    "make": made - imported,
    "reset": reset - made,
    "make_and_reset": reset - imported,
    "torch_loaded": "torch" in sys.modules,
    "repr_length": len(repr(env.observation_space)),
}), flush=True)
env.close()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def run_probe(cache_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Run the probe in a fresh interpreter; return its figures plus process wall and RSS."""
    env = {**os.environ, "SELFIMPROVE_EMBEDDING_CACHE": str(cache_dir)}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(seed)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    figures: dict[str, Any] = json.loads(lines[-2])
    usage = json.loads(lines[-1])
    figures["process_wall"] = wall
    figures["process_cpu"] = usage["cpu"]
    figures["peak_rss_mb"] = usage["peak_rss_mb"]
    return figures


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, best and worst of each timed figure; torch loads and repr length as seen."""
    keys = ["import", "make", "reset", "make_and_reset", "process_wall", "process_cpu"]
    summary: dict[str, Any] = {
        key: {
            "median": round(statistics.median(t[key] for t in trials), 3),
            "best": round(min(t[key] for t in trials), 3),
            "worst": round(max(t[key] for t in trials), 3),
        }
        for key in keys
    }
    summary["peak_rss_mb_median"] = round(statistics.median(t["peak_rss_mb"] for t in trials), 1)
    summary["torch_loaded"] = sorted({t["torch_loaded"] for t in trials})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="Fresh processes per case.")
    parser.add_argument("--skip-cold", action="store_true", help="Measure the warm case only.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result: dict[str, Any] = {"trials": args.trials, "cpu_count": os.cpu_count()}
        if not args.skip_cold:
            cold = [run_probe(root / f"cold-{i}") for i in range(args.trials)]
            result["cold"] = summarize(cold)
        warm_dir = root / "warm"
        filling = run_probe(warm_dir)
        warm = [run_probe(warm_dir) for _ in range(args.trials)]
        result["warm"] = summarize(warm)
        result["fill_store_seconds"] = round(filling["process_wall"], 3)
        installed_dir = root / "installed"
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "selfimprove_rl.cli", "warm-up"],
            env={**os.environ, "SELFIMPROVE_EMBEDDING_CACHE": str(installed_dir)},
            capture_output=True,
            check=True,
        )
        result["warm_up_seconds"] = round(time.perf_counter() - began, 3)
        installed = [run_probe(installed_dir, seed=i + 1) for i in range(args.trials)]
        result["installed"] = summarize(installed)
        result["observation_space_repr_length"] = warm[0]["repr_length"]
        load = os.getloadavg()
        result["load_average_1m"] = round(load[0], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
