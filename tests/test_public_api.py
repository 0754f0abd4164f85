from __future__ import annotations
import __future__

import importlib
import json
import subprocess
import sys
import types

import pytest

PACKAGES = ["selfimprove_rl", "envs", "policies"]
HEAVY = ["phoenix", "torch", "sentence_transformers", "sklearn", "matplotlib", "stable_baselines3"]
IMPORT_BUDGET_S = 1.5

IMPORT_PROBE = f"""
import json, sys, time
start = time.perf_counter()
import selfimprove_rl, envs, policies
elapsed = time.perf_counter() - start
heavy = sorted(
    name for name in sys.modules
    if any(name == h or name.startswith(h + ".") for h in {HEAVY!r})
)
print(json.dumps({{"elapsed": elapsed, "heavy": heavy}}))
"""


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_what_is_importable(name: str) -> None:
    package = importlib.import_module(name)
    exported = list(package.__all__)
    assert len(set(exported)) == len(exported), "duplicates in __all__"
    missing = [attr for attr in exported if not hasattr(package, attr)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    public = {
        attr
        for attr in vars(package)
        if not attr.startswith("_")
        and not isinstance(getattr(package, attr), types.ModuleType | __future__._Feature)
    }
    unexported = sorted(public - set(exported))
    assert not unexported, f"{name} defines public names missing from __all__: {unexported}"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from selfimprove_rl import *", namespace)
    import selfimprove_rl

    assert set(namespace) - {"__builtins__"} == set(selfimprove_rl.__all__)


def test_version_is_exported() -> None:
    import selfimprove_rl

    assert isinstance(selfimprove_rl.__version__, str)
    assert "__version__" in selfimprove_rl.__all__


def test_import_is_fast_and_loads_no_heavy_dependency() -> None:
    # Best of three fresh interpreters: other processes share the two cores.
    runs = []
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        assert runs[-1]["heavy"] == [], f"imported at package import time: {runs[-1]['heavy']}"
        if runs[-1]["elapsed"] < IMPORT_BUDGET_S:
            break
    best = min(run["elapsed"] for run in runs)
    assert best < IMPORT_BUDGET_S, f"import selfimprove_rl, envs, policies took {best:.2f} s"
