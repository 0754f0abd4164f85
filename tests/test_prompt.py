from __future__ import annotations

import re
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from selfimprove_rl.checkpoint import Action, Demo
from selfimprove_rl.errors import InvalidEdit
from selfimprove_rl.prompt import (
    EDIT_LIST_ADAPTER,
    EDIT_TYPES,
    AddDemo,
    AddLine,
    Block,
    DeleteLine,
    Edit,
    EditLine,
    NoOp,
    PromptState,
    RemoveDemo,
    ReplaceBlock,
    SetModel,
    SwapDemo,
    apply,
    block_name_for,
    diff,
    parse_directives,
    to_directive,
)

MODELS = ("sim-keyword", "sim-large", "sim-small")


def make_state(*, frozen_general: bool = False) -> PromptState:
    return PromptState(
        blocks=(
            Block(name="general", lines=("You are a friendly assistant.",), frozen=frozen_general),
            Block(
                name="sop",
                title="## SOP",
                lines=(
                    'if input mentions coffee: respond "Coffee!"',
                    'if input mentions sports: respond "No sports."',
                    'else: respond "Hello."',
                ),
            ),
        ),
        model="sim-large",
        demos=(Demo(input="I love lattes", output="Coffee!"),),
    )


def sop_lines(state: PromptState) -> tuple[str, ...]:
    return state.block("sop").lines


# --- every edit kind --------------------------------------------------------------------------

EDIT_CASES: list[tuple[Edit, tuple[str, ...], str]] = [
    (
        AddLine(text='example: "I love lattes" -> "Coffee!"'),
        (
            'if input mentions coffee: respond "Coffee!"',
            'if input mentions sports: respond "No sports."',
            'else: respond "Hello."',
            'example: "I love lattes" -> "Coffee!"',
        ),
        "sim-large",
    ),
    (
        EditLine(line=2, text='  if input mentions golf: respond "Fore!"  '),
        (
            'if input mentions coffee: respond "Coffee!"',
            'if input mentions golf: respond "Fore!"',
            'else: respond "Hello."',
        ),
        "sim-large",
    ),
    (
        DeleteLine(line=1),
        ('if input mentions sports: respond "No sports."', 'else: respond "Hello."'),
        "sim-large",
    ),
    (ReplaceBlock(lines=("one rule", " two rules ")), ("one rule", "two rules"), "sim-large"),
    (
        SetModel(model="sim-small"),
        (
            'if input mentions coffee: respond "Coffee!"',
            'if input mentions sports: respond "No sports."',
            'else: respond "Hello."',
        ),
        "sim-small",
    ),
    (
        NoOp(),
        (
            'if input mentions coffee: respond "Coffee!"',
            'if input mentions sports: respond "No sports."',
            'else: respond "Hello."',
        ),
        "sim-large",
    ),
]


EDIT_CASES += [
    (edit, EDIT_CASES[-1][1], "sim-large")
    for edit in (
        AddDemo(input="Any tennis tonight?", output="No sports."),
        SwapDemo(index=1, input="Espresso?", output="Coffee!"),
        RemoveDemo(index=1),
    )
]


def test_edit_cases_cover_every_edit_kind() -> None:
    union = get_args(get_args(Edit)[0])
    assert set(union) == set(EDIT_TYPES)
    assert {type(edit) for edit, _, _ in EDIT_CASES} == set(EDIT_TYPES)


@pytest.mark.parametrize(
    ("edit", "lines", "model"), EDIT_CASES, ids=[e.kind for e, _, _ in EDIT_CASES]
)
def test_every_edit_kind_applies(edit: Edit, lines: tuple[str, ...], model: str) -> None:
    state = make_state()
    new = apply(state, edit, allowed_models=MODELS)
    assert sop_lines(new) == lines
    assert new.model == model
    assert new.block("general") == state.block("general")
    assert sop_lines(state) == sop_lines(make_state())  # the input state is untouched


@pytest.mark.parametrize(
    ("directive", "demos"),
    [
        (
            'DEMO: "Any tennis tonight?" -> "No sports."',
            (("I love lattes", "Coffee!"), ("Any tennis tonight?", "No sports.")),
        ),
        ('DEMO 1: "Espresso?" -> "Coffee!"', (("Espresso?", "Coffee!"),)),
        ("DEL_DEMO: 1", ()),
        ('demo: "say \\"hi\\"\\nthere" → "Hi!"', None),
    ],
)
def test_demo_directives_apply(directive: str, demos: tuple[tuple[str, str], ...] | None) -> None:
    state = make_state()
    new = apply(state, parse_directives(directive))
    if demos is None:
        assert new.demos[-1] == Demo(input='say "hi"\nthere', output="Hi!")
    else:
        assert tuple((d.input, d.output) for d in new.demos) == demos
    assert new.render() == state.render()  # demos are turns, not system-prompt text
    assert new.fingerprint() != state.fingerprint()
    assert parse_directives("\n".join(to_directive(e) for e in parse_directives(directive))) == (
        parse_directives(directive)
    )


