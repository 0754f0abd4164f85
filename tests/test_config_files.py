"""Shipped configs by name from any folder, `configs` list/copy, --set, --policy, module:Class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove_rl.cli import _run_config, build_parser, main
from selfimprove_rl.compare import load_compare_config
from selfimprove_rl.config import load_config
from selfimprove_rl.config_files import (
    apply_settings,
    copy_config,
    locate_config,
    parse_setting,
    shipped_configs,
)
from selfimprove_rl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "configs"
CLI = Path(sys.executable).with_name("selfimprove-rl")


def test_every_shipped_config_is_listed_with_a_description(capsys) -> None:
    names = [c.name for c in shipped_configs()]
    assert names == sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert all(c.description.endswith(".") for c in shipped_configs())
    assert main(["configs"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == names
    coffee = next(line for line in printed if line.startswith("coffee_sports"))
    assert "The seed experiment: learn to route coffee vs sports messages" in coffee


def test_a_shipped_name_resolves_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    from_file = load_config(SHIPPED / "coffee_sports.toml")
    for spec in ("coffee_sports", "coffee_sports.toml", "experiments/configs/coffee_sports.toml"):
        assert load_config(spec) == from_file, spec
    experiment, compare = load_compare_config("compare_noisy")
    assert experiment.name == "compare_noisy" and compare.seeds == 5
    with pytest.raises(ConfigError, match=r"No config file at .*shipped configs: coffee_sports"):
        locate_config("coffee_sprots")
    with pytest.raises(ConfigError, match="No config file"):
        locate_config("elsewhere/coffee_sports.toml")  # another folder is a path, not a name
    mine = tmp_path / "coffee_sports.toml"
    mine.write_text('name = "mine"\n', encoding="utf-8")
    assert load_config("coffee_sports.toml").name == "mine", "a file that exists wins"


def test_configs_copy_writes_it_out_and_never_overwrites(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "copy", "pipeline"]) == 0
    assert (tmp_path / "pipeline.toml").read_bytes() == (SHIPPED / "pipeline.toml").read_bytes()
    assert "wrote pipeline.toml" in capsys.readouterr().out
    assert main(["configs", "copy", "pipeline"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.toml already exists; refusing to overwrite it" in err
    folder = tmp_path / "mine"
    folder.mkdir()
    assert copy_config("support_intents.toml", folder) == folder / "support_intents.toml"
    assert copy_config("coffee_sports", tmp_path / "a" / "b.toml").read_text().startswith("#")
    assert main(["configs", "copy", "coffe_sports"]) == 2
    assert "Did you mean 'coffee_sports'?" in capsys.readouterr().err


def test_set_values_are_toml_else_text() -> None:
    assert parse_setting("stopping.test_threshold=0.9") == (["stopping", "test_threshold"], 0.9)
    assert parse_setting("policy.kwargs={ arms = 6 }") == (["policy", "kwargs"], {"arms": 6})
    assert parse_setting("target.model=sim-noisy") == (["target", "model"], "sim-noisy")
    assert parse_setting("name = a b ") == (["name"], " a b ")
    assert parse_setting('name="x=y"') == (["name"], "x=y")
    assert apply_settings({"a": {"b": 1}}, ["a.c=2", "d.e=true"]) == {
        "a": {"b": 1, "c": 2},
        "d": {"e": True},
    }
    for bad in ("stopping", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="Expects --set KEY=VALUE"):
            parse_setting(bad)
    with pytest.raises(ConfigError, match="seed is a value"):
        apply_settings({"seed": 1}, ["seed.x=2"])


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["run", *argv])


def test_set_overrides_the_config_and_the_flags() -> None:
    config = _run_config(
        _args(
            "coffee_sports", "--max-steps", "5",
            "--set", "stopping.max_total_steps=7", "--set", "env.minibatch_size=16",
            "--set", "target.model=sim-noisy", "--set", "gate.min_improvement=0.05",
        )
    )  # fmt: skip
    assert config.stopping.max_total_steps == 7, "--set comes after the flags"
    assert config.env["minibatch_size"] == 16 and config.target.model == "sim-noisy"
    assert config.gate.min_improvement == 0.05 and config.name == "coffee_sports"


def test_an_unknown_set_key_is_one_line_exit_2(capsys) -> None:
    code = main(["run", "coffee_sports", "--set", "stopping.max_total_stepz=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "stopping.max_total_stepz: Unknown key 'max_total_stepz'." in err
    assert "Did you mean 'max_total_steps'?" in err
    assert main(["run", "coffee_sports", "--set", "stopping.max_total_steps=many"]) == 2
    assert "stopping.max_total_steps: Input should be a valid integer" in capsys.readouterr().err
    assert main(["compare", "compare_noisy", "--set", "compare.sedes=2"]) == 2
    err = capsys.readouterr().err
    assert "compare.sedes: Unknown key 'sedes'. Did you mean 'seeds'?" in err


def test_compare_set_reaches_both_tables() -> None:
    experiment, compare = load_compare_config(
        "compare_noisy", settings=["compare.seeds=2", "stopping.max_total_steps=9"]
    )
    assert compare.seeds == 2 and experiment.stopping.max_total_steps == 9


def test_policy_flag_drops_the_config_kwargs(tmp_path: Path, capsys) -> None:
    config = _run_config(_args("pipeline", "--policy", "random"))
    assert config.policy.name == "random" and config.policy.kwargs == {}
    assert "drops the config's policy kwargs ['mode', 'policy']" in (capsys.readouterr().err)
    config = _run_config(_args("pipeline", "--policy", "ucb1", "--policy-kwargs", '{"arms": 3}'))
    assert config.policy.kwargs == {"arms": 3}
    config = _run_config(_args("pipeline", "--policy-kwargs", '{"mode": "joint"}'))
    assert config.policy.name == "program_coach" and config.policy.kwargs == {"mode": "joint"}
    assert _run_config(_args("pipeline")).policy.kwargs["mode"] == "alternate"
    assert main(["run", "pipeline", "--policy-kwargs", "[1]"]) == 2
    assert "Expects --policy-kwargs as a JSON object" in capsys.readouterr().err
    assert "without --policy-kwargs the config's policy kwargs are dropped" in " ".join(
        build_parser()._subparsers._group_actions[0].choices["run"].format_help().split()  # type: ignore[union-attr]
    )


def test_run_a_shipped_config_with_a_policy_from_the_current_folder(tmp_path: Path) -> None:
    """From an empty folder, as an installed user would: no repo files, no PYTHONPATH."""
    (tmp_path / "my_policy.py").write_text(
        "from policies.random_policy import RandomPolicy\n\n\n"
        "class MyPolicy(RandomPolicy):\n    pass\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            str(CLI), "run", "coffee_sports", "--policy", "my_policy:MyPolicy",
            "--max-steps", "2", "--set", "env.minibatch_size=8", "--out", "run",
            "--no-progress",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "policy my_policy:MyPolicy on simulated" in done.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == {**config["data"], "kind": "dataset", "path": "coffee_sports"}
    assert config["env"]["minibatch_size"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_policy.py", "run"]
