"""Tokenise once, pad per batch.

Splits are tokenised once per (texts, tokenizer, max length) and cached in memory and on disk (``EFT_CACHE_DIR``,
default ``~/.cache/efficientft``; NumPy ``.npz`` read without pickle). Batches are padded to their own longest
example (dynamic padding), optionally drawn from length buckets so that padding is small, and evaluation runs
over length-sorted batches with predictions put back in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

_MEMORY: OrderedDict[str, Encoded] = OrderedDict()  # the most recently used splits of this process
MEMORY_SPLITS = 16  # a sweep over a few tasks keeps all its splits; a long-lived worker does not grow forever


@dataclass
class Examples:
    """One split as columns: one or two texts per example and a label (class id, or a float for regression)."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list
    files: tuple[str, ...] = ()
    skipped_rows: int = 0  # malformed rows left out by the reader (wrong number of columns)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> Examples:
        idx = list(indices)
        return Examples(
            [self.text_a[i] for i in idx],
            None if self.text_b is None else [self.text_b[i] for i in idx],
            [self.labels[i] for i in idx],
            self.files,
            self.skipped_rows,
        )

    def sample(self, n: int | None, seed: int) -> Examples:
        """A seeded random subset of ``n`` examples (all of them when n is None or not smaller)."""
        idx = sample_indices(len(self), n, seed)
        return self if idx is None else self.subset(idx)

    def split_off(self, size: int | float, seed: int, cap: int | None = None) -> tuple[Examples, Examples]:
        """(rest, held_out): a seeded held-out part (a count, or a fraction when < 1) carved from this split, of at
        most ``cap`` examples (``selection_max``: the rest stays in ``rest``). A capped part is the first ``cap``
        of the uncapped one's seeded order."""
        n = int(round(size * len(self))) if isinstance(size, float) and size < 1 else int(size)
        n = n if cap is None else min(n, cap)
        if n <= 0 or n >= len(self):
            raise ConfigError(
                f"selection_size={size} leaves nothing to {'hold out' if n <= 0 else 'train on'}: "
                f"the training split has {len(self)} examples; give a count below that or a fraction in (0, 1)."
            )
        perm = np.random.default_rng(seed).permutation(len(self)).tolist()
        return self.subset(sorted(perm[n:])), self.subset(sorted(perm[:n]))


def sample_indices(total: int, n: int | None, seed: int) -> list[int] | None:
    """The sorted indices of a seeded random subset of ``n`` of ``total`` examples; None (all of them) when n is
    None or not smaller. The subsamples of ``max_train``/``max_eval`` and of ``eval_every_max``."""
    if n is None or n >= total:
        return None
    return sorted(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())


@dataclass
class Encoded:
    """Token ids of one split, unpadded: ``ids[i]`` is example i; ``types`` are BERT's segment ids."""

    ids: list[np.ndarray]
    types: list[np.ndarray] | None
    labels: np.ndarray
    stats: dict = field(default_factory=dict)  # what encoding did that a run records (truncations, ...)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx: list[int] | np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
        """The model's inputs for the examples ``idx`` (a task kind's own encoding may pad otherwise)."""
        return collate(self, idx, pad_id)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def subset(self, idx: Sequence[int]) -> Encoded:
        """The examples ``idx`` of this split, of the same class: every per-example field (a list or array with one
        entry per example) indexed, the others (the split's protocol, ``stats``) kept."""
        n, idx = len(self), list(idx)

        def pick(v: Any) -> Any:
            if isinstance(v, np.ndarray) and v.ndim and len(v) == n:
                return v[idx]
            return [v[i] for i in idx] if isinstance(v, list) and len(v) == n else v

        return dataclasses.replace(self, **{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})


def cache_dir() -> Path:
    return Path(os.environ.get("EFT_CACHE_DIR", Path.home() / ".cache" / "efficientft"))