@pytest.mark.parametrize(
    ("directive", "reason"),
    [
        ('DEMO: "a" "b"', "unparseable_directive"),
        ("DEMO: a -> b", "unparseable_directive"),
        ('DEMO: "a" -> "b" trailing', "unparseable_directive"),
        ("DEL_DEMO: two", "unparseable_directive"),
        ("DEL_DEMO: 2", "demo_out_of_range"),
        ('DEMO 3: "a" -> "b"', "demo_out_of_range"),
        ('DEMO: " " -> "b"', "empty_text"),
        ("DEL_DEMO: 1\nDEL_DEMO: 1", "conflicting_edits"),
    ],
)
def test_bad_demo_directives_are_invalid_edits(directive: str, reason: str) -> None:
    state = make_state()
    with pytest.raises(InvalidEdit) as caught:
        apply(state, parse_directives(directive))
    assert caught.value.reason == reason


def test_demo_numbers_refer_to_the_demos_as_shown() -> None:
    state = apply(make_state(), [AddDemo(input="b", output="B"), AddDemo(input="c", output="C")])
    new = apply(state, parse_directives('DEL_DEMO: 1\nDEMO 3: "z" -> "Z"\nDEL_DEMO: 2'))
    assert [d.input for d in new.demos] == ["z"]


def test_demos_reach_the_action_and_the_diff() -> None:
    state = make_state()
    action = state.to_action(Action(system_prompt="", model="m"))
    assert [m["role"] for m in action.prefix_messages()] == ["system", "user", "assistant"]
    assert PromptState.from_action(action) == state.model_copy(
        update={"blocks": PromptState.from_text(state.render(), model="sim-large").blocks}
    )
    changed = apply(state, SwapDemo(index=1, input="Espresso?", output="Coffee!"))
    text = diff(state, changed)
    assert '-demo 1: user: "I love lattes"' in text and '+demo 1: user: "Espresso?"' in text


def test_noop_returns_the_same_state() -> None:
    state = make_state()
    assert apply(state, NoOp()) is state
    assert apply(state, []) is state


def test_add_line_at_a_position_and_in_a_named_block() -> None:
    state = make_state()
    first = apply(state, AddLine(text="rule zero", position=1))
    assert sop_lines(first)[0] == "rule zero"
    end = apply(state, AddLine(text="last", position=4))
    assert sop_lines(end)[-1] == "last"
    general = apply(state, AddLine(text="Be brief.", block="general"))
    assert general.block("general").lines == ("You are a friendly assistant.", "Be brief.")


def test_edits_go_to_the_last_block_when_there_is_no_sop_block() -> None:
    state = PromptState.from_text("Hi.\n\n# Rules\nrule one", "m", ensure_sop_block=False)
    assert state.default_block == "rules"
    assert apply(state, AddLine(text="rule two")).block("rules").lines == ("rule one", "rule two")


def test_edits_apply_in_order_each_on_the_previous_result() -> None:
    state = make_state()
    new = apply(state, [DeleteLine(line=1), EditLine(line=1, text="first now"), AddLine(text="z")])
    assert sop_lines(new) == ("first now", 'else: respond "Hello."', "z")


def test_edits_round_trip_through_the_discriminated_union() -> None:
    edits = [edit for edit, _, _ in EDIT_CASES]
    dumped = EDIT_LIST_ADAPTER.dump_python(edits, mode="json")
    assert [item["kind"] for item in dumped] == [e.kind for e in edits]
    assert EDIT_LIST_ADAPTER.validate_python(dumped) == edits
    assert EDIT_LIST_ADAPTER.validate_json(EDIT_LIST_ADAPTER.dump_json(edits)) == edits


# --- every invalid-edit reason, with pinned messages ------------------------------------------

