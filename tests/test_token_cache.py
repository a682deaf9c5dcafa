"""A damaged token-cache file is a cache miss: the split is tokenised again and the file rewritten (issue 11)."""

import zipfile

import numpy as np
import pytest

from efficientft import data
from efficientft.errors import ConfigError
from efficientft.tasks import Examples


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_MEMORY", type(data._MEMORY)())
    return tmp_path / "tokens"


EX = Examples(["a first sentence", "and a second, longer sentence here", "third"], ["x", "y", "z"], [0, 1, 0])


def _fresh(tokenizer, cache):
    """The split as encode() computes it from scratch, and the one cache file it wrote."""
    enc = data.encode(EX, tokenizer, 16, True)
    (path,) = cache.glob("*.npz")
    data._MEMORY.clear()
    return enc, path


def _same(a, b):
    assert len(a) == len(b) == len(EX)
    assert all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a.types, b.types, strict=True))
    assert np.array_equal(a.labels, b.labels)


def _savez(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _damage(kind, path, good):
    raw = path.read_bytes()
    off = np.array([0, 2, 4, 6], dtype=np.int64)
    ids = np.arange(6, dtype=np.int32)
    types = np.zeros(6, dtype=np.int8)
    labels = np.array([0, 1, 0])
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 70)
    elif kind == "npy":  # a single .npy array instead of an .npz archive
        np.save(open(path, "wb"), np.arange(3))
    elif kind == "empty_split":  # a well-formed file of zero examples: the training batches would never end
        _savez(path, ids=np.zeros(0, np.int32), offsets=np.zeros(1, np.int64), labels=np.zeros(0, np.int64),
               types=np.zeros(0, np.int8))
    elif kind == "fewer_examples":
        _savez(path, ids=ids[:4], offsets=off[:3], labels=labels[:2], types=types[:4])
    elif kind == "wrong_labels":
        _savez(path, ids=ids, offsets=off, labels=np.array([1, 1, 1]), types=types)
    elif kind == "offsets_past_end":
        _savez(path, ids=ids, offsets=np.array([0, 2, 4, 60]), labels=labels, types=types)
    elif kind == "ids_out_of_vocab":
        _savez(path, ids=ids + 10**9, offsets=off, labels=labels, types=types)
    elif kind == "types_missing":
        _savez(path, ids=ids, offsets=off, labels=labels)
    elif kind == "types_wrong_shape":
        _savez(path, ids=ids, offsets=off, labels=labels, types=types[:3])
    elif kind == "float_ids":
        _savez(path, ids=ids.astype(np.float64), offsets=off, labels=labels, types=types)
    elif kind == "compressed":  # a deflated member could expand to any size before its shape is seen
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name in ("ids", "offsets", "labels", "types"):
                z.writestr(f"{name}.npy", b"\x93NUMPY" + b"\x00" * 100)
    else:  # pragma: no cover
        raise AssertionError(kind)


KINDS = ["truncated", "empty", "garbage", "npy", "empty_split", "fewer_examples", "wrong_labels", "offsets_past_end",
         "ids_out_of_vocab", "types_missing", "types_wrong_shape", "float_ids", "compressed"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_cache_file_is_a_miss_and_is_rewritten(tokenizer, cache, kind):
    good, path = _fresh(tokenizer, cache)
    _damage(kind, path, good)
    again = data.encode(EX, tokenizer, 16, True)
    _same(again, good)
    data._MEMORY.clear()
    assert data._load(path, good.labels, True, 16, len(tokenizer)) is not None  # the file was rewritten whole
    assert [p.name for p in cache.iterdir()] == [path.name]  # and no temporary file was left behind


def test_a_good_cache_file_is_read_not_recomputed(tokenizer, cache, monkeypatch):
    good, path = _fresh(tokenizer, cache)
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenised again"))
    _same(data.encode(EX, tokenizer, 16, True), good)


def test_cache_path_that_is_not_a_file_is_a_miss(tokenizer, cache):
    import os

    good, path = _fresh(tokenizer, cache)
    path.unlink()
    os.mkfifo(path)  # opening a FIFO would block the run forever
    assert data._load(path, good.labels, True, 16, len(tokenizer)) is None


def test_training_batches_refuse_an_empty_split():
    empty = data.Encoded([], None, np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match="cannot draw training batches of 8 from 0 examples"):
        data.TrainBatches(empty, 8, 0, seed=0)


def test_splits_that_join_to_the_same_text_are_cached_apart(tokenizer, cache):
    a = Examples(["a\x1fb", "c"], None, [0, 1])
    b = Examples(["a", "b\x1fc"], None, [0, 1])
    ea, eb = data.encode(a, tokenizer, 16, False), data.encode(b, tokenizer, 16, False)
    assert len(list(cache.glob("*.npz"))) == 2
    for ex, enc in ((a, ea), (b, eb)):
        assert [x.tolist() for x in enc.ids] == [tokenizer(t)["input_ids"] for t in ex.text_a]
    assert ea.ids[0].tolist() != eb.ids[0].tolist()


def test_tokenizers_that_share_a_vocabulary_are_cached_apart(tokenizer, cache, minilm_dir):
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    cased = AutoTokenizer.from_pretrained(minilm_dir)
    cased.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    ex = Examples(["Hello World"], None, [0])
    lower = data.encode(ex, tokenizer, 16, False).ids[0]
    upper = data.encode(ex, cased, 16, False).ids[0]
    assert upper.tolist() == cased("Hello World")["input_ids"] != lower.tolist()


def test_the_cache_key_is_stable_across_calls(tokenizer):
    before = data._tokenizer_id(tokenizer)
    tokenizer(["x"] * 3, truncation=True, max_length=7, padding="longest")  # sets per-call state in the backend
    assert data._tokenizer_id(tokenizer) == before
