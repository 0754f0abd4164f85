"""The whole telemetry side on a real Phoenix server: traced traffic → evals → fetch → checkpoint,
the fetch CLI, and a build published, promoted on request, loaded by tag and logged back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from selfimprove_rl.checkpoint import Action, Checkpoint
from selfimprove_rl.cli import main
from selfimprove_rl.errors import TelemetryError
from selfimprove_rl.evals.base import ScoreTable
from selfimprove_rl.telemetry import (
    CANDIDATE_TAG,
    PRODUCTION_TAG,
    PhoenixPrompts,
    PhoenixSource,
    instrument_evals,
    load_version,
    log_experiment,
    promote_version,
    publish_version,
    uninstrument_evals,
    using_prompt_version,
)

from .conftest import COFFEE, INPUTS, SOP, SPORTS, TEMPLATE, send_traffic, traced_rows

pytestmark = pytest.mark.phoenix


def traffic_and_evals(px_client: Any, project: str, tracing: Any, classifier: Any) -> datetime:
    """Four calls with the SOP, one with another prompt, all scored under the instrumentor."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    send_traffic(INPUTS)
    send_traffic(["espresso or tea?"], system="Answer in French.")
    rows = traced_rows(px_client, project, len(INPUTS) + 1)
    from phoenix.evals import evaluate_dataframe

    recorder = instrument_evals(tracing)
    try:
        evaluate_dataframe(dataframe=rows, evaluators=[classifier], hide_tqdm_bar=True)
        assert recorder.flush()
    finally:
        uninstrument_evals()
    return start


def test_checkpoint_from_real_traced_traffic(
    phoenix_server: Any, px_client: Any, project: str, tracing: Any, classifier: Any
) -> None:
    start = traffic_and_evals(px_client, project, tracing, classifier)
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    source.fetch(since=start)
    assert (source.summary.spans, source.summary.evaluated_spans) == (5, 5)
    checkpoint = source.checkpoint()
    assert len(checkpoint.samples) == 4
    assert (source.summary.samples, source.summary.build_skipped) == (4, {"other_system_prompt": 1})
    assert checkpoint.provenance.skipped == {"other_system_prompt": 1}
    assert checkpoint.provenance.project == project
    assert checkpoint.provenance.since == start
    action = checkpoint.action
    assert (action.system_prompt, action.model, action.temperature) == (SOP, "sim-large", 0.0)
    by_input = {s.input_text: s for s in checkpoint.samples}
    assert set(by_input) == set(INPUTS)
    coffee = by_input[INPUTS[0]]
    assert coffee.output_text == COFFEE
    assert coffee.eval_labels == {"matches_reference": "correct"}
    assert coffee.eval_scores == {"matches_reference": 1.0}
    assert by_input[INPUTS[1]].output_text == SPORTS
    assert by_input[INPUTS[1]].eval_scores == {"matches_reference": 0.0}
    assert coffee.eval_variables["matches_reference"] == {"output": COFFEE, "reference": COFFEE}
    assert coffee.reference == COFFEE
    (constants,) = checkpoint.eval_constants
    assert (constants.template, constants.output_variable) == (TEMPLATE, "output")