INVALID_CASES: list[tuple[str, PromptState, Edit | list[Edit], str, str | None, int | None]] = [
    (
        "demo_out_of_range",
        make_state(),
        RemoveDemo(index=2),
        "Demo 2 is out of range; valid demo numbers: 1..1.",
        "demos",
        2,
    ),
    (
        "frozen_block",
        make_state(frozen_general=True),
        AddLine(text="x", block="general"),
        "Block 'general' is frozen; edit another block (sop).",
        "general",
        None,
    ),
    (
        "frozen_block",
        make_state().with_frozen(["general", "sop"]),
        EditLine(line=2, text="x"),
        "Block 'sop' is frozen; edit another block (none is editable).",
        "sop",
        2,
    ),
    (
        "line_out_of_range",
        make_state(),
        EditLine(line=4, text="x"),
        "Line 4 is out of range for block 'sop'; valid lines: 1..3.",
        "sop",
        4,
    ),
    (
        "line_out_of_range",
        make_state(),
        DeleteLine(line=0),
        "Line 0 is out of range for block 'sop'; valid lines: 1..3.",
        "sop",
        0,
    ),
    (
        "line_out_of_range",
        make_state(),
        AddLine(text="x", position=5),
        "Line 5 is out of range for block 'sop'; valid lines: 1..4.",
        "sop",
        5,
    ),
    (
        "line_out_of_range",
        PromptState.from_text("Hello.", "sim-large"),
        DeleteLine(line=1),
        "Line 1 is out of range for block 'sop'; valid lines: none (the block is empty).",
        "sop",
        1,
    ),
    (
        "empty_text",
        make_state(),
        AddLine(text="   "),
        "Line text is empty (block 'sop', line 4); use DEL to remove a line.",
        "sop",
        4,
    ),
    (
        "empty_text",
        make_state(),
        ReplaceBlock(lines=("ok", "")),
        "Line text is empty (block 'sop', line 2); use DEL to remove a line.",
        "sop",
        2,
    ),
    ("empty_text", make_state(), SetModel(model=" "), "Model name is empty.", None, None),
    (
        "multiline_text",
        make_state(),
        EditLine(line=1, text="two\nlines"),
        "Line text spans several lines (block 'sop', line 1); add one line per directive or "
        "use REPLACE.",
        "sop",
        1,
    ),
    (
        "multiline_text",
        make_state(),
        AddLine(text="carriage\rreturn", block="general"),
        "Line text spans several lines (block 'general', line 2); add one line per directive "
        "or use REPLACE.",
        "general",
        2,
    ),
    (
        "multiline_text",
        make_state(),
        AddLine(text="line\u2028separator"),
        "Line text spans several lines (block 'sop', line 4); add one line per directive or "
        "use REPLACE.",
        "sop",
        4,
    ),
    (
        "invalid_text",
        make_state(),
        AddLine(text="caf\ud800"),
        "Line text holds a lone surrogate ('\\ud800' at position 3) (block 'sop', line 4); "
        "write plain text.",
        "sop",
        4,
    ),
    (
        "invalid_text",
        make_state(),
        EditLine(line=1, text="a\x00b"),
        "Line text holds a control character ('\\x00' at position 1) (block 'sop', line 1); "
        "write plain text.",
        "sop",
        1,
    ),
    (
        "invalid_text",
        make_state(),
        SetModel(model="gpt\udfff"),
        "Model name holds a lone surrogate ('\\udfff' at position 3); write plain text.",
        None,
        None,
    ),
    (
        "heading_text",
        make_state(),
        AddLine(text="## Rules"),
        "Line text '## Rules' looks like a markdown heading (block 'sop', line 4); it would "
        "start a new block when the prompt is read back. Drop the leading '#', or use BLOCK: "
        "to target a section.",
        "sop",
        4,
    ),
    (
        "heading_text",
        make_state(),
        ReplaceBlock(lines=("ok", "  # Title  ")),
        "Line text '# Title' looks like a markdown heading (block 'sop', line 2)",
        "sop",
        2,
    ),
    (
        "malformed_edit",
        make_state(),
        AddLine.model_construct(text=None),
        "Malformed AddLine edit (text: Input should be a valid string).",
        None,
        None,
    ),
    (
        "malformed_edit",
        make_state(),
        EditLine.model_construct(line="three", text="x"),
        "Malformed EditLine edit (line: Input should be a valid integer, unable to parse string "
        "as an integer).",
        None,
        None,
    ),
    (
        "line_out_of_range",
        make_state(),
        DeleteLine(line=10**5000),
        "Line (a huge number) is out of range for block 'sop'; valid lines: 1..3.",
        "sop",
        None,
    ),
    (
        "unknown_block",
        make_state(),
        AddLine(text="x", block="sopp"),
        "Unknown block 'sopp'. Did you mean 'sop'? Valid options: general, sop.",
        "sopp",
        None,
    ),
    (
        "unknown_model",
        make_state(),
        SetModel(model="sim-larg"),
        "Unknown model 'sim-larg'. Did you mean 'sim-large'? Valid options: sim-keyword, "
        "sim-large, sim-small.",
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("reason", "state", "edit", "message", "block", "line"),
    INVALID_CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(INVALID_CASES)],
)
def test_invalid_edit_names_reason_block_and_line(
    reason: str,
    state: PromptState,
    edit: Edit,
    message: str,
    block: str | None,
    line: int | None,
) -> None:
    before = state.model_dump()
    with pytest.raises(InvalidEdit, match=re.escape(message)) as caught:
        apply(state, edit, allowed_models=MODELS)
    assert caught.value.reason == reason
    assert caught.value.block == block
    assert caught.value.line == line
    assert state.model_dump() == before


def test_any_model_is_allowed_without_an_allow_list() -> None:
    assert apply(make_state(), SetModel(model="gpt-4o-mini")).model == "gpt-4o-mini"


