"""Synthetic instruction tasks that a tiny randomly initialised causal LM learns in minutes on a CPU.

No pretrained decoder is on these machines, so the generative pipeline (templates, response-only loss, batched
greedy decoding, answer filters) is proven to *learn* on tasks whose answer is a short, exact word sequence:

- ``repeat``: "repeat: red cat sun" → "red cat sun" (copying, learnt by an induction-style attention head);
- ``reverse``: "reverse: red cat sun" → "sun cat red" (needs attention by position, a little harder).

Words are drawn from a small vocabulary of short English words, each a single token in common tokenizers
(WordPiece, BPE), 2–4 words per example. Which word sequences are test examples is decided by hashing the
sequence, not by the seed, so train and test never share a sequence whatever seeds and sizes are asked for.
"""

from __future__ import annotations

import hashlib
import random

from ..errors import ConfigError, unknown
from .instruct import InstructExample

WORDS: tuple[str, ...] = (
    "red", "blue", "green", "black", "white", "cat", "dog", "fish", "bird", "cow", "sun", "moon",
    "star", "tree", "rock", "book", "pen", "cup", "hat", "box", "car", "bus", "key", "map",
)
MIN_WORDS, MAX_WORDS = 2, 4
TEST_SHARE = 10  # one word sequence in TEST_SHARE belongs to the test side

SYNTHETIC_TASKS = {
    "repeat": lambda words: words,
    "reverse": lambda words: words[::-1],
}
SPLITS = ("train", "test")


def _is_test(words: tuple[str, ...]) -> bool:
    """Whether a word sequence is on the test side: a stable hash (not Python's salted ``hash``)."""
    digest = hashlib.sha256(" ".join(words).encode()).digest()
    return int.from_bytes(digest[:4], "big") % TEST_SHARE == 0


def make_synthetic(name: str, n: int, seed: int = 0, split: str = "train") -> list[InstructExample]:
    """``n`` examples of synthetic task ``name`` on ``split`` ("train" or "test"), deterministic from ``seed``.

    The instruction is ``"<name>: w1 w2 ..."``, the output (and the answer, scored as normalised text) the
    transformed words. Examples within one call are distinct word sequences; a ``test`` sequence never occurs in
    ``train`` and vice versa.
    """
    if name not in SYNTHETIC_TASKS:
        raise unknown("synthetic task", name, SYNTHETIC_TASKS)
    if split not in SPLITS:
        raise ConfigError(f"synthetic data has splits {', '.join(SPLITS)}; got {split!r}.")
    space = sum(len(WORDS) ** k for k in range(MIN_WORDS, MAX_WORDS + 1))
    limit = space // TEST_SHARE // 2  # far below the side's size, so the rejection sampling below ends quickly
    if not 1 <= n <= limit:
        raise ConfigError(f"synthetic task {name!r}: n must be between 1 and {limit}, got {n}.")
    rng = random.Random(f"{name}:{split}:{seed}")
    transform, want_test = SYNTHETIC_TASKS[name], split == "test"
    seen: set[tuple[str, ...]] = set()
    out = []
    while len(out) < n:
        words = tuple(rng.choice(WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))
        if words in seen or _is_test(words) != want_test:
            continue
        seen.add(words)
        target = " ".join(transform(words))
        out.append(InstructExample(f"{name}-{split}:{len(out)}", f"{name}: {' '.join(words)}", "", target, target))
    return out


__all__ = ["SYNTHETIC_TASKS", "WORDS", "make_synthetic"]
