from __future__ import annotations

import itertools
import json
import re
import tempfile
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfimprove_rl.checkpoint import Checkpoint
from selfimprove_rl.errors import ConfigError, DataError
from selfimprove_rl.mimic import (
    PLACEHOLDER_SOP_PROMPT,
    dataset_names,
    dataset_path,
    load_dataset,
    load_mimic_jsonl,
)
from selfimprove_rl.prompt import PromptState

COFFEE_REPLY = "I see you are a person of taste! I like coffee, too."
SPORTS_REPLY = "Well, I don't like sports."


def raw_records(name: str) -> list[dict[str, object]]:
    lines = dataset_path(name).read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]


# --- the shipped data sets --------------------------------------------------------------------


def test_shipped_data_sets_are_package_data() -> None:
    assert dataset_names() == ["coffee_sports", "support_intents"]
    package_dir = Path(str(resources.files("selfimprove_rl")))
    for name in dataset_names():
        path = dataset_path(name)
        assert path.is_file()
        assert path.parent == package_dir / "data"


def test_coffee_sports_has_100_lines_per_reply() -> None:
    records = raw_records("coffee_sports")
    assert len(records) == 200
    assert Counter(r["output"] for r in records) == {COFFEE_REPLY: 100, SPORTS_REPLY: 100}
    assert all(set(r) == {"input", "output", "topic"} for r in records)
    assert all(
        (r["topic"], r["output"]) in {("coffee", COFFEE_REPLY), ("sports", SPORTS_REPLY)}
        for r in records
    )


def test_coffee_sports_is_varied() -> None:
    records = raw_records("coffee_sports")
    inputs = [str(r["input"]) for r in records]
    assert len(set(inputs)) == len(inputs)
    assert len({text.lower().strip(" .!?") for text in inputs}) == len(inputs)
    lengths = [len(text.split()) for text in inputs]
    assert min(lengths) >= 3 and max(lengths) <= 35
    assert sum(n >= 20 for n in lengths) >= 4 and sum(n <= 5 for n in lengths) >= 4
    coffee = [str(r["input"]).lower() for r in records if r["topic"] == "coffee"]
    sports = [str(r["input"]).lower() for r in records if r["topic"] == "sports"]
    # A keyword rule alone must not solve it: most lines avoid the topic's own word.
    assert sum("coffee" not in text for text in coffee) >= 60
    assert sum("sport" not in text for text in sports) >= 80
    # No template: first three words rarely repeat.
    openings = Counter(" ".join(text.split()[:3]) for text in inputs)
    assert openings.most_common(1)[0][1] <= 3
    # Shuffled: the topics alternate often, not one block then the other.
    topics = [r["topic"] for r in records]
    switches = sum(a != b for a, b in itertools.pairwise(topics))
    assert switches > 60


def test_support_intents_has_four_balanced_replies() -> None:
    records = raw_records("support_intents")
    assert 140 <= len(records) <= 180
    per_reply = Counter(str(r["output"]) for r in records)
    assert len(per_reply) == 4
    assert min(per_reply.values()) >= 35
    per_intent = Counter((r["intent"], r["output"]) for r in records)
    assert sorted(intent for intent, _ in per_intent) == ["account", "billing", "other", "shipping"]
    inputs = [str(r["input"]) for r in records]
    assert len(set(inputs)) == len(inputs)
    assert not set(inputs) & {str(r["input"]) for r in raw_records("coffee_sports")}


# --- the loader -------------------------------------------------------------------------------


def test_load_dataset_builds_a_mimic_checkpoint() -> None:
    checkpoint = load_dataset()
    assert len(checkpoint.samples) == 200
    sample = checkpoint.samples[0]
    first = raw_records("coffee_sports")[0]
    assert sample.chat_history == [{"role": "user", "content": first["input"]}]
    assert sample.output_generation == {"role": "assistant", "content": first["output"]}
    assert sample.reference == first["output"]
    assert sample.eval_scores == {"similarity": 1.0}
    assert sample.metadata == {"topic": first["topic"]}
    assert sample.input_text == first["input"]
    assert re.fullmatch(r"line0001-[0-9a-f]{10}", sample.sample_id)
    assert [(c.name, c.kind) for c in checkpoint.eval_constants] == [
        ("similarity", "embedding_similarity")
    ]
    assert checkpoint.action.system_prompt == PLACEHOLDER_SOP_PROMPT
    assert (checkpoint.action.model, checkpoint.action.temperature) == ("sim-large", 0.0)
    assert checkpoint.provenance.source == "mimic"
    assert checkpoint.provenance.data_path == str(dataset_path("coffee_sports"))


def test_loading_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    checkpoint = load_dataset("support_intents")
    assert load_dataset("support_intents") == checkpoint
    assert Checkpoint.load(checkpoint.save(tmp_path / "c.json")) == checkpoint