def test_a_failing_edit_list_is_never_half_applied() -> None:
    state = make_state()
    before = (state.render(), state.fingerprint())
    edits: list[Edit] = [
        AddLine(text="new rule"),
        SetModel(model="sim-small"),
        EditLine(line=9, text="no such line"),
        DeleteLine(line=1),
    ]
    with pytest.raises(InvalidEdit, match=re.escape("Line 9 is out of range")) as caught:
        apply(state, edits, allowed_models=MODELS)
    assert caught.value.reason == "line_out_of_range"
    assert (state.render(), state.fingerprint()) == before
    assert state.model == "sim-large"
    assert len(sop_lines(state)) == 3


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (
            "ADD: a\nmake it better",
            "Directive line 2: expected KEYWORD: value (ADD, EDIT, DEL, REPLACE, DEMO, DEL_DEMO, "
            "MODEL, BLOCK, no_change), got 'make it better'",
            2,
        ),
        (
            "INSERT: x",
            "Directive line 1: unknown keyword 'INSERT'; use ADD, EDIT, DEL, REPLACE, DEMO, "
            "DEL_DEMO, MODEL, BLOCK or no_change",
            1,
        ),
        ("EDIT: 2 to x", "Directive line 1: EDIT needs 'N -> new text'", 1),
        (
            "DEL: two",
            "Directive line 1: DEL needs a line number (1 to 9 ASCII digits), got 'two'",
            1,
        ),
        ("\n\nBLOCK:", "Directive line 1: BLOCK needs a block name", 1),
        ("DEL: ²", "Directive line 1: DEL needs a line number (1 to 9 ASCII digits), got '²'", 1),
        ("DEL: ①", "Directive line 1: DEL needs a line number (1 to 9 ASCII digits), got '①'", 1),
        ("DEL: ３", "Directive line 1: DEL needs a line number (1 to 9 ASCII digits), got '３'", 1),
        (
            "ADD: x\nDEL: " + "9" * 5000,
            "Directive line 2: DEL needs a line number (1 to 9 ASCII digits), got '99999",
            2,
        ),
        (
            "DEL " + "9" * 5000 + ":",
            "Directive line 1: DEL names a line number of 5000 digits; expected at most 9",
            1,
        ),
        (
            "EDIT: " + "1" * 10 + " -> x",
            "Directive line 1: EDIT names a line number of 10 digits; expected at most 9",
            1,
        ),
        (
            "ADD 1234567890: x",
            "Directive line 1: ADD names a line number of 10 digits; expected at most 9",
            1,
        ),
        ("EDIT: ٣ -> x", "Directive line 1: EDIT needs 'N -> new text'", 1),
        ("ADD ２: x", "Directive line 1: expected KEYWORD: value", 1),
    ],
)
def test_unparseable_directives(text: str, message: str, line: int) -> None:
    with pytest.raises(InvalidEdit, match=re.escape(message)) as caught:
        parse_directives(text)
    assert caught.value.reason == "unparseable_directive"
    assert caught.value.line == line


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (
            "EDIT: 2 -> x\nDEL: 2",
            "Line 2 of block 'sop' is targeted twice (edit_line and delete_line); give one "
            "directive per line.",
            2,
        ),
        (
            "DEL: 1\nDEL: 1",
            "Line 1 of block 'sop' is targeted twice (delete_line and delete_line); give one "
            "directive per line.",
            1,
        ),
        (
            "ADD: x\nREPLACE:\na\nb",
            "REPLACE rewrites block 'sop' whole; it cannot be combined with other directives on "
            "that block.",
            None,
        ),
    ],
)
def test_conflicting_directives(text: str, message: str, line: int | None) -> None:
    with pytest.raises(InvalidEdit, match=re.escape(message)) as caught:
        parse_directives(text)
    assert caught.value.reason == "conflicting_edits"
    assert caught.value.line == line


@pytest.mark.parametrize("value", ["ADD: x", 3, None, (("kind", "add_line"),), object()])
def test_apply_rejects_what_is_not_an_edit(value: object) -> None:
    with pytest.raises(InvalidEdit, match=r"Expects an edit|Malformed") as caught:
        apply(make_state(), value)  # type: ignore[arg-type]
    assert caught.value.reason == "malformed_edit"


def test_apply_takes_an_edit_as_a_dict() -> None:
    new = apply(make_state(), {"kind": "delete_line", "line": 1})  # type: ignore[arg-type]
    assert sop_lines(new) == sop_lines(make_state())[1:]


def test_a_deletion_never_leaves_a_blank_line_at_a_block_edge() -> None:
    state = PromptState.from_text("Intro.\n\n## SOP\nfirst\n\nsecond", "m")
    assert sop_lines(state) == ("first", "", "second")
    new = apply(state, DeleteLine(line=1))
    assert sop_lines(new) == ("second",)
    assert PromptState.from_text(new.render(), "m") == new