def _tokenizer_id(tokenizer) -> str:
    """What decides the token ids: the tokenizer's full serialisation (vocabulary, normaliser, pre-tokeniser,
    post-processor) when it has one, else its whole vocabulary; plus the settings that are not in either.

    Two tokenizers that share a vocabulary but normalise differently (accents, case) give different ids, so a
    sample of the vocabulary is not enough: the cache would serve one tokenizer's ids to the other.
    """
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    spec = raw = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            raw = backend.to_str()
            memo = (hashlib.sha256(raw.encode()).hexdigest(), len(tokenizer), tokenizer.padding_side,
                    tokenizer.truncation_side, getattr(tokenizer, "do_lower_case", None))
            if memo in _TOKENIZER_IDS:  # parsing and re-serialising a 30k vocabulary costs ~0.3 s per split
                return _TOKENIZER_IDS[memo]
            spec = json.loads(raw)
        except Exception:  # noqa: BLE001 - a backend that cannot serialise falls back to the vocabulary
            spec = raw = None
    if isinstance(spec, dict):
        for k in ("truncation", "padding"):  # per-call state the tokenizer sets itself, not behaviour
            spec.pop(k, None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        vocab = tokenizer.get_vocab()
        for tok in sorted(vocab):
            h.update(f"{tok}\x00{vocab[tok]}\x01".encode())
    h.update(repr((len(tokenizer), tokenizer.padding_side, tokenizer.truncation_side,
                   getattr(tokenizer, "do_lower_case", None))).encode())
    if raw is not None:
        _TOKENIZER_IDS[memo] = h.hexdigest()[:16]
    return h.hexdigest()[:16]


# the ids of tokenizers already hashed in this process, by their exact serialisation and settings
_TOKENIZER_IDS: dict[tuple, str] = {}


def _cache_key(examples: Examples, tokenizer, max_length: int, with_types: bool) -> str:
    """A hash of everything the encoded split depends on; each text is length-prefixed, so no two different
    splits hash the same stream (joining with a separator let ``["a\x1fb", "c"]`` equal ``["a", "b\x1fc"]``)."""
    h = hashlib.sha256()
    h.update(f"{_tokenizer_id(tokenizer)}|{max_length}|{with_types}|{len(examples)}|".encode())
    for column in (examples.text_a, examples.text_b):
        h.update(b"N" if column is None else b"C%d|" % len(column))
        for text in column or ():
            b = text.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
    labels = np.asarray(examples.labels)
    h.update(str(labels.dtype).encode() + labels.tobytes())
    return h.hexdigest()[:32]


def encode(examples: Examples, tokenizer, max_length: int, with_types: bool, disk_cache: bool = True) -> Encoded:
    """Token ids of ``examples`` (cached); pairs are truncated longest-first to ``max_length``."""
    key = _cache_key(examples, tokenizer, max_length, with_types)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = cache_dir() / "tokens" / f"{key}.npz"
    dtype = np.float32 if examples.labels and isinstance(examples.labels[0], float) else np.int64
    labels = np.asarray(examples.labels, dtype=dtype)
    enc = _load(path, labels, with_types, max_length, len(tokenizer)) if disk_cache else None
    if enc is None:  # absent, or damaged: tokenise again and replace the file
        out = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_length, padding=False,
                        return_token_type_ids=with_types, return_attention_mask=False)
        ids = [np.asarray(x, dtype=np.int32) for x in out["input_ids"]]
        types = [np.asarray(x, dtype=np.int8) for x in out["token_type_ids"]] if with_types else None
        enc = Encoded(ids, types, labels)
        if disk_cache:
            _save(path, enc)
    _MEMORY[key] = enc
    while len(_MEMORY) > MEMORY_SPLITS:
        _MEMORY.popitem(last=False)
    return enc


