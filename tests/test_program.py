"""Program wiring, the template language, program states and node directives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from selfimprove_rl.checkpoint import Action, Checkpoint, EvalConstants, Provenance, Sample
from selfimprove_rl.errors import CheckpointError, DataError, InvalidEdit, ProgramError
from selfimprove_rl.program import (
    MessageTemplate,
    Program,
    ProgramNode,
    render_template,
    template_references,
)
from selfimprove_rl.program_data import load_pipeline, load_pipeline_file
from selfimprove_rl.program_state import (
    NodeEdit,
    ProgramState,
    apply_program,
    parse_program_directives,
    program_diff,
    program_directive,
)
from selfimprove_rl.prompt import AddLine, DeleteLine, PromptState, SetModel

FIXTURES = Path(__file__).parent / "fixtures"


def node(name: str, content: str | None) -> ProgramNode:
    messages = None if content is None else (MessageTemplate(content=content),)
    return ProgramNode(name=name, messages=messages)


def pipeline() -> Program:
    return Program(
        nodes=(
            node("responder", "Label: {{ nodes.router.output }}\nText: {{input}}"),
            node("router", "{{input}}"),
        )
    )


def test_nodes_run_after_what_they_read_and_the_last_is_the_output() -> None:
    program = pipeline()
    assert program.order == ("router", "responder")
    assert program.output_name == "responder"
    assert program.node("responder").upstream == ["router"]
    assert not program.is_single and Program.single().is_single


def test_substitution_is_literal_single_pass_and_never_formats_data() -> None:
    values = {"input": "{{nodes.router.output}} {0} %s \\1", "nodes.router.output": "{{input}}"}
    rendered = render_template("A={{input}} B={{nodes.router.output}}", values)
    assert rendered == "A={{nodes.router.output}} {0} %s \\1 B={{input}}"
    assert pipeline().node("responder").render("hi {x}", {"router": "billing"}) == [
        {"role": "user", "content": "Label: billing\nText: hi {x}"}
    ]


@pytest.mark.parametrize(
    "bad", ["{{ input.upper() }}", "{{nodes.router}}", "{{x}}", "{{ nodes.Router.output }}"]
)
def test_anything_but_a_reference_in_braces_is_rejected(bad: str) -> None:
    with pytest.raises(ProgramError, match=re.escape("Templates have no other syntax")):
        template_references(bad)
    with pytest.raises(ValueError, match="Expects a template placeholder"):
        MessageTemplate(content=bad)


def test_wiring_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Program(nodes=(node("a", "{{nodes.b.output}}"), node("b", "{{nodes.a.output}}")))
    with pytest.raises(ValueError, match="reads its own output"):
        Program(nodes=(node("a", "{{nodes.a.output}}"),))
    with pytest.raises(ValueError, match=r"Unknown node 'ruoter'.*router"):
        Program(nodes=(node("router", "{{input}}"), node("b", "{{nodes.ruoter.output}}")))
    with pytest.raises(ValueError, match="names must be unique"):
        Program(nodes=(node("a", None), node("a", None)))
    with pytest.raises(ProgramError, match="Unknown node"):
        pipeline().node("nope")


def two_nodes() -> ProgramState:
    return ProgramState(
        nodes={
            "router": PromptState.from_text("Label it.", model="sim-large"),
            "responder": PromptState.from_text("Answer it.", model="sim-small"),
        }
    )


def test_node_directives_parse_render_and_apply_atomically() -> None:
    text = 'NODE: router\nADD: else: respond "other"\nNODE: responder\nADD: x\nADD: y'
    edits = parse_program_directives(text)
    assert [(e.node, e.edit.kind) for e in edits] == [
        ("router", "add_line"),
        ("responder", "add_line"),
        ("responder", "add_line"),
    ]
    assert parse_program_directives(program_directive(edits)) == edits
    state = two_nodes()
    new = apply_program(state, edits)
    assert new.node("responder").block("sop").lines == ("x", "y")
    assert new.node("router") != state.node("router")
    assert '+else: respond "other"' in program_diff(state, new)
    assert apply_program(state, []) is state
    bad = [*edits, NodeEdit(node="responder", edit=DeleteLine(line=9))]
    with pytest.raises(InvalidEdit, match="node 'responder': Line 9 is out of range") as caught:
        apply_program(state, bad)
    assert caught.value.reason == "line_out_of_range"
    with pytest.raises(InvalidEdit, match="Unknown node 'rooter'") as unknown:
        apply_program(state, [NodeEdit(node="rooter", edit=AddLine(text="x"))])
    assert unknown.value.reason == "unknown_node"
    with pytest.raises(InvalidEdit, match="start with 'NODE: <name>'"):
        parse_program_directives("ADD: x")
    assert parse_program_directives("ADD: x", node="router")[0].node == "router"


def test_state_fingerprint_model_and_rendering() -> None:
    state = two_nodes()
    assert state.model == "router=sim-large, responder=sim-small"
    switched = apply_program(state, [NodeEdit(node="responder", edit=SetModel(model="sim-large"))])
    assert switched.model == "sim-large"
    assert switched.fingerprint() != state.fingerprint()
    assert ProgramState.model_validate_json(state.model_dump_json()) == state
    assert state.render().startswith("### node router (sim-large)\nLabel it.")


def test_the_shipped_pipeline_is_a_program_checkpoint_that_round_trips(tmp_path: Path) -> None:
    checkpoint = load_pipeline()
    assert checkpoint.schema_version == 2 and checkpoint.is_program
    assert len(checkpoint.samples) == 160
    assert {s.node_references["router"] for s in checkpoint.samples} == {
        "account",
        "billing",
        "shipping",
        "other",
    }
    assert [(c.name, c.node) for c in checkpoint.eval_constants] == [
        ("similarity", None),
        ("router_exact_match", "router"),
    ]
    assert checkpoint.action == checkpoint.node_actions["responder"]
    path = checkpoint.save(tmp_path / "p.json")
    assert Checkpoint.load(path) == checkpoint
    data = json.loads(path.read_text())
    del data["action"]  # filled in from the output node
    assert Checkpoint.model_validate(data) == checkpoint


def test_a_checkpoint_written_before_programs_still_loads_as_one_node() -> None:
    checkpoint = Checkpoint.load(FIXTURES / "checkpoint_v1_coffee.json")
    assert json.loads((FIXTURES / "checkpoint_v1_coffee.json").read_text())["schema_version"] == 1
    assert checkpoint.schema_version == 2 and not checkpoint.is_program
    program, actions = checkpoint.as_program()
    assert program.is_single and actions["call"] == checkpoint.action


def test_program_checkpoint_invariants() -> None:
    base = load_pipeline(limit=4)
    with pytest.raises(ValueError, match="one action per node"):
        Checkpoint.model_validate({**base.model_dump(), "node_actions": {}})
    with pytest.raises(ValueError, match="output node's"):
        other = Action(system_prompt="x", model="sim-large")
        Checkpoint.model_validate({**base.model_dump(), "action": other.model_dump()})
    with pytest.raises(ValueError, match="judges node 'nope'"):
        evals = [*base.eval_constants, EvalConstants(name="e", kind="exact_match", node="nope")]
        Checkpoint.model_validate({**base.model_dump(), "eval_constants": evals})
    with pytest.raises(ValueError, match="has no program"):
        Checkpoint(
            samples=[],
            action=Action(system_prompt="s", model="m"),
            eval_constants=[EvalConstants(name="e", kind="exact_match", node="router")],
            provenance=Provenance(source="manual"),
        )
    with pytest.raises(ValueError, match="at least one end-to-end eval"):
        evals = [c for c in base.eval_constants if c.node is not None]
        Checkpoint.model_validate({**base.model_dump(), "eval_constants": evals})


def test_pipeline_data_errors_name_file_and_line(tmp_path: Path) -> None:
    spec = json.loads(
        (
            Path(load_pipeline(limit=1).provenance.data_path or "").parent / "support_pipeline.json"
        ).read_text()
    )
    data = tmp_path / "p.jsonl"
    data.write_text('{"input": "a", "output": "b", "nodes": {"ruoter": "x"}}\n')
    (tmp_path / "p.json").write_text(json.dumps({**spec, "data": "p.jsonl"}))
    with pytest.raises(DataError, match=re.escape(f"{data}:1: Unknown node 'ruoter'")):
        load_pipeline_file(tmp_path / "p.json")
    data.write_text('{"input": "a", "output": "b", "nodes": {"router": 3}}\n')
    with pytest.raises(DataError, match='expected "nodes" to map node names'):
        load_pipeline_file(tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps({**spec, "prompts": {"router": "x"}}))
    with pytest.raises(DataError, match=r"missing \['responder'\]"):
        load_pipeline_file(tmp_path / "p.json")
    data.write_text('{"input": "a", "output": "b"}\n')
    (tmp_path / "p.json").write_text(json.dumps({**spec, "data": "p.jsonl"}))
    checkpoint = load_pipeline_file(tmp_path / "p.json")
    assert [c.name for c in checkpoint.eval_constants] == ["similarity"]
    with pytest.raises(CheckpointError):
        Checkpoint.load(tmp_path / "p.json")


def test_sample_node_fields_default_empty() -> None:
    sample = Sample(sample_id="s", chat_history=[], output_generation={})
    assert sample.node_outputs == {} and sample.node_references == {}