def test_every_invalid_edit_reason_is_tested() -> None:
    from selfimprove_rl.errors import InvalidEditReason

    covered = {case[0] for case in INVALID_CASES} | {"unparseable_directive", "conflicting_edits"}
    # duplicate_block is reserved for block-creating edits, which do not exist yet; the node
    # reasons belong to programs (tests/test_program.py, tests/envs/test_program_env.py).
    program_reasons = {"unknown_node", "frozen_node"}
    assert covered == set(get_args(InvalidEditReason)) - {"duplicate_block"} - program_reasons


# --- directive parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "ADD: be kind",
        "add: be kind",
        "Add : be kind",
        "- ADD: be kind",
        "* ADD: be kind",
        "• ADD: be kind",
        "1. ADD: be kind",
        "2) ADD: be kind",
        "   ADD:    be kind   ",
    ],
)
def test_add_directive_tolerates_bullets_casing_and_spacing(text: str) -> None:
    assert parse_directives(text) == [AddLine(text="be kind")]


@pytest.mark.parametrize(
    "text",
    [
        "EDIT: 2 -> new",
        "EDIT: 2 → new",
        "EDIT: 2 => new",
        "EDIT: 2: new",
        "EDIT 2: new",
        "edit:2->new",
        "- Edit: 2 -> new",
    ],
)
def test_edit_directive_accepts_every_arrow(text: str) -> None:
    assert parse_directives(text) == [EditLine(line=2, text="new")]


@pytest.mark.parametrize(
    "text",
    [
        "no_change",
        "No change.",
        "NO_CHANGES",
        "`no_change`",
        "no-change",
        "- no changes",
        "NO_CHANGE:",
    ],
)
def test_no_change_variants(text: str) -> None:
    assert parse_directives(text) == []
    assert parse_directives(f"{text}\n\n") == []


def test_text_keeps_colons_arrows_and_digits() -> None:
    edits = parse_directives(
        'ADD: if input mentions 3 things: respond "a -> b"\nEDIT: 1 -> 2 cups: "ok"'
    )
    assert edits == [
        EditLine(line=1, text='2 cups: "ok"'),
        AddLine(text='if input mentions 3 things: respond "a -> b"'),
    ]


def test_del_delete_model_and_positioned_add() -> None:
    assert parse_directives("DEL: 2") == [DeleteLine(line=2)]
    assert parse_directives("DELETE 3:") == [DeleteLine(line=3)]
    assert parse_directives("MODEL: sim-small") == [SetModel(model="sim-small")]
    assert parse_directives("ADD 2: second") == [AddLine(text="second", position=2)]


def test_block_switches_the_target_block() -> None:
    edits = parse_directives(
        "ADD: to default\nBLOCK: General\nADD: to general\nBLOCK: ## Tone Rules\nDEL: 1\n"
        "BLOCK: tone-rules\nDEL: 2",
        block=None,
    )
    assert edits == [
        AddLine(text="to default"),
        AddLine(text="to general", block="general"),
        DeleteLine(line=1, block="tone_rules"),
        DeleteLine(line=2, block="tone-rules"),
    ]
    assert parse_directives("ADD: x", block="general") == [AddLine(text="x", block="general")]


def test_replace_takes_every_following_line() -> None:
    text = "BLOCK: sop\nREPLACE: first rule\n\n  second rule  \n- third: keeps its bullet\n"
    assert parse_directives(text) == [
        ReplaceBlock(lines=("first rule", "second rule", "- third: keeps its bullet"), block="sop")
    ]
    assert parse_directives("REPLACE:\na\nb") == [ReplaceBlock(lines=("a", "b"))]


def test_model_edits_come_last() -> None:
    edits = parse_directives("MODEL: sim-small\nADD: x\nBLOCK: general\nDEL: 1")
    assert [e.kind for e in edits] == ["add_line", "delete_line", "set_model"]


# --- line numbers refer to the prompt as shown ------------------------------------------------


def lettered(count: int) -> PromptState:
    lines = tuple("abcdefgh"[:count])
    return PromptState(blocks=(Block(name="sop", lines=lines),), model="m")


@pytest.mark.parametrize(
    ("directives", "expected"),
    [
        ("DEL: 1\nDEL: 3", "b d"),
        ("DEL: 3\nDEL: 1", "b d"),
        ("DEL: 1\nEDIT: 2 -> B", "B c d"),
        ("ADD 2: X\nADD 4: Y", "a X b c Y d"),
        ("ADD 4: Y\nADD 2: X", "a X b c Y d"),
        ("DEL: 1\nADD 3: Z", "b Z c d"),
        ("ADD 2: X\nDEL: 2", "a X c d"),
        ("ADD 2: X\nADD 2: Y", "a X Y b c d"),
        ("ADD 5: E\nDEL: 4\nADD: F", "a b c E F"),
        ("ADD: F\nDEL: 1\nEDIT: 4 -> D", "b c D F"),
    ],
)
def test_line_numbers_refer_to_the_block_as_shown(directives: str, expected: str) -> None:
    new = apply(lettered(4), parse_directives(directives))
    assert " ".join(sop_lines(new)) == expected


