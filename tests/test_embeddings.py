from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from selfimprove_rl.embeddings import (
    CACHE_ENV,
    Embedder,
    EmbeddingCacheWarning,
    EmbeddingStore,
    default_cache_dir,
)
from selfimprove_rl.mimic import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def shipped_texts(limit: int) -> list[str]:
    """Inputs and replies of the shipped data sets (the texts the default env embeds)."""
    texts: list[str] = []
    for name in ("coffee_sports", "support_intents"):
        checkpoint = load_dataset(name, model="sim-large")
        for sample in checkpoint.samples:
            texts.append(str(sample.chat_history[-1].get("content")))
            texts.append(str(sample.reference))
    return list(dict.fromkeys(texts))[:limit]


@pytest.mark.slow
def test_equal_length_batches_equal_one_at_a_time_bit_for_bit() -> None:
    import torch

    texts = shipped_texts(120)
    together = Embedder(cache_dir=False)
    lengths = Counter(int(together._load().preprocess([t])["input_ids"].shape[1]) for t in texts)
    assert max(lengths.values()) >= 10, "the texts must form real batches"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batched = together.encode(texts)
        assert torch.get_num_threads() == 2, "encoding must restore the caller's threads"
    finally:
        torch.set_num_threads(threads)
    alone_embedder = Embedder(cache_dir=False)
    alone = np.stack([alone_embedder.encode([text])[0] for text in texts])
    assert np.array_equal(batched, alone)
    assert together.computed == len(texts)


def test_a_worker_thread_computes_on_one_thread_too() -> None:
    # With two intra-op threads, 3 of these 80 vectors moved by ~1e-7 on the machine this was
    # written on; the env embeds from worker threads (asyncio.to_thread), where torch keeps
    # its own per-thread setting.
    import torch

    texts = shipped_texts(80)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        main = Embedder(cache_dir=False).encode(texts)
        result: list[np.ndarray] = []
        worker = threading.Thread(
            target=lambda: result.append(Embedder(cache_dir=False).encode(texts))
        )
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(main, result[0])


def test_a_fresh_process_reads_the_store_without_loading_torch(tmp_path: Path) -> None:
    texts = [*shipped_texts(6), "Ünïcödé ☕ text", ""]
    first = Embedder(cache_dir=tmp_path)
    vectors = first.encode(texts)
    assert first.store is not None and len(first.store) == len(texts)
    probe = f"""
import json, sys
from selfimprove_rl.embeddings import Embedder
embedder = Embedder(cache_dir={str(tmp_path)!r})
vectors = embedder.encode({texts!r})
print(json.dumps({{"torch": "torch" in sys.modules, "loaded": embedder.model_loaded,
                  "computed": embedder.computed, "vectors": vectors.tolist()}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    seen = json.loads(done.stdout)
    assert seen["torch"] is False and seen["loaded"] is False and seen["computed"] == 0
    assert np.array_equal(np.asarray(seen["vectors"], dtype=np.float32), vectors)


WRITER = """
import sys
import numpy as np
from selfimprove_rl.embeddings import EmbeddingStore
store = EmbeddingStore(sys.argv[1])
worker = int(sys.argv[2])
for round in range(20):
    keys = [f"{(worker * 50 + i) % 120}".encode() for i in range(round * 5, round * 5 + 25)]
    store.put((k, np.full(4, int(k), dtype=np.float32)) for k in keys)
    got = store.get(keys)
    assert all(np.array_equal(got[k], np.full(4, int(k), dtype=np.float32)) for k in keys)
print("ok")
"""


def test_concurrent_processes_share_one_store(tmp_path: Path) -> None:
    path = tmp_path / "store" / "embeddings.sqlite"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(4)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        assert out.strip() == "ok"
    store = EmbeddingStore(path)
    assert len(store) == 120
    assert np.array_equal(store.get([b"7"])[b"7"], np.full(4, 7, dtype=np.float32))


def test_model_key_follows_file_contents_and_remembers_hashes(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 4}')
    (model / "1_Pooling" / "config.json").write_text('{"mean": true}')
    store = EmbeddingStore(tmp_path / "store.sqlite")
    first = store.model_key(model)
    assert store.model_key(model) == first
    assert EmbeddingStore(tmp_path / "other.sqlite").model_key(model) == first
    (model / "1_Pooling" / "config.json").write_text('{"mean": false}')
    assert store.model_key(model) != first


def test_first_vector_wins_and_absent_keys_are_left_out(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path / "s.sqlite")
    store.put([(b"a", np.ones(3, dtype=np.float32))])
    store.put([(b"a", np.zeros(3, dtype=np.float32)), (b"b", np.zeros(3, dtype=np.float32))])
    got = store.get([b"a", b"b", b"c"])
    assert sorted(got) == [b"a", b"b"]
    assert np.array_equal(got[b"a"], np.ones(3, dtype=np.float32))


def test_an_unusable_store_warns_and_keeps_vectors_in_memory(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "embeddings-v1.sqlite").write_bytes(b"this is not a database" * 100)
    embedder = Embedder(cache_dir=folder)
    with pytest.warns(EmbeddingCacheWarning, match="cannot be used"):
        vectors = embedder.encode(["A flat white, please."])
    assert embedder.store is None
    assert vectors.shape == (1, 384)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(embedder.encode(["A flat white, please."]), vectors)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("off", None), ("0", None), ("", None), ("/tmp/x", Path("/tmp/x"))],
)
def test_cache_dir_setting(monkeypatch: pytest.MonkeyPatch, value: str, expected: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, value)
    assert default_cache_dir() == expected


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "selfimprove-rl"
