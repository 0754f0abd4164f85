from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from selfimprove_rl.checkpoint import (
    CHECKPOINT_SCHEMA_VERSION,
    Action,
    Checkpoint,
    EvalConstants,
    Provenance,
    Sample,
    message_text,
)
from selfimprove_rl.errors import CheckpointError
from selfimprove_rl.mimic import load_dataset

ACTION = Action(system_prompt="Be kind.", model="sim-large")
PROVENANCE = Provenance(source="manual")


def rich_checkpoint() -> Checkpoint:
    """A checkpoint that uses every corner of the schema."""
    tool_call = {
        "id": "call_7",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"order": "A-55812", "n": 2}'},
    }
    samples = [
        Sample(
            sample_id="span-utc",
            chat_history=[
                {"role": "user", "content": "Where is my parcel? 📦"},
                {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": "call_7", "content": '{"status": "late"}'},
                {"role": "user", "content": "ok thanks"},
            ],
            output_generation={"role": "assistant", "content": None, "tool_calls": [tool_call]},
            eval_scores={"helpful": 0.75, "tiny": 1e-300, "third": 1 / 3},
            eval_labels={"helpful": "mostly"},
            eval_reasoning={"helpful": "Called the right tool.\nThen stopped."},
            eval_variables={"helpful": {"input": "Where is my parcel? 📦", "reference": "x"}},
            reference="Your parcel is late.",
            span_id="a1b2c3d4e5f60718",
            trace_id="0123456789abcdef0123456789abcdef",
            timestamp=datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC),
            metadata={"nested": {"list": [1, 2.5, None, True, "ü"]}, "empty": {}},
        ),
        Sample(
            sample_id="span-offset",
            chat_history=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Was ist das? "},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                        {"type": "text", "text": "这是什么\u2028line"},
                    ],
                }
            ],
            output_generation={"role": "assistant", "content": "Ein Bild — 一张图片."},
            eval_scores={"helpful": 0.0},
            timestamp=datetime(2026, 3, 1, 18, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        Sample(
            sample_id="span-naive",
            chat_history=[{"role": "user", "content": 'Quotes " and \\ backslashes'}],
            output_generation={"role": "assistant", "content": ""},
            timestamp=datetime(2026, 3, 2, 9, 0),
        ),
    ]
    return Checkpoint(
        samples=samples,
        action=Action(
            system_prompt='You route messages.\n\n## SOP\nif input mentions refund: respond "R"',
            model="gpt-4o-mini",
            temperature=0.2,
            top_p=0.9,
            max_tokens=256,
            seed=7,
            extra_parameters={"stop": ["\n\n"], "response_format": {"type": "text"}},
        ),
        eval_constants=[
            EvalConstants(
                name="helpful",
                template="Is {output} helpful for {input}?",
                template_variables=["input", "output"],
                choices={"yes": 1.0, "mostly": 0.75, "no": 0.0},
                eval_model="gpt-4o",
                eval_provider="openai",
            ),
            EvalConstants(name="similarity", kind="embedding_similarity", weight=0.5),
        ],
        provenance=Provenance(
            source="phoenix",
            endpoint="http://127.0.0.1:6006",
            project="router",
            since=datetime(2026, 2, 1, tzinfo=ZoneInfo("Europe/Paris")),
            until=datetime(2026, 3, 1, tzinfo=UTC),
            created_at=datetime(2026, 3, 3, 8, 15, tzinfo=UTC),
            phoenix_prompt={"name": "router", "version_id": "UHJvbXB0VmVyc2lvbjox"},
            skipped={"no_output": 3, "error_status": 1},
        ),
    )


def simple_samples(groups: dict[str, int], prefix: str = "s") -> list[Sample]:
    return [
        Sample(
            sample_id=f"{prefix}-{reference}-{index:03d}",
            chat_history=[{"role": "user", "content": f"message {index}"}],
            output_generation={"role": "assistant", "content": reference},
            reference=reference,
        )
        for reference, size in groups.items()
        for index in range(size)
    ]


def checkpoint_of(samples: list[Sample]) -> Checkpoint:
    return Checkpoint(samples=samples, action=ACTION, eval_constants=[], provenance=PROVENANCE)


def ids(samples: list[Sample]) -> list[str]:
    return [sample.sample_id for sample in samples]


# --- save / load ------------------------------------------------------------------------------


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    original = rich_checkpoint()
    path = original.save(tmp_path / "sub" / "checkpoint.json")
    loaded = Checkpoint.load(path)
    assert loaded == original
    assert loaded.model_dump_json() == original.model_dump_json()
    assert Checkpoint.load(loaded.save(tmp_path / "again.json")) == original


