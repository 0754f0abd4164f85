"""A run on Phoenix telemetry gives back to Phoenix: builds as prompt versions (scores in their
metadata, tagged candidate), results as experiments, production moved only on request."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from selfimprove_rl.cli import main
from selfimprove_rl.config import ExperimentConfig, parse_config
from selfimprove_rl.demo import deploy_prompt, production_traffic
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.mimic import PLACEHOLDER_SOP_PROMPT, load_dataset
from selfimprove_rl.registry import Registry
from selfimprove_rl.runner import run_experiment
from selfimprove_rl.telemetry import (
    CANDIDATE_TAG,
    PRODUCTION_TAG,
    PhoenixPrompts,
    PhoenixSource,
    load_version,
    phoenix_integrations,
)
from selfimprove_rl.telemetry.callbacks import PhoenixRunRecord

pytestmark = pytest.mark.phoenix


PHOENIX = phoenix_integrations()  # the wiring the CLI passes: Phoenix data and callbacks


@pytest.fixture(scope="module")
def traffic(phoenix_server: Any) -> dict[str, Any]:
    """40 coffee/sports calls made with a Phoenix prompt version, traced and scored."""
    suffix = secrets.token_hex(3)
    project, prompt = f"publish-run-{suffix}", f"bot-{suffix}"
    deployed = deploy_prompt(phoenix_server.url, prompt, PLACEHOLDER_SOP_PROMPT)
    samples = load_dataset("coffee_sports", limit=40).samples
    sent = production_traffic(phoenix_server.url, project, deployed, samples)
    return {"project": project, "prompt": prompt, "deployed": deployed, "since": sent.since}


def _config(server: Any, traffic: dict[str, Any], **phoenix: Any) -> ExperimentConfig:
    return parse_config(
        {
            "name": "publish-test",
            "seed": 0,
            "data": {
                "kind": "phoenix",
                "endpoint": server.url,
                "project": traffic["project"],
                "since": traffic["since"].isoformat(),
            },
            "policy": {"name": "rule_induction"},
            "env": {"minibatch_size": 16, "max_steps": 4, "target_score": 0.99},
            "stopping": {"max_total_steps": 3, "stagnation_steps": 3},
            "gate": {"mode": "full_split"},  # a few test samples: the old rule
            "phoenix": phoenix,
        }
    )


def _prompt_versions(px: PhoenixPrompts, name: str) -> int:
    response = px.http.get(f"v1/prompts/{name}/versions")
    response.raise_for_status()
    return len(response.json()["data"])


def test_run_publishes_builds_logs_results_and_production_moves_only_on_promote(
    phoenix_server: Any,
    traffic: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(phoenix_server, traffic, publish_prompt=True, log_results=True)
    run = run_experiment(config, out=tmp_path / "run", progress=False, integrations=PHOENIX)
    summary = run.summary
    registry = Registry(run.run_dir / "versions.jsonl")
    promoted = registry.promoted_ids[1:]
    assert promoted and summary["promoted_version"] == promoted[-1]
    record = PhoenixRunRecord.load(run.run_dir)
    # the prompt name defaults to the Phoenix prompt the traced calls were made with
    assert record.prompt_name == traffic["prompt"]
    assert record.source_prompt is not None
    assert record.source_prompt["version_id"] == traffic["deployed"].version_id
    assert [p.registry_version for p in record.published] == promoted
    final = record.published[-1]
    assert final.scores["holdout"] == pytest.approx(summary["holdout"])
    assert final.scores["test"] == pytest.approx(summary["test"])

    with PhoenixPrompts(phoenix_server.url) as px:
        candidate = load_version(px, traffic["prompt"], tag=CANDIDATE_TAG)
        assert candidate.version_id == final.phoenix_version_id
        assert candidate.system_prompt + "\n" == (run.run_dir / "final_prompt.txt").read_text()
        assert (candidate.model, candidate.invocation_parameters) == (
            "sim-large",
            {"temperature": 0.0},
        )
        meta = candidate.metadata["selfimprove"]
        assert meta["scores"]["holdout"]["aggregate"] == pytest.approx(summary["holdout"])
        assert meta["scores"]["train"]["n"] == 24
        assert meta["baseline_scores"]["holdout"]["aggregate"] == summary["baseline"]["holdout"]
        assert meta["registry_version"] == final.registry_version
        assert meta["gate"]["promoted"] is True
        assert meta["data"]["project"] == traffic["project"]
        first = load_version(
            px, traffic["prompt"], version_id=record.published[0].phoenix_version_id
        )
        assert first.metadata["selfimprove"]["parent_phoenix_version"] == (
            traffic["deployed"].version_id
        )
        # production did not move by itself
        live = load_version(px, traffic["prompt"], tag=PRODUCTION_TAG)
        assert live.version_id == traffic["deployed"].version_id
        assert record.production is None

        # results: baseline and build, on test and holdout, per sample
        assert {(r.split, r.role) for r in record.experiments} == {
            ("test", "baseline"),
            ("test", "promoted"),
            ("holdout", "baseline"),
            ("holdout", "promoted"),
        }
        logged = next(r for r in record.experiments if (r.split, r.role) == ("holdout", "promoted"))
        assert logged.aggregate == pytest.approx(summary["holdout"])
        ran = px.client.experiments.get_experiment(experiment_id=logged.experiment_id)
        assert ran["experiment_metadata"]["aggregate"] == pytest.approx(summary["holdout"])
        assert ran["experiment_metadata"]["phoenix_prompt_version"] == final.phoenix_version_id
        assert len(ran["task_runs"]) == 8
        assert all(run_["output"]["content"] for run_ in ran["task_runs"])
        scores = [e.result["score"] for e in ran["evaluation_runs"] if e.result is not None]
        assert len(scores) == 8 and sum(scores) / 8 == pytest.approx(summary["holdout"])
        baseline = next(
            r for r in record.experiments if (r.split, r.role) == ("holdout", "baseline")
        )
        assert baseline.dataset_id == logged.dataset_id  # one dataset: Phoenix compares them

        # production moves on request, and says so
        assert main(["promote", str(run.run_dir)]) == 0
        printed = capsys.readouterr().out
        assert f"{traffic['deployed'].version_id} -> {final.phoenix_version_id}" in printed
        assert load_version(px, traffic["prompt"], tag=PRODUCTION_TAG).version_id == (
            final.phoenix_version_id
        )
        moved = PhoenixRunRecord.load(run.run_dir).production
        assert moved is not None and moved.by == "promote"
        assert main(["promote", str(run.run_dir)]) == 0
        assert "already version" in capsys.readouterr().out

        # rolling back to the baseline re-tags the version the traffic used; nothing new
        versions = _prompt_versions(px, traffic["prompt"])
        assert main(["promote", str(run.run_dir), "--version", registry.baseline_id]) == 0
        assert load_version(px, traffic["prompt"], tag=PRODUCTION_TAG).version_id == (
            traffic["deployed"].version_id
        )
        assert _prompt_versions(px, traffic["prompt"]) == versions
        assert main(["promote", str(run.run_dir), "--version", "v9999"]) == 2
        assert "Unknown build 'v9999'" in capsys.readouterr().err


def test_promote_production_flag_and_resume_never_republish(
    phoenix_server: Any, traffic: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(phoenix_server, traffic, promote_production=True)
    run = run_experiment(config, out=tmp_path / "run", progress=False, integrations=PHOENIX)
    record = PhoenixRunRecord.load(run.run_dir)
    assert record.production is not None and record.production.by == "run"
    assert record.experiments == []  # log_results was not asked for
    with PhoenixPrompts(phoenix_server.url) as px:
        live = load_version(px, traffic["prompt"], tag=PRODUCTION_TAG)
        assert live.version_id == record.published[-1].phoenix_version_id
        assert live.system_prompt + "\n" == (run.run_dir / "final_prompt.txt").read_text()
        versions = _prompt_versions(px, traffic["prompt"])
        again = run_experiment(
            config, out=run.run_dir, resume=True, progress=False, integrations=PHOENIX
        )
        assert again.summary["promoted_version"] == run.summary["promoted_version"]
        assert _prompt_versions(px, traffic["prompt"]) == versions
    assert PhoenixRunRecord.load(run.run_dir).published == record.published


def test_publishing_needs_an_endpoint_and_a_prompt_name(
    phoenix_server: Any, tmp_path: Path
) -> None:
    offline = {"data": {"kind": "dataset", "path": "coffee_sports"}}
    with pytest.raises(ConfigError, match="need a Phoenix server"):
        run_experiment(
            parse_config({**offline, "phoenix": {"publish_prompt": True}}),
            out=tmp_path / "a",
            integrations=PHOENIX,
        )
    no_prompt = parse_config(
        {**offline, "phoenix": {"publish_prompt": True, "endpoint": phoenix_server.url}}
    )
    with pytest.raises(ConfigError, match=re.escape("set phoenix.prompt_name")):
        run_experiment(no_prompt, out=tmp_path / "b", progress=False, integrations=PHOENIX)
    assert not (tmp_path / "b" / "summary.json").exists()
    assert main(["promote", str(tmp_path / "b")]) == 2


def test_promote_publishes_a_build_the_run_did_not_publish(
    phoenix_server: Any, traffic: dict[str, Any], tmp_path: Path
) -> None:
    source = PhoenixSource(phoenix_server.url, traffic["project"], progress=False)
    source.fetch(since=traffic["since"])
    path = source.checkpoint().save(tmp_path / "checkpoint.json")
    config = parse_config(
        {
            "data": {"kind": "checkpoint", "path": str(path)},
            "env": {"minibatch_size": 16, "max_steps": 4},
            "stopping": {"max_total_steps": 2, "stagnation_steps": 2},
        }
    )
    run = run_experiment(config, out=tmp_path / "run", progress=False, integrations=PHOENIX)
    assert not (run.run_dir / "phoenix.json").exists()
    name = f"{traffic['prompt']}-later"
    code = main(["promote", str(run.run_dir), "--endpoint", phoenix_server.url, "--prompt", name])
    assert code == 0
    record = PhoenixRunRecord.load(run.run_dir)
    assert [p.registry_version for p in record.published] == [run.summary["promoted_version"]]
    with PhoenixPrompts(phoenix_server.url) as px:
        live = load_version(px, name, tag=PRODUCTION_TAG)
    assert live.version_id == record.published[0].phoenix_version_id
    assert json.loads((run.run_dir / "phoenix.json").read_text())["production"]["by"] == "promote"


def test_demos_are_published_as_chat_turns_and_read_back(phoenix_server: Any) -> None:
    from selfimprove_rl.checkpoint import Action, Demo
    from selfimprove_rl.telemetry import publish_version

    name = f"demos-{secrets.token_hex(3)}"
    demos = (
        Demo(input="I want my money back", output="Refunds: reply within 5 days."),
        Demo(input='Is {this} "templated"?', output="No: stored as is."),
    )
    action = Action(system_prompt="Route the message.", model="sim-large", demos=demos)
    with PhoenixPrompts(phoenix_server.url) as px:
        published = publish_version(px, name, action)
        loaded = load_version(px, name, version_id=published.version_id)
    assert loaded.demos == demos
    assert loaded.to_action().prefix_messages() == action.prefix_messages()
    request = loaded.request([{"role": "user", "content": "hi"}])
    assert [m["role"] for m in request["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
