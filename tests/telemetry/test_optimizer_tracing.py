"""The optimizer traced into its own Phoenix project: one trace per run, episodes and steps
nested, replays, evals, gate and coach beneath; never in the production project."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies.catalog import POLICIES, register_policy
from policies.rule_induction import RuleInductionCoach
from selfimprove_rl.config import parse_config
from selfimprove_rl.demo import deploy_prompt, production_traffic
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import read_jsonl
from selfimprove_rl.mimic import PLACEHOLDER_SOP_PROMPT, load_dataset
from selfimprove_rl.runner import run_experiment
from selfimprove_rl.telemetry import phoenix_integrations
from selfimprove_rl.telemetry.callbacks import PhoenixRunRecord
from selfimprove_rl.telemetry.optimizer_tracing import OptimizerTracer

from .conftest import wait_until

pytestmark = pytest.mark.phoenix

COACH_QUESTION = "Which rule would route this reply?"


PHOENIX = phoenix_integrations()  # the wiring the CLI passes: Phoenix data and callbacks


class AskingCoach(RuleInductionCoach):
    """Rule induction that first asks a (simulated) coach model, as an LLM coach would."""

    def act(self, observation: Any, info: dict[str, Any]) -> Any:
        from selfimprove_rl.backend import Backend

        Backend().sync_client().chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": COACH_QUESTION}]
        )
        return super().act(observation, info)


@pytest.fixture(scope="module")
def traffic(phoenix_server: Any) -> dict[str, Any]:
    suffix = secrets.token_hex(3)
    project = f"traced-opt-{suffix}"
    deployed = deploy_prompt(phoenix_server.url, f"bot-{suffix}", PLACEHOLDER_SOP_PROMPT)
    samples = load_dataset("coffee_sports", limit=40).samples
    sent = production_traffic(phoenix_server.url, project, deployed, samples)
    return {"project": project, "since": sent.since}


@pytest.fixture
def asking_coach() -> Any:
    name = f"asking-coach-{secrets.token_hex(2)}"
    register_policy(name, f"{__name__}:AskingCoach")
    yield name
    POLICIES.pop(name, None)


def _spans(client: Any, project: str, expected: int = 1) -> list[dict[str, Any]]:
    holder: dict[str, Any] = {}

    def arrived() -> bool:
        try:
            holder["spans"] = client.spans.get_spans(project_identifier=project, limit=5000)
        except httpx.HTTPStatusError as exc:  # the project exists once its first span lands
            if exc.response.status_code != 404:
                raise
            return False
        return len(holder["spans"]) >= expected

    wait_until(arrived, what=f"{expected} spans in {project}")
    return list(holder["spans"])


def test_episodes_steps_replays_evals_and_coach_nest_in_the_optimizer_project(
    phoenix_server: Any, px_client: Any, traffic: dict[str, Any], asking_coach: str, tmp_path: Path
) -> None:
    from opentelemetry import trace

    production_before = len(_spans(px_client, traffic["project"], 80))
    global_provider = trace.get_tracer_provider()
    optimizer = f"optimizer-{secrets.token_hex(3)}"
    config = parse_config(
        {
            "name": "traced",
            "data": {
                "kind": "phoenix",
                "endpoint": phoenix_server.url,
                "project": traffic["project"],
                "since": traffic["since"].isoformat(),
            },
            "policy": {"name": asking_coach},
            "env": {"minibatch_size": 16, "max_steps": 2, "target_score": 1.01},
            "stopping": {
                "max_total_steps": 3,
                "stagnation_steps": 5,
                "when_gate_cannot_promote": False,  # two episodes, whatever the gate decides
            },
            "phoenix": {"trace_optimizer": True, "optimizer_project": optimizer},
        }
    )
    run = run_experiment(config, out=tmp_path / "run", progress=False, integrations=PHOENIX)
    assert trace.get_tracer_provider() is global_provider  # never the global provider
    steps = list(read_jsonl(run.run_dir / "steps.jsonl"))
    record = PhoenixRunRecord.load(run.run_dir)
    assert record.optimizer is not None and record.optimizer.project == optimizer

    # every span it started, plus one coach LLM call per step
    spans = _spans(px_client, optimizer, record.optimizer.spans + len(steps))
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    assert spans[0]["context"]["trace_id"] == record.optimizer.trace_id
    by_id = {s["context"]["span_id"]: s for s in spans}

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return by_id[span["parent_id"]]

    def named(prefix: str) -> list[dict[str, Any]]:
        return [s for s in spans if s["name"].startswith(prefix)]

    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["name"] == "optimize traced"
    assert root["attributes"]["selfimprove.holdout"] == pytest.approx(run.summary["holdout"])
    assert root["span_kind"] == "AGENT"
    episodes = named("episode ")
    assert [e["name"] for e in sorted(episodes, key=lambda e: e["start_time"])] == [
        "episode 0",
        "episode 1",
    ]  # max_steps=2 truncates the first episode after two steps
    assert all(e["parent_id"] == root["context"]["span_id"] for e in episodes)
    step_spans = {s["attributes"]["selfimprove.step"]: s for s in named("step ")}
    assert sorted(step_spans) == [line["step"] for line in steps] == [1, 2, 3]
    assert steps[0]["version_id"] != steps[0]["base_version"]  # the first step edits
    for line in steps:
        span = step_spans[line["step"]]
        assert parent(span)["name"] == f"episode {line['episode']}"
        attributes = span["attributes"]
        assert attributes["selfimprove.reward"] == pytest.approx(line["reward"])
        assert attributes["selfimprove.version_id"] == line["version_id"]
        assert attributes["selfimprove.directive"] == line["directive"]
        assert attributes["selfimprove.calls"] == line["calls"]
        assert attributes["selfimprove.scores.aggregate"] == pytest.approx(
            line["scores"]["aggregate"]
        )
        children = [s["name"] for s in spans if s["parent_id"] == span["context"]["span_id"]]
        assert "policy.act" in children
        if line["version_id"] != line["base_version"]:  # a no-op costs no replay
            assert children.count("replay") == 2  # base and new version on the minibatch
            assert children.count("eval matches_reference") == 2
        if line["gate"] is not None:
            assert f"score test {line['version_id']}" in children
    for replay in named("replay"):
        assert parent(replay)["name"].split(" ")[0] in ("step", "episode", "score")
        assert replay["attributes"]["selfimprove.replay.samples"] > 0
    (report,) = named("report")
    assert parent(report) is root
    holdout = named(f"score holdout {run.summary['promoted_version']}")
    assert holdout and parent(holdout[0]) is report

    # the coach's own LLM call is traced beneath policy.act, in the optimizer project only
    coach_calls = [s for s in spans if s["span_kind"] == "LLM"]
    assert len(coach_calls) == len(steps)
    assert all(parent(s)["name"] == "policy.act" for s in coach_calls)
    assert COACH_QUESTION in json.dumps(coach_calls[0]["attributes"])

    production = _spans(px_client, traffic["project"], production_before)
    assert len(production) == production_before
    assert not [s for s in production if s["name"] in ("replay", "policy.act", "step 1")]


def test_the_production_project_is_refused(phoenix_server: Any) -> None:
    with pytest.raises(ConfigError, match="must not mix with production traffic"):
        OptimizerTracer(phoenix_server.url, "bot", production_project="bot")
    config = parse_config(
        {
            "data": {
                "kind": "phoenix",
                "endpoint": phoenix_server.url,
                "project": "bot",
                "since": "2026-01-01T00:00:00Z",
            },
            "phoenix": {"trace_optimizer": True, "optimizer_project": "bot"},
        }
    )
    with pytest.raises(ConfigError, match="optimizer_project is 'bot'"):
        run_experiment(config, out="/nonexistent/never-created", integrations=PHOENIX)