def test_round_trip_keeps_instants_and_utc_offsets(tmp_path: Path) -> None:
    original = rich_checkpoint()
    loaded = Checkpoint.load(original.save(tmp_path / "c.json"))
    for before, after in zip(original.samples, loaded.samples, strict=True):
        assert after.timestamp == before.timestamp
        assert before.timestamp is not None and after.timestamp is not None
        assert after.timestamp.utcoffset() == before.timestamp.utcoffset()
    assert loaded.samples[2].timestamp is not None
    assert loaded.samples[2].timestamp.tzinfo is None
    # A named zone is stored as its offset at that instant (JSON has no zone names).
    assert loaded.provenance.since == original.provenance.since
    assert loaded.provenance.since is not None
    assert loaded.provenance.since.utcoffset() == timedelta(hours=1)


def test_round_trip_keeps_unicode_multipart_content_and_tool_calls(tmp_path: Path) -> None:
    loaded = Checkpoint.load(rich_checkpoint().save(tmp_path / "c.json"))
    multipart = loaded.samples[1].chat_history[0]["content"]
    assert [part["type"] for part in multipart] == ["text", "image_url", "text"]
    assert loaded.samples[1].input_text == "Was ist das? 这是什么\u2028line"
    assert loaded.samples[1].output_text == "Ein Bild — 一张图片."
    call = loaded.samples[0].output_generation["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"order": "A-55812", "n": 2}
    assert loaded.samples[0].chat_history[2] == {
        "role": "tool",
        "tool_call_id": "call_7",
        "content": '{"status": "late"}',
    }
    assert loaded.samples[0].eval_scores["third"] == 1 / 3
    assert loaded.samples[0].eval_scores["tiny"] == 1e-300


def test_message_text_joins_text_parts_only() -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "x"}, "b"]}
    assert message_text(message) == "a"
    assert message_text({"role": "assistant", "content": None}) == ""


def test_non_finite_scores_are_rejected_before_they_reach_a_file() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        Sample(
            sample_id="x",
            chat_history=[],
            output_generation={"role": "assistant", "content": "x"},
            eval_scores={"q": math.nan},
        )
    with pytest.raises(ValidationError, match="finite number"):
        Action(system_prompt="s", model="m", temperature=math.inf)


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    rich_checkpoint().save(path)
    smaller = checkpoint_of(simple_samples({"a": 2}))
    smaller.save(path)
    assert Checkpoint.load(path) == smaller
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    original = rich_checkpoint()
    original.save(path)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        checkpoint_of(simple_samples({"a": 2})).save(path)
    monkeypatch.undo()
    assert Checkpoint.load(path) == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_schema_version_mismatch_is_reported_before_field_errors(tmp_path: Path) -> None:
    data = json.loads(rich_checkpoint().model_dump_json())
    data["schema_version"] = CHECKPOINT_SCHEMA_VERSION + 1
    data["field_from_the_future"] = {"x": 1}
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    message = (
        f"{path} has schema_version {CHECKPOINT_SCHEMA_VERSION + 1}; this version of "
        "selfimprove-rl reads 1, 2. Rebuild the checkpoint."
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        Checkpoint.load(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not a checkpoint: expected the JSON written by Checkpoint.save"),
        (b"\xff\xfe\x00garbage", "is not a checkpoint: expected the JSON written by"),
        ("[1, 2, 3]", "is not a checkpoint: expected a JSON object, got a JSON list."),
        ('{"samples": []}', "is not a valid checkpoint:"),
        ("", "is not a checkpoint: expected the JSON written by Checkpoint.save"),
    ],
    ids=["truncated", "binary", "list", "missing-fields", "empty"],
)
def test_invalid_files_raise_checkpoint_error(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        Checkpoint.load(path)


def test_invalid_contents_raise_checkpoint_error(tmp_path: Path) -> None:
    data = json.loads(checkpoint_of(simple_samples({"a": 2})).model_dump_json())
    data["samples"][1]["sample_id"] = data["samples"][0]["sample_id"]
    path = tmp_path / "dupes.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match="sample ids must be unique"):
        Checkpoint.load(path)


def test_missing_file_and_directory_raise_checkpoint_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CheckpointError, match=re.escape(f"No checkpoint at {missing}.")):
        Checkpoint.load(missing)
    with pytest.raises(CheckpointError, match=re.escape(f"Cannot read checkpoint {tmp_path}")):
        Checkpoint.load(tmp_path)


def test_duplicate_ids_and_eval_names_are_rejected() -> None:
    samples = simple_samples({"a": 1})
    with pytest.raises(ValidationError, match="sample ids must be unique"):
        checkpoint_of(samples + samples)
    with pytest.raises(ValidationError, match="eval names must be unique"):
        Checkpoint(
            samples=samples,
            action=ACTION,
            eval_constants=[EvalConstants(name="e", kind="bleu")] * 2,
            provenance=PROVENANCE,
        )


def test_sample_lookup() -> None:
    checkpoint = checkpoint_of(simple_samples({"a": 3}))
    assert checkpoint.sample("s-a-001").input_text == "message 1"
    with pytest.raises(KeyError):
        checkpoint.sample("s-a-999")


