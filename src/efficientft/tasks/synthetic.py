"""Synthetic instruction tasks that a tiny randomly initialised causal LM learns in minutes on a CPU.

No pretrained decoder is on these machines, so the generative pipeline (templates, response-only loss, batched
greedy decoding, answer filters) is proven to *learn* on tasks whose answer is a short, exact word sequence:

- ``repeat``: "repeat: red cat sun" → "red cat sun" (copying, learnt by an induction-style attention head);
- ``reverse``: "reverse: red cat sun" → "sun cat red" (needs attention by position, a little harder).

Words are drawn from a small vocabulary of short English words, each a single token in common tokenizers
(WordPiece, BPE), 2–4 words per example. The space of word sequences is cut into ``BUCKETS`` parts by a stable
hash of the sequence, and seed ``s`` draws only from part ``s mod BUCKETS``: a training set made with one seed and
a test set made with another never share a sequence, whatever their sizes (``eft``'s tasks use seed 0 for train
and seed 1 for dev).

Measured (plain PyTorch loop, 2,000 train / 200 dev examples, ``plain`` template, response-only loss, batch 32,
AdamW with warm-up and linear decay, greedy decoding): ``reverse`` on a random LLaMA (hidden 64, 2 layers) reaches
0.995 exact match after 300 steps (about 110 CPU seconds), and on a random GPT-2 (hidden 128, 2 layers, lr 1e-3)
0.98 after 400 steps and 1.0 after 500; ``repeat`` on the same LLaMA stalls near 0.8 (0.795 after 600 steps,
no better with 8,000 examples or with distinct words): use ``reverse`` where learning must be shown.
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
BUCKETS = 8  # seeds that differ modulo BUCKETS draw disjoint sets of word sequences

SYNTHETIC_TASKS = {
    "repeat": lambda words: words,
    "reverse": lambda words: words[::-1],
}


def bucket(words: tuple[str, ...]) -> int:
    """The part of the sequence space a word sequence belongs to: a stable hash (not Python's salted ``hash``)."""
    digest = hashlib.sha256(" ".join(words).encode()).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


def make_synthetic(name: str, n: int, seed: int = 0) -> list[InstructExample]:
    """``n`` distinct examples of synthetic task ``name``, deterministic from ``seed``.

    The instruction is ``"<name>: w1 w2 ..."``, the output (and the answer, scored as normalised text) the
    transformed words. Sets made with seeds that differ modulo ``BUCKETS`` share no word sequence.
    """
    if name not in SYNTHETIC_TASKS:
        raise unknown("synthetic task", name, SYNTHETIC_TASKS)
    space = sum(len(WORDS) ** k for k in range(MIN_WORDS, MAX_WORDS + 1))
    limit = space // BUCKETS // 2  # far below a part's size, so the rejection sampling below ends quickly
    if not 1 <= n <= limit:
        raise ConfigError(f"synthetic task {name!r}: n must be between 1 and {limit}, got {n}.")
    rng = random.Random(f"{name}:{seed}")
    transform, part = SYNTHETIC_TASKS[name], seed % BUCKETS
    seen: set[tuple[str, ...]] = set()
    out = []
    while len(out) < n:
        words = tuple(rng.choice(WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))
        if words in seen or bucket(words) != part:
            continue
        seen.add(words)
        target = " ".join(transform(words))
        out.append(InstructExample(f"{name}-{seed}:{len(out)}", f"{name}: {' '.join(words)}", "", target, target))
    return out


__all__ = ["BUCKETS", "SYNTHETIC_TASKS", "WORDS", "bucket", "make_synthetic"]
