from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from selfimprove_rl.errors import DataError
from selfimprove_rl.fileio import append_jsonl, atomic_write_text, read_jsonl


def test_atomic_write_creates_folders_and_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.txt"
    assert atomic_write_text(target, "first ü\n") == target
    assert target.read_text(encoding="utf-8") == "first ü\n"
    atomic_write_text(str(target), "second")
    assert target.read_text(encoding="utf-8") == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_write_failure_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")

    def crash(src: str, dst: str) -> None:
        raise OSError("crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crash during rename"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_atomic_write_never_exposes_partial_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    seen: list[str] = []
    real_replace = os.replace

    def observe(src: str, dst: str) -> None:
        seen.append(Path(dst).read_text(encoding="utf-8"))  # what a reader sees just before
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", observe)
    atomic_write_text(target, "new " * 10_000)
    assert seen == ["old"]
    assert target.read_text(encoding="utf-8") == "new " * 10_000


def test_append_and_read_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "log" / "events.jsonl"
    assert list(read_jsonl(path)) == []
    records = [{"n": 1, "text": "ünïcode ✓"}, {"n": 2, "nested": {"a": [1, None]}}]
    for record in records:
        append_jsonl(path, record)
    assert list(read_jsonl(path)) == records
    assert path.read_text(encoding="utf-8").count("\n") == 2


def test_line_separators_inside_strings_are_not_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    records = [{"text": "a\u2028b\u2029c\x85d\x0ce"}, {"text": "next"}]
    for record in records:
        append_jsonl(path, record)
    assert list(read_jsonl(path)) == records


def test_blank_lines_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"b": 2}\r\n')
    assert list(read_jsonl(path)) == [{"a": 1}, {"b": 2}]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append_jsonl(path, {"n": 1})
    append_jsonl(path, {"n": 2})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"n": 3, "half')  # a crash mid-write leaves no newline
    assert list(read_jsonl(path)) == [{"n": 1}, {"n": 2}]


def test_append_after_a_torn_line_cuts_the_fragment_off(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append_jsonl(path, {"n": 1})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"n": 2, "to')
    append_jsonl(path, {"n": 3})
    append_jsonl(path, {"n": 4})
    assert list(read_jsonl(path)) == [{"n": 1}, {"n": 3}, {"n": 4}]
    assert path.read_text(encoding="utf-8") == '{"n": 1}\n{"n": 3}\n{"n": 4}\n'


def test_append_when_the_whole_file_is_a_fragment(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"n": 1, "never fin', encoding="utf-8")
    assert list(read_jsonl(path)) == []
    append_jsonl(path, {"n": 2})
    assert list(read_jsonl(path)) == [{"n": 2}]


def test_long_torn_tail_is_found_across_read_chunks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append_jsonl(path, {"n": 1})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"blob": "' + "x" * 200_000)
    append_jsonl(path, {"n": 2})
    assert list(read_jsonl(path)) == [{"n": 1}, {"n": 2}]


def test_corruption_mid_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, oops}\n{"n": 3}\n', encoding="utf-8")
    reader = read_jsonl(path)
    assert next(reader) == {"n": 1}
    with pytest.raises(DataError, match=re.escape(f"{path}:2 is not valid JSON")) as caught:
        next(reader)
    assert "the file is corrupt" in str(caught.value)


def test_a_complete_but_invalid_last_line_is_corruption_not_a_tear(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:2 is not valid JSON")):
        list(read_jsonl(path))


def test_a_line_that_is_not_an_object_raises(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"n": 1}\n[1, 2]\n', encoding="utf-8")
    message = f"{path}:2 holds a JSON list, expected an object; the file is corrupt."
    with pytest.raises(DataError, match=re.escape(message)):
        list(read_jsonl(path))