@st.composite
def shown_directives(draw: st.DrawFn) -> tuple[int, list[str], list[str]]:
    """Directives touching each shown line at most once, and the lines they should give."""
    count = draw(st.integers(min_value=0, max_value=6))
    originals = [f"line{i}" for i in range(1, count + 1)]
    directives: list[str] = []
    fate: dict[int, str | None] = {}
    for number in range(1, count + 1):
        action = draw(st.sampled_from(["keep", "edit", "delete"]))
        if action == "edit":
            fate[number] = f"edited{number}"
            directives.append(f"EDIT: {number} -> edited{number}")
        elif action == "delete":
            fate[number] = None
            directives.append(f"DEL: {number}")
    inserts = draw(
        st.lists(st.integers(min_value=1, max_value=count + 1), max_size=4).map(
            lambda positions: [(p, f"new{i}") for i, p in enumerate(positions)]
        )
    )
    appends = [f"tail{i}" for i in range(draw(st.integers(min_value=0, max_value=2)))]
    directives += [f"ADD {p}: {text}" for p, text in inserts]
    directives += [f"ADD: {text}" for text in appends]
    order = list(draw(st.permutations(directives)))
    # Additions at one spot, and appended lines, keep their directive order.
    inserts.sort(key=lambda item: order.index(f"ADD {item[0]}: {item[1]}"))
    appends.sort(key=lambda text: order.index(f"ADD: {text}"))
    expected: list[str] = []
    for number in range(1, count + 2):
        expected += [text for p, text in inserts if p == number]
        if number <= count:
            kept = fate.get(number, originals[number - 1])
            if kept is not None:
                expected.append(kept)
    expected += appends
    return count, order, expected


@settings(max_examples=150, deadline=None)
@given(case=shown_directives())
def test_any_directive_order_means_the_prompt_as_shown(
    case: tuple[int, list[str], list[str]],
) -> None:
    count, directives, expected = case
    state = PromptState(
        blocks=(Block(name="sop", lines=tuple(f"line{i}" for i in range(1, count + 1))),),
        model="m",
    )
    new = apply(state, parse_directives("\n".join(directives)))
    assert list(sop_lines(new)) == expected


# --- to_directive and parse_directives are inverse --------------------------------------------

ROUND_TRIP_CASES: list[Edit] = [
    AddLine(text='if input mentions tea: respond "Tea!"'),
    AddLine(text="first", position=1, block="general"),
    EditLine(line=3, text="x -> y: z", block="tone-rules"),
    DeleteLine(line=2),
    DeleteLine(line=1, block="sop"),
    ReplaceBlock(lines=("a", "b: c", "3. d")),
    ReplaceBlock(lines=(), block="general"),
    SetModel(model="sim-small"),
    AddDemo(input='He said "hi"\nthen left', output="Bye → now"),
    SwapDemo(index=2, input="a", output="b"),
    RemoveDemo(index=3),
]


@pytest.mark.parametrize("edit", ROUND_TRIP_CASES, ids=lambda e: e.kind)
def test_to_directive_round_trips(edit: Edit) -> None:
    assert parse_directives(to_directive(edit)) == [edit]


def test_no_op_renders_as_no_change() -> None:
    assert to_directive(NoOp()) == "no_change"
    assert parse_directives(to_directive(NoOp())) == []


def test_round_trip_cases_cover_every_kind_but_no_op() -> None:
    assert {type(e) for e in ROUND_TRIP_CASES} == set(EDIT_TYPES) - {NoOp}


line_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)
block_names = st.none() | st.from_regex(r"[a-z0-9_\-]{1,12}", fullmatch=True)
any_edit: st.SearchStrategy[Edit] = st.one_of(
    st.builds(
        AddLine,
        text=line_text,
        block=block_names,
        position=st.none() | st.integers(min_value=1, max_value=99),
    ),
    st.builds(
        EditLine, line=st.integers(min_value=1, max_value=99), text=line_text, block=block_names
    ),
    st.builds(DeleteLine, line=st.integers(min_value=1, max_value=99), block=block_names),
    st.builds(ReplaceBlock, lines=st.tuples(line_text, line_text), block=block_names),
    st.builds(SetModel, model=st.from_regex(r"[a-z0-9][a-z0-9.:/_\-]{0,20}", fullmatch=True)),
)


@settings(max_examples=200, deadline=None)
@given(edit=any_edit)
def test_to_directive_round_trips_for_any_edit(edit: Edit) -> None:
    assert parse_directives(to_directive(edit)) == [edit]


# --- states: fingerprint, render, from_text, diff ---------------------------------------------


def test_fingerprint_is_stable() -> None:
    state = make_state()
    assert state.fingerprint() == make_state().fingerprint()
    assert PromptState.model_validate_json(state.model_dump_json()).fingerprint() == (
        state.fingerprint()
    )
    # Pinned: registries persist fingerprints, so the payload must not drift silently; a state
    # without demos keeps the id it had before demos existed.
    assert state.model_copy(update={"demos": ()}).fingerprint() == "16306bd233fc210a"
    assert state.fingerprint() == "c3fc2625ed773f5b"
    assert re.fullmatch(r"[0-9a-f]{16}", state.fingerprint())