def _save(path: Path, enc: Encoded) -> None:
    """Write the split to a temporary file beside ``path``, then rename it over: readers never see half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in enc.ids])]).astype(np.int64)
        arrays = {"ids": np.concatenate(enc.ids) if enc.ids else np.zeros(0, np.int32), "offsets": offsets,
                  "labels": enc.labels}
        if enc.types is not None:
            arrays["types"] = np.concatenate(enc.types) if enc.types else np.zeros(0, np.int8)
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the cache is an optimisation; a read-only or full disk must not fail a run


def _load(path: Path, labels: np.ndarray, with_types: bool, max_length: int, vocab: int) -> Encoded | None:
    """The cached split, or None (a cache miss) unless the file is exactly what :func:`_save` writes for it.

    A cache file can be truncated by a crash, emptied by a full disk, or replaced by anything at all; reading it
    must never fail or hang a run, nor feed the model a wrong split (an empty split would make the training
    batches loop forever). So the file must be a regular file holding an uncompressed ``.npz`` with exactly the
    expected members (sizes bounded before anything is read), and its arrays must have the split's shape, dtypes,
    labels and token-id range.
    """
    n = len(labels)
    members = {"ids.npy", "offsets.npy", "labels.npy"} | ({"types.npy"} if with_types else set())
    bound = 4096 + 8 * (n * max(1, max_length) + n + 1)  # .npy header + the largest possible array
    try:
        if not path.is_file():
            return None
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if ({i.filename for i in infos} != members or len(infos) != len(members)
                    or any(i.compress_type != zipfile.ZIP_STORED or i.file_size > bound for i in infos)):
                return None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception:  # noqa: BLE001 - any unreadable file is a miss, whatever the reader raises
        return None
    off, ids, lab = arrays["offsets"], arrays["ids"], arrays["labels"]
    types = arrays.get("types")
    if not (off.dtype == np.int64 and off.shape == (n + 1,) and ids.dtype == np.int32 and ids.ndim == 1
            and lab.dtype == labels.dtype and lab.shape == labels.shape and np.array_equal(lab, labels)):
        return None
    lengths = np.diff(off)
    if off[0] != 0 or off[-1] != len(ids) or (lengths < 0).any() or (lengths > max_length).any():
        return None
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
        return None
    if types is not None and (types.dtype != np.int8 or types.shape != ids.shape):
        return None
    return Encoded(
        [ids[off[i]: off[i + 1]] for i in range(n)],
        None if types is None else [types[off[i]: off[i + 1]] for i in range(n)],
        lab,
    )


def collate(enc: Encoded, idx: list[int] | np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to their longest (right padding) and build the model's inputs."""
    longest = max(len(enc.ids[i]) for i in idx)
    ids = np.full((len(idx), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), longest), dtype=np.int64)
    types = np.zeros((len(idx), longest), dtype=np.int64) if enc.types is not None else None
    for row, i in enumerate(idx):
        n = len(enc.ids[i])
        ids[row, :n] = enc.ids[i]
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = enc.types[i]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "labels": torch.from_numpy(enc.labels[np.asarray(idx)])}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


class TrainBatches:
    """Shuffled training batches, epoch after epoch, reproducible from the seed.

    With ``bucket`` the shuffled examples are cut into windows of 50 batches, each window sorted by length and
    cut into batches, and the batches shuffled again: batches hold examples of similar length, so little padding.
    """

    WINDOW = 50

    def __init__(self, enc: Encoded, batch_size: int, pad_id: int, seed: int, bucket: bool = False) -> None:
        if len(enc) == 0 or batch_size < 1:  # an epoch without batches: ``indexed`` would loop forever
            raise ConfigError(f"cannot draw training batches of {batch_size} from {len(enc)} examples.")
        self.enc, self.batch_size, self.pad_id, self.seed, self.bucket = enc, batch_size, pad_id, seed, bucket

    def __len__(self) -> int:
        return math.ceil(len(self.enc) / self.batch_size)

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.enc))
        bs = self.batch_size
        if not self.bucket:
            return [perm[i: i + bs] for i in range(0, len(perm), bs)]
        lengths = self.enc.lengths
        batches = []
        for w in range(0, len(perm), bs * self.WINDOW):
            window = perm[w: w + bs * self.WINDOW]
            window = window[np.argsort(lengths[window], kind="stable")]
            batches += [window[i: i + bs] for i in range(0, len(window), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def indexed(self, start: int = 0) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """(example indices, batch), epoch after epoch, from the ``start``-th batch on (a resumed run's cursor:
        every epoch's order is a function of the seed, so skipping needs no batch to be built)."""
        epoch, skip = divmod(start, len(self))
        while True:
            for idx in self.epoch_order(epoch)[skip:]:
                yield idx, self.enc.collate(idx, self.pad_id)
            epoch, skip = epoch + 1, 0

    def forever(self) -> Iterator[dict[str, torch.Tensor]]:
        for _, batch in self.indexed():
            yield batch


def eval_batches(enc: Encoded, batch_size: int, pad_id: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(indices, batch) over length-sorted examples: similar lengths share a batch, so padding is small."""
    order = np.argsort(-enc.lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        yield idx, collate(enc, idx, pad_id)
