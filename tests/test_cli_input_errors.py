"""Bad command-line input is one clear error line and exit status 2, never a traceback.

Each case runs the real ``selfimprove-rl`` entry point as a subprocess, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "selfimprove_rl.cli"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def write(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.write_bytes(content)
    return str(path)


SMALL_DATA = b'{"input": "I love espresso", "output": "Coffee!"}\n' * 3
CASES = {
    "non-utf8-config": (
        lambda d: ["run", write(d, "latin1.toml", b'name = "caf\xe9"\n')],
        "latin1.toml is not UTF-8 text (invalid continuation byte at byte 11); TOML configs "
        "are UTF-8.",
    ),
    "config-is-a-directory": (
        lambda d: ["run", str(d)],
        "is a directory; expected a TOML config file.",
    ),
    "bad-env-values": (
        lambda d: [
            "run",
            write(
                d,
                "env.toml",
                b'[data]\nkind = "mimic"\npath = "'
                + write(d, "data.jsonl", SMALL_DATA).encode()
                + b'"\n[env]\nminibatch_size = 0\nminibatch = 3\n',
            ),
            "--out",
            str(d / "run"),
            "--no-progress",
        ],
        "Invalid env options: env.minibatch_size: Input should be greater than or equal to 1 "
        "(got 0); env.minibatch: Unknown option 'minibatch'. Did you mean 'minibatch_size'?",
    ),
    "empty-model": (
        lambda d: ["run", "--model", "", "--max-steps", "1"],
        "target.model: Value error, must not be empty or blank",
    ),
    "blank-policy": (
        lambda d: ["run", "--policy", "  ", "--max-steps", "1"],
        "policy.name: Value error, must not be empty or blank",
    ),
    "bad-policy-kwargs": (
        lambda d: [
            "run",
            write(d, "kwargs.toml", b'[policy]\nname = "random"\nkwargs = {colour = "red"}\n'),
            "--data",
            write(d, "data.jsonl", SMALL_DATA),
            "--out",
            str(d / "run"),
            "--no-progress",
        ],
        "Policy 'random' rejected its arguments ['colour']",
    ),
    "port-out-of-range": (
        lambda d: ["serve-sim", "--port", "99999"],
        "argument --port: expected a port number 0-65535, got '99999'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_exit_2(tmp_path: Path, case: str) -> None:
    make_args, message = CASES[case]
    result = run_cli(*make_args(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("selfimprove-rl", "  "))
