"""`selfimprove-rl warm-up` fills the embedding store so a fresh process's first reset is fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import gymnasium, envs
env = gymnasium.make("selfimprove_rl/PromptEnv-v0", data="support_intents")
observation, info = env.reset(seed=int(sys.argv[1]))
print(json.dumps({"torch": "torch" in sys.modules, "observed": bool(observation)}))
"""


def test_after_warm_up_a_fresh_process_resets_without_loading_torch(tmp_path: Path) -> None:
    env = {**os.environ, "SELFIMPROVE_EMBEDDING_CACHE": str(tmp_path)}
    warmed = subprocess.run(
        [sys.executable, "-m", "selfimprove_rl.cli", "warm-up", "--data", "support_intents"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "support_intents:" in warmed.stdout and str(tmp_path) in warmed.stdout
    assert "texts embedded" in warmed.stdout
    for seed in (3, 11):  # any minibatch of the seed prompt
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(seed)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen == {"torch": False, "observed": True}
