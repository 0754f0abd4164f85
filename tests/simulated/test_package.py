"""The simulated package's public names, and its cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import selfimprove_rl.simulated as simulated


def test_all_names_resolve() -> None:
    assert set(simulated.__all__) == set(simulated._EXPORTS)
    for name in simulated.__all__:
        assert getattr(simulated, name) is not None
    assert set(dir(simulated)) >= set(simulated.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        simulated.nope  # noqa: B018


def test_backend_and_fault_plans_import_without_the_sdk_or_the_embedder() -> None:
    probe = (
        "import json, sys\n"
        "import selfimprove_rl.backend, selfimprove_rl.simulated.faults\n"
        "print(json.dumps(sorted(m for m in ('openai', 'torch', 'sentence_transformers', "
        "'starlette', 'uvicorn') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == []
