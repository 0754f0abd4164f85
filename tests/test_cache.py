"""The content-addressed response cache: memory, disk, crashes, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.errors import ReplayError


def body(text: str) -> dict[str, object]:
    return {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {}}


def test_memory_cache_counts_hits_and_misses() -> None:
    cache = ResponseCache()
    assert cache.get("a") is None
    cache.put("a", body("A"))
    assert cache.get("a") == body("A")
    assert (cache.hits, cache.misses, len(cache), cache.hit_rate) == (1, 1, 1, 0.5)
    assert "a" in cache and "b" not in cache
    assert cache.path is None


def test_disk_cache_survives_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "cache.sqlite"
    with ResponseCache(path) as cache:
        cache.put("k1", body("one"))
        cache.put("k2", body("two é ☃"))
    reopened = ResponseCache(path)
    assert len(reopened) == 2
    assert reopened.get("k2") == body("two é ☃")
    assert reopened.get("missing") is None
    assert (reopened.hits, reopened.misses) == (1, 1)


def test_first_answer_for_a_key_wins(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    with ResponseCache(path) as cache:
        cache.put("k", body("first"))
    with ResponseCache(path) as cache:
        cache.put("k", body("second"))
    assert ResponseCache(path).get("k") == body("first")


def test_entries_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    script = textwrap.dedent(
        f"""
        import os
        from selfimprove_rl.cache import ResponseCache
        cache = ResponseCache({str(path)!r})
        for i in range(50):
            cache.put(f"k{{i}}", {{"choices": [{{"message": {{"content": str(i)}}}}]}})
        os._exit(0)  # no close, no flush: as if the process were killed
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    cache = ResponseCache(path)
    assert len(cache) == 50
    assert cache.get("k49") == {"choices": [{"message": {"content": "49"}}]}


def test_threads_share_one_instance(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")

    def write(start: int) -> None:
        for i in range(start, start + 50):
            cache.put(f"k{i}", body(str(i)))
            assert cache.get(f"k{i - 1}") is not None or i == start

    threads = [threading.Thread(target=write, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ResponseCache(tmp_path / "cache.sqlite")) == 200


def test_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    script = textwrap.dedent(
        """
        import sys
        from selfimprove_rl.cache import ResponseCache
        cache = ResponseCache(sys.argv[1])
        worker = int(sys.argv[2])
        for i in range(100):
            cache.put(f"w{worker}-{i}", {"n": i})
            cache.put(f"shared-{i}", {"by": worker})
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(path), str(n)]) for n in range(3)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    cache = ResponseCache(path)
    assert len(cache) == 300 + 100
    assert cache.get("shared-7") in ({"by": 0}, {"by": 1}, {"by": 2})


def test_a_file_that_is_not_a_cache_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just words " * 100)
    with pytest.raises(ReplayError, match="cannot be read as one"):
        ResponseCache(path)


def test_a_cache_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ReplayError, match="got format 99"):
        ResponseCache(path)


def test_closed_cache_keeps_serving_memory(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")
    cache.put("k", body("kept"))
    cache.close()
    assert cache.get("k") == body("kept")
    assert "ResponseCache(" in repr(cache)


def test_the_ledger_records_what_was_paid_and_survives_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    with ResponseCache(path) as cache:
        cache.pay(
            "a", {**body("A"), "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, calls=1
        )
        mark = cache.ledger_seq
        cache.pay("b", body("B"), calls=3)
        cache.record_failure(calls=5)
        cache.pay("a", body("again"), calls=1)  # paid twice: both payments count
    reopened = ResponseCache(path)
    assert reopened.get("a") == {**body("A"), "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert reopened.ledger_seq == mark + 3
    after = reopened.payments_since(mark)
    assert [(p.key, p.calls, p.ok) for p in after] == [
        ("b", 3, True),
        (None, 5, False),
        ("a", 1, True),
    ]
    assert reopened.payments_since(0)[0] == ("a", 1, 5, 2)
    assert reopened.peek("b") == body("B") and (reopened.hits, reopened.misses) == (1, 0)