def test_loader_options() -> None:
    checkpoint = load_dataset(
        "support_intents",
        model="sim-small",
        system_prompt="Route the message.",
        temperature=None,
        eval_kind="exact_match",
        limit=5,
    )
    assert len(checkpoint.samples) == 5
    assert checkpoint.action.model == "sim-small"
    assert checkpoint.action.system_prompt == "Route the message."
    assert checkpoint.action.invocation_parameters() == {}
    assert checkpoint.eval_constants[0].kind == "exact_match"
    assert checkpoint.samples == load_dataset("support_intents").samples[:5]


def test_placeholder_prompt_parses_into_general_and_sop_blocks() -> None:
    state = PromptState.from_text(PLACEHOLDER_SOP_PROMPT, model="sim-large")
    assert state.block_names == ["general", "sop"]
    assert len(state.block("general").lines) == 1
    assert len(state.block("sop").lines) == 1
    assert state.render() == PLACEHOLDER_SOP_PROMPT
    assert "if input" not in PLACEHOLDER_SOP_PROMPT  # a placeholder, no rule yet


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def test_ids_extra_keys_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"id": "a-1", "input": "hi", "output": "hello", "lang": "en"}\r\n'
        "\n"
        "   \n"
        '{"id": 7, "input": "yo", "output": "hey"}\n'
        '{"input": "sup", "output": "hey", "extra": {"nested": [1]}}',
    )
    checkpoint = load_mimic_jsonl(path)
    assert [s.sample_id for s in checkpoint.samples][:2] == ["a-1", "7"]
    assert re.fullmatch(r"line0005-[0-9a-f]{10}", checkpoint.samples[2].sample_id)
    assert checkpoint.samples[0].metadata == {"lang": "en"}
    assert checkpoint.samples[2].metadata == {"extra": {"nested": [1]}}
    assert checkpoint.samples[1].metadata == {}
    assert checkpoint.provenance.data_path == str(path.resolve())


def test_derived_ids_depend_on_line_and_content(tmp_path: Path) -> None:
    one = load_mimic_jsonl(write(tmp_path, '{"input": "a", "output": "b"}\n'))
    same = load_mimic_jsonl(write(tmp_path, '{"input": "a", "output": "b"}\n'))
    moved = load_mimic_jsonl(write(tmp_path, '\n{"input": "a", "output": "b"}\n'))
    changed = load_mimic_jsonl(write(tmp_path, '{"input": "a", "output": "c"}\n'))
    assert one.samples[0].sample_id == same.samples[0].sample_id
    assert one.samples[0].sample_id != moved.samples[0].sample_id
    assert one.samples[0].sample_id.split("-")[1] == moved.samples[0].sample_id.split("-")[1]
    assert one.samples[0].sample_id != changed.samples[0].sample_id


def test_identical_lines_get_distinct_ids(tmp_path: Path) -> None:
    line = '{"input": "same", "output": "same"}\n'
    checkpoint = load_mimic_jsonl(write(tmp_path, line * 3))
    assert len({s.sample_id for s in checkpoint.samples}) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"input": "a", "output": "b"}\n{"input": "a", "output"}\n',
            ':2: expected a JSON object like {"input": "...", "output": "..."}, got invalid '
            "JSON (Expecting ':' delimiter at column 24).",
        ),
        (
            '["a", "b"]\n',
            ':1: expected a JSON object like {"input": "...", "output": "..."}, got a JSON array.',
        ),
        (
            '{"output": "b", "text": "a"}\n',
            ":1: expected a non-empty string under 'input', but the key is missing "
            "(keys present: output, text).",
        ),
        (
            '{"input": "a"}\n',
            ":1: expected a non-empty string under 'output', but the key is missing "
            "(keys present: input).",
        ),
        (
            '{"input": "a", "output": "  "}\n',
            ":1: expected 'output' to be a non-empty string, got '  '.",
        ),
        (
            '{"input": 42, "output": "b"}\n',
            ":1: expected 'input' to be a non-empty string, got a JSON number (42).",
        ),
        (
            '{"input": "a", "output": {"role": "assistant"}}\n',
            ":1: expected 'output' to be a non-empty string, got a JSON object "
            '({"role": "assistant"}).',
        ),
        (
            '{"id": null, "input": "a", "output": "b"}\n',
            ":1: expected 'id' to be a non-empty string or an integer, got null; drop the key "
            "to derive an id from the line.",
        ),
        (
            '{"id": "x", "input": "a", "output": "b"}\n\n'
            '{"id": "x", "input": "c", "output": "d"}\n',
            ":3: sample id 'x' was already used on line 1; ids must be unique.",
        ),
        (
            '{"input": "caf\\ud800", "output": "b"}\n',
            ":1: 'input' holds a lone surrogate escape (like \\ud800), which is not text; fix "
            "the escape or drop it.",
        ),
        (
            '{"input": "a", "output": "b", "tags": {"\\udfff": 1}}\n',
            ":1: a key in 'tags' holds a lone surrogate escape (like \\ud800)",
        ),
        (
            '{"input": "a", "output": "b", "x": ' + "[" * 100_000 + "\n",
            ":1: values are nested too deeply (at most 100 levels); flatten them.",
        ),
        (
            '{"input": "a", "output": "b", "x": ' + "[" * 150 + "]" * 150 + "}\n",
            ":1: values are nested too deeply (at most 100 levels); flatten them.",
        ),
        (
            '{"input": "a", "output": "b", "id": ' + "9" * 5000 + "}\n",
            ":1: a number has 5000 digits (at most 1000); write it as a string.",
        ),
        (
            '{"input": "a", "output": "b", "score": NaN}\n',
            ":1: NaN is not a JSON number; write null or a string instead.",
        ),
        (
            '{"input": "a", "output": "b", "score": -Infinity}\n',
            ":1: -Infinity is not a JSON number; write null or a string instead.",
        ),
        (
            '{"input": "a", "output": "b", "score": 1e999}\n',
            ":1: 1e999 overflows a float; write a smaller number or a string.",
        ),
        (
            '{"input": "a", "output": "b", "input": "c"}\n',
            ":1: key 'input' appears twice in one object; keep one.",
        ),
    ],
    ids=[
        "not-json",
        "not-object",
        "missing-input",
        "missing-output",
        "empty-output",
        "non-string-input",
        "message-output",
        "null-id",
        "duplicate-id",
        "lone-surrogate",
        "lone-surrogate-key",
        "100k-brackets",
        "150-levels",
        "5000-digit-number",
        "nan",
        "infinity",
        "float-overflow",
        "duplicate-key",
    ],
)
def test_malformed_lines_name_file_line_and_expectation(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=re.escape(f"{path}{message}")):
        load_mimic_jsonl(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    path = write(tmp_path, "\n \n")
    with pytest.raises(DataError, match=re.escape(f"{path} holds no samples; expected one")):
        load_mimic_jsonl(path)
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=re.escape(f"No mimic data set at {missing}.")):
        load_mimic_jsonl(missing)
    bad_bytes = tmp_path / "latin1.jsonl"
    message = f"{bad_bytes}:2: not UTF-8 text (invalid continuation byte at byte 44); save the"
    bad_bytes.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=re.escape(message)):
        load_mimic_jsonl(bad_bytes)
    with pytest.raises(DataError, match=re.escape(f"Cannot read mimic data set {tmp_path}")):
        load_mimic_jsonl(tmp_path)  # a directory