def test_fetch_cli_writes_a_checkpoint_and_prints_the_summary(
    phoenix_server: Any,
    px_client: Any,
    project: str,
    tracing: Any,
    classifier: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start = traffic_and_evals(px_client, project, tracing, classifier)
    out = tmp_path / "checkpoint.json"
    frames = tmp_path / "frames.jsonl"
    since = start.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    code = main(
        [
            "fetch",
            "--endpoint",
            phoenix_server.url,
            "--project",
            project,
            "--since",
            since,
            "--out",
            str(out),
            "--frames",
            str(frames),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "LLM spans:        5" in printed
    assert "eval matches_reference: 5 (replayable)" in printed
    assert "skipped while building:\n  other_system_prompt: 1" in printed
    assert "checkpoint samples: 4" in printed
    checkpoint = Checkpoint.load(out)
    assert len(checkpoint.samples) == 4 and frames.exists()
    naive = main(["fetch", "--endpoint", phoenix_server.url, "--project", project,
                  "--since", "2026-01-01T00:00:00", "--out", str(out)])  # fmt: skip
    assert naive == 2
    assert "append Z for UTC" in capsys.readouterr().err


def test_publish_promote_load_and_log_back(
    phoenix_server: Any, px_client: Any, project: str, tracing: Any, classifier: Any
) -> None:
    name = f"bot-{project}"[:60]
    with PhoenixPrompts(phoenix_server.url) as px:
        base = publish_version(
            px,
            name,
            Action(system_prompt=SOP, model="sim-large", temperature=0.0, seed=3),
            scores={"test": 0.5},
            description="logged prompt",
        )
        assert base.tags == [CANDIDATE_TAG]
        assert base.metadata["selfimprove"]["scores"] == {"test": 0.5}
        assert (base.model, base.invocation_parameters) == (
            "sim-large",
            {"temperature": 0.0, "seed": 3},
        )
        promote_version(px, base.version_id)
        better = Action(system_prompt=SOP + "\nBe warm.", model="sim-large", temperature=0.0)
        new = publish_version(
            px, name, better, scores={"test": 0.9, "per_eval": {"m": 0.9}}, metadata={"run": "r1"}
        )
        assert new.version_id != base.version_id
        live = load_version(px, name, tag=PRODUCTION_TAG)
        assert live.version_id == base.version_id  # production did not move by itself
        assert live.tags == [PRODUCTION_TAG]  # candidate moved to the new version
        candidate = load_version(px, name, tag=CANDIDATE_TAG)
        assert candidate.version_id == new.version_id
        assert candidate.metadata["selfimprove"]["scores"]["test"] == 0.9
        assert candidate.metadata["selfimprove"]["run"] == "r1"
        assert candidate.to_action() == better
        with pytest.raises(TelemetryError, match="promote_version"):
            publish_version(px, name, better, tags=[PRODUCTION_TAG])
        promote_version(px, new.version_id)
        assert load_version(px, name, tag=PRODUCTION_TAG).version_id == new.version_id
        # the official client sees the same version, by tag
        official = px.client.prompts.get(prompt_identifier=name, tag=PRODUCTION_TAG)
        assert official.id == new.version_id
        with pytest.raises(TelemetryError, match="No tag 'nope'"):
            load_version(px, name, tag="nope")
        with pytest.raises(TelemetryError, match="did not accept a version of prompt 'bad name!'"):
            publish_version(px, "bad name!", better)
        with pytest.raises(TelemetryError, match="Could not tag prompt version"):
            promote_version(px, "UHJvbXB0VmVyc2lvbjo5OTk5")

        # an application loading its prompt by tag, traced: the checkpoint knows the version
        start = datetime.now(UTC) - timedelta(seconds=1)
        with using_prompt_version(live := load_version(px, name, tag=PRODUCTION_TAG)):
            send_traffic(INPUTS[:1], system=live.system_prompt)
        rows = traced_rows(px_client, project, 1)
        attributes = px_client.spans.get_spans(project_identifier=project, limit=1)[0]["attributes"]
        assert attributes["llm.prompt_template.version"] == live.version_id
        assert attributes["metadata.phoenix.prompt.name"] == name
        instrument_evals(tracing)
        try:
            classifier.evaluate(rows.iloc[0].to_dict())
        finally:
            uninstrument_evals()
        source = PhoenixSource(phoenix_server.url, project, progress=False)
        source.fetch(since=start)
        assert source.checkpoint().provenance.phoenix_prompt == {
            "name": name,
            "version_id": live.version_id,
            "tag": "candidate,production",
        }

        # scores of a run logged back as an experiment, and read back
        samples = [
            _sample(sid, text)
            for sid, text in zip(rows["context.span_id"], rows["input"], strict=True)
        ]
        table = ScoreTable(
            sample_ids=[s.sample_id for s in samples],
            scores={"matches_reference": [1.0]},
            weights={"matches_reference": 1.0},
            labels={"matches_reference": ["correct"]},
            explanations={"matches_reference": ["same text"]},
        )
        logged = log_experiment(
            px,
            dataset_name=f"{project}-holdout",
            samples=samples,
            table=table,
            outputs={samples[0].sample_id: COFFEE},
            experiment_name=new.version_id,
            metadata={"version_id": new.version_id},
        )
        assert (logged.runs, logged.evaluations) == (1, 1)
        ran = px.client.experiments.get_experiment(experiment_id=logged.experiment_id)
        assert ran["experiment_metadata"]["aggregate"] == 1.0
        assert ran["experiment_metadata"]["version_id"] == new.version_id
        (run,) = ran["task_runs"]
        assert run["output"] == {"content": COFFEE}
        (evaluation,) = ran["evaluation_runs"]
        assert evaluation.name == "matches_reference"
        assert evaluation.result is not None and evaluation.result["score"] == 1.0
        again = log_experiment(
            px,
            dataset_name=f"{project}-holdout",
            samples=samples,
            table=table,
            experiment_name=base.version_id,
        )
        assert again.dataset_id == logged.dataset_id  # one dataset, two experiments
        with pytest.raises(TelemetryError, match="samples not given to log_experiment"):
            log_experiment(px, dataset_name="x", samples=[], table=table, experiment_name="e")


def _sample(sample_id: str, text: str) -> Any:
    from selfimprove_rl.checkpoint import Sample

    return Sample(
        sample_id=sample_id,
        chat_history=[{"role": "user", "content": text}],
        output_generation={"role": "assistant", "content": COFFEE},
        span_id=sample_id,
    )