@pytest.mark.parametrize(
    "change",
    [
        lambda s: apply(s, EditLine(line=1, text='if input mentions coffee: respond "Tea!"')),
        lambda s: apply(s, SetModel(model="sim-small")),
        lambda s: s.with_frozen(["general"]),
        lambda s: s.with_block(s.block("sop").model_copy(update={"title": "## Rules"})),
        lambda s: s.model_copy(update={"blocks": tuple(reversed(s.blocks))}),
        lambda s: s.model_copy(
            update={"blocks": (s.blocks[0].model_copy(update={"name": "intro"}), s.blocks[1])}
        ),
        lambda s: apply(s, AddLine(text="x")),
    ],
    ids=["line", "model", "frozen", "title", "order", "name", "added"],
)
def test_fingerprint_changes_with_every_part(change: object) -> None:
    state = make_state()
    changed = change(state)  # type: ignore[operator]
    assert changed.fingerprint() != state.fingerprint()


def test_render_and_numbered_views() -> None:
    state = make_state()
    assert state.render() == (
        "You are a friendly assistant.\n\n## SOP\n"
        'if input mentions coffee: respond "Coffee!"\n'
        'if input mentions sports: respond "No sports."\n'
        'else: respond "Hello."'
    )
    assert state.block("sop").numbered().split("\n")[1] == (
        '2. if input mentions sports: respond "No sports."'
    )
    assert Block(name="empty", title="## Empty").render() == ""


@pytest.mark.parametrize(
    "text",
    [
        "Be kind.",
        "Be kind.\nBe brief.",
        "Be kind.\n\n## SOP\nrule one\nrule two",
        "# Role\nYou route tickets.\n\n## Rules\nrule one\n\nrule two\n\n"
        '### Examples\nexample: "a" -> "b"',
        "## SOP\nonly rules",
        "Intro\n\n# General\nclashes with the unnamed block",
    ],
)
def test_from_text_render_round_trip(text: str) -> None:
    state = PromptState.from_text(text, "sim-large")
    assert state.render() == text
    assert "sop" in state.block_names


def test_from_text_names_blocks_after_headings() -> None:
    state = PromptState.from_text(
        "Hello.\n\n## Standard Operating Procedure\nr1\n\n## Notes\nn1\n\n## Notes\nn2", "m"
    )
    assert state.block_names == [
        "general",
        "standard_operating_procedure",
        "notes",
        "notes_2",
        "sop",
    ]
    assert state.block("sop").lines == ()
    assert state.block("general").title is None
    assert state.block("notes").title == "## Notes"
    assert block_name_for("### Tone & Style!") == "tone_style"
    assert PromptState.from_text("", "m").block_names == ["sop"]
    assert PromptState.from_text("", "m", ensure_sop_block=False).block_names == ["general"]


block_lines = st.lists(
    st.text(alphabet="abc xyz:-\"'", min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda line: bool(line) and not line.startswith("#")),
    min_size=1,
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(
    general=st.none() | block_lines,
    sections=st.lists(
        st.tuples(st.sampled_from(["# A", "## SOP", "### Rules here", "## b-2"]), block_lines),
        max_size=3,
    ),
)
def test_from_text_render_round_trip_property(
    general: list[str] | None, sections: list[tuple[str, list[str]]]
) -> None:
    parts = (["\n".join(general)] if general else []) + [
        "\n".join([title, *lines]) for title, lines in sections
    ]
    text = "\n\n".join(parts)
    assert PromptState.from_text(text, "m").render() == text


def test_prompt_state_validates_its_blocks() -> None:
    with pytest.raises(ValidationError, match="block names must be unique"):
        PromptState(blocks=(Block(name="sop"), Block(name="sop")), model="m")
    with pytest.raises(ValidationError, match="at least 1 item"):
        PromptState(blocks=(), model="m")
    with pytest.raises(ValidationError, match="should match pattern"):
        Block(name="Bad Name")


def test_with_frozen_and_to_action() -> None:
    state = make_state()
    frozen = state.with_frozen("general")
    assert [b.frozen for b in frozen.blocks] == [True, False]
    assert [b.frozen for b in frozen.with_frozen([]).blocks] == [False, False]
    with pytest.raises(InvalidEdit, match=re.escape("Unknown block 'tone'.")):
        state.with_frozen(["tone"])
    base = Action(system_prompt="old", model="gpt-4o", temperature=0.3)
    action = state.to_action(base)
    assert action.system_prompt == state.render()
    assert action.model == "sim-large"
    assert action.temperature == 0.3


def test_diff_shows_lines_and_model() -> None:
    before = make_state()
    after = apply(
        before,
        [
            EditLine(line=2, text='if input mentions golf: respond "Fore!"'),
            SetModel(model="sim-small"),
        ],
    )
    text = diff(before, after)
    assert text.split("\n")[:2] == [
        f"--- prompt@{before.fingerprint()}",
        f"+++ prompt@{after.fingerprint()}",
    ]
    assert "-model: sim-large" in text.split("\n")
    assert "+model: sim-small" in text.split("\n")
    assert '-if input mentions sports: respond "No sports."' in text.split("\n")
    assert '+if input mentions golf: respond "Fore!"' in text.split("\n")
    assert diff(before, make_state()) == ""
    assert diff(before, after, name="v3").startswith("--- v3@")


# --- any input: a value or an InvalidEdit, and accepted states round-trip ---------------------

NASTY = [
    "ADD",
    "EDIT",
    "DEL",
    "REPLACE",
    "MODEL",
    "BLOCK",
    ": ",
    " -> ",
    "\n",
    "1",
    "2",
    "99",
    "²",
    "①",
    "٣",
    "9" * 5000,
    "## ",
    "#",
    "\ud800",
    "\x00",
    "\u2028",
    "\r",
    "\t",
    " sop",
    "no_change",
]
directive_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=4)), max_size=12).map(
    "".join
)