def test_a_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"input": "a", "output": "b"}\n')
    assert load_mimic_jsonl(path).samples[0].input_text == "a"


def test_extra_keys_survive_a_checkpoint_round_trip(tmp_path: Path) -> None:
    line = {"input": "a", "output": "b", "tags": {"n": 1.5, "big": 10**30, "deep": [[["x"]]]}}
    checkpoint = load_mimic_jsonl(write(tmp_path, json.dumps(line) + "\n"))
    assert checkpoint.samples[0].metadata == {"tags": line["tags"]}
    assert Checkpoint.load(checkpoint.save(tmp_path / "c.json")) == checkpoint


def test_unknown_data_set_lists_the_shipped_ones() -> None:
    message = (
        "Unknown mimic data set 'coffee_sport'. Did you mean 'coffee_sports'? Valid options: "
        "coffee_sports, support_intents. To use your own file, call load_mimic_jsonl(path)."
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        dataset_path("coffee_sport")
    with pytest.raises(ConfigError, match=re.escape("Valid options: coffee_sports")):
        load_dataset("weather")


def test_bad_options_raise_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input": "a", "output": "b"}\n')
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "Expects eval_kind to compare with the reference (exact_match, bleu, "
            "embedding_similarity), got 'classifier'"
        ),
    ):
        load_mimic_jsonl(path, eval_kind="classifier")
    for limit in (0, -1):
        with pytest.raises(
            ConfigError,
            match=re.escape(f"Expects limit to be a positive int or None, got {limit}"),
        ):
            load_mimic_jsonl(path, limit=limit)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec=None), max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["input", "output", "id", "tags"]) | st.text(max_size=3),
    json_values | st.sampled_from(["a", "b"]),
    max_size=5,
).map(json.dumps)
token_soup = st.lists(
    st.sampled_from(
        [
            '{"input": "a", "output": "b"',
            "}",
            ",",
            '"x": ',
            "NaN",
            "1e999",
            "[",
            "]",
            "\\ud800",
            '"',
            "9" * 1200,
            '"id": ',
            "-Infinity",
            "\ufeff",
            "\x00",
            '"input": "c"',
        ]
    ),
    max_size=8,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=records | token_soup)
def test_any_line_is_a_sample_that_round_trips_or_a_data_error(line: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_bytes(
            f'{{"input": "q", "output": "r"}}\n{line}\n'.encode("utf-8", "surrogatepass")
        )
        try:
            checkpoint = load_mimic_jsonl(path, eval_kind="exact_match")
        except DataError as exc:
            assert f"{path}:" in str(exc) or "Cannot read" in str(exc)
            return
        assert Checkpoint.load(checkpoint.save(Path(folder) / "c.json")) == checkpoint