# --- split ------------------------------------------------------------------------------------


def test_split_of_mimic_data_is_60_20_20_and_stratified() -> None:
    checkpoint = load_dataset("coffee_sports")
    splits = checkpoint.split(seed=0)
    assert [len(part) for part in splits] == [120, 40, 40]
    for part, size in zip(splits, (120, 40, 40), strict=True):
        per_reply = Counter(sample.reference for sample in part)
        assert sorted(per_reply.values()) == [size // 2, size // 2]

    support = load_dataset("support_intents").split(seed=3)
    for part, size in zip(support, (96, 32, 32), strict=True):
        assert len(part) == size
        assert sorted(Counter(s.reference for s in part).values()) == [size // 4] * 4


def test_split_is_reproducible_by_seed_and_changes_with_it() -> None:
    checkpoint = load_dataset("coffee_sports")
    first, again = checkpoint.split(seed=11), checkpoint.split(seed=11)
    assert [ids(part) for part in first] == [ids(part) for part in again]
    others = [checkpoint.split(seed=seed) for seed in (12, 13)]
    for other in others:
        assert set(ids(other.test)) != set(ids(first.test))
        assert set(ids(other.holdout)) != set(ids(first.holdout))


def test_split_does_not_depend_on_input_order() -> None:
    samples = simple_samples({"x": 13, "y": 9, "z": 7})
    shuffled = list(samples)
    random.Random(5).shuffle(shuffled)
    a = checkpoint_of(samples).split(seed=4)
    b = checkpoint_of(shuffled).split(seed=4)
    assert [ids(part) for part in a] == [ids(part) for part in b]


def test_small_strata_do_not_bias_split_sizes() -> None:
    # Five strata of seven: rounding each stratum on its own gave 20/10/5.
    checkpoint = checkpoint_of(simple_samples({str(g): 7 for g in range(5)}))
    splits = checkpoint.split(seed=0)
    assert [len(part) for part in splits] == [21, 7, 7]
    for part, share in zip(splits, (0.6, 0.2, 0.2), strict=True):
        for reference, count in Counter(s.reference for s in part).items():
            assert abs(count - 7 * share) < 1, (reference, count)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=25), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_split_invariants(sizes: list[int], seed: int) -> None:
    assume(sum(sizes) >= 3)
    samples = simple_samples({f"r{g}": size for g, size in enumerate(sizes)})
    checkpoint = checkpoint_of(samples)
    splits = checkpoint.split(seed=seed)
    every = [sample_id for part in splits for sample_id in ids(part)]
    assert sorted(every) == sorted(ids(samples))
    total = len(samples)
    raw = [total * f for f in (0.6, 0.2, 0.2)]
    assert sum(len(part) for part in splits) == total
    for part, exact in zip(splits, raw, strict=True):
        assert abs(len(part) - exact) < 1
    stratified = len(sizes) <= max(1, total // 5)
    if stratified:
        for part, share in zip(splits, (0.6, 0.2, 0.2), strict=True):
            counts = Counter(s.reference for s in part)
            for g, size in enumerate(sizes):
                assert abs(counts.get(f"r{g}", 0) - size * share) < 1


def test_split_falls_back_to_plain_shuffle_when_references_are_all_distinct() -> None:
    samples = simple_samples({f"unique-{i}": 1 for i in range(20)})
    splits = checkpoint_of(samples).split(seed=0)
    assert [len(part) for part in splits] == [12, 4, 4]


def test_split_without_references_and_with_custom_fractions() -> None:
    samples = [s.model_copy(update={"reference": None}) for s in simple_samples({"a": 10})]
    splits = checkpoint_of(samples).split(seed=1, fractions=(0.5, 0.5, 0.0))
    assert [len(part) for part in splits] == [5, 5, 0]
    assert splits.by_name("test") is splits.test
    flat = checkpoint_of(simple_samples({"a": 6, "b": 6})).split(seed=1, stratify=False)
    assert [len(part) for part in flat] == [7, 3, 2]


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        (
            (0.6, 0.3, 0.2),
            "Expects three non-negative split fractions summing to 1, got (0.6, 0.3, 0.2)",
        ),
        (
            (1.2, -0.1, -0.1),
            "Expects three non-negative split fractions summing to 1, got (1.2, -0.1, -0.1)",
        ),
        ((0.5, 0.5), "Expects three non-negative split fractions summing to 1, got (0.5, 0.5)"),
    ],
)
def test_split_rejects_bad_fractions(fractions: tuple[float, ...], message: str) -> None:
    checkpoint = checkpoint_of(simple_samples({"a": 10}))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.split(fractions=fractions)  # type: ignore[arg-type]


def test_split_needs_a_sample_per_split() -> None:
    checkpoint = checkpoint_of(simple_samples({"a": 2}))
    with pytest.raises(
        CheckpointError, match=re.escape("Expects at least 3 samples to split, got 2")
    ):
        checkpoint.split()