def assert_round_trips(state: PromptState) -> None:
    state.fingerprint()
    text = state.render()
    text.encode("utf-8")
    again = PromptState.from_text(text, state.model)
    assert again.render() == text
    assert [(b.title, b.lines) for b in again.blocks if b.lines] == [
        (b.title, b.lines) for b in state.blocks if b.lines
    ]


@settings(max_examples=150, deadline=None)
@given(text=directive_text)
def test_any_directive_text_is_edits_or_an_invalid_edit(text: str) -> None:
    state = make_state()
    try:
        new = apply(state, parse_directives(text), allowed_models=MODELS)
    except InvalidEdit:
        return
    assert_round_trips(new)


edit_text = st.lists(
    st.sampled_from(["a", "b", " ", "#", "## ", "\t", "\ud800", "\x1f", "\u2028", ":"]),
    max_size=6,
).map("".join)
fuzzy_edit = st.one_of(
    st.builds(AddLine, text=edit_text, position=st.none() | st.integers(-1, 6)),
    st.builds(EditLine, line=st.integers(-1, 6), text=edit_text),
    st.builds(DeleteLine, line=st.integers(-1, 6)),
    st.builds(ReplaceBlock, lines=st.lists(edit_text, max_size=3).map(tuple)),
    st.builds(SetModel, model=edit_text),
    st.builds(AddLine, text=edit_text, block=st.sampled_from(["general", "a", "sop", "x"])),
)
prompt_text = st.lists(
    st.sampled_from(["Hello.", "be kind", "", " ", "## SOP", "# A", "#tag", "x\r", "\t"]),
    max_size=8,
).map("\n".join)


@settings(max_examples=150, deadline=None)
@given(text=prompt_text, edits=st.lists(fuzzy_edit, max_size=6))
def test_render_from_text_round_trips_for_every_reachable_state(
    text: str, edits: list[Edit]
) -> None:
    state = PromptState.from_text(text, "sim-large")
    assert_round_trips(state)
    for edit in edits:
        try:
            state = apply(state, edit)
        except InvalidEdit:
            continue
        assert_round_trips(state)


@pytest.mark.parametrize(
    ("text", "reason", "message"),
    [
        ('DEMO: "caf\\ud800" -> "b"', "invalid_text", "Demo input holds a lone surrogate"),
        ('DEMO: "a" -> "b\\u0000"', "invalid_text", "Demo output holds a control character"),
        ("DEL_DEMO: ²", "unparseable_directive", "DEL_DEMO needs a demo number (1 to 9 ASCII"),
        ("DEL_DEMO: " + "9" * 5000, "unparseable_directive", "DEL_DEMO needs a demo number"),
        ('DEMO 1234567890: "a" -> "b"', "unparseable_directive", "of 10 digits"),
    ],
)
def test_junk_in_demo_directives_is_an_invalid_edit(text: str, reason: str, message: str) -> None:
    with pytest.raises(InvalidEdit, match=re.escape(message)) as caught:
        apply(make_state(), parse_directives(text))
    assert caught.value.reason == reason


def test_a_demo_turn_may_span_lines_and_a_huge_demo_number_is_out_of_range() -> None:
    from selfimprove_rl.prompt import AddDemo, RemoveDemo

    state = apply(make_state(), AddDemo(input="two\nlines", output="ok"))
    assert state.demos[-1].input == "two\nlines"
    with pytest.raises(InvalidEdit, match=re.escape("Demo (a huge number) is out of range")):
        apply(state, RemoveDemo(index=10**5000))


def test_a_lone_surrogate_from_a_directive_is_rejected_before_any_fingerprint() -> None:
    with pytest.raises(InvalidEdit, match="lone surrogate") as caught:
        apply(make_state(), parse_directives("ADD: caf\ud800"))
    assert caught.value.reason == "invalid_text"
