"""GLUE metrics, computed locally.

Hugging Face ``evaluate`` loads its metric scripts from the hub, which fails offline (DESIGN.md, pitfalls), so the
formulas live here. They follow the GLUE definitions (Wang et al., 2019): accuracy; F1 of the positive class for
MRPC/QQP; Matthews correlation for CoLA; Pearson and Spearman correlation for STS-B. Tests check every one of them
against scikit-learn / SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def accuracy(pred: Sequence, gold: Sequence) -> float:
    p, g = np.asarray(pred), np.asarray(gold)
    return float((p == g).mean()) if len(g) else float("nan")


def f1(pred: Sequence, gold: Sequence, positive: int = 1) -> float:
    p, g = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = float((p & g).sum())
    denom = float(p.sum() + g.sum())
    return 2 * tp / denom if denom else 0.0


def matthews_corr(pred: Sequence, gold: Sequence) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); equals the binary MCC for two classes."""
    p, g = np.asarray(pred), np.asarray(gold)
    classes = np.union1d(p, g)
    if len(classes) < 2:
        return 0.0
    index = {c: i for i, c in enumerate(classes)}
    c = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for gi, pi in zip(g, p, strict=True):
        c[index[gi], index[pi]] += 1
    t, pk, s = c.sum(axis=1), c.sum(axis=0), c.sum()
    num = np.trace(c) * s - float(t @ pk)
    den = math.sqrt(s * s - float(pk @ pk)) * math.sqrt(s * s - float(t @ t))
    return float(num / den) if den else 0.0


def pearson(pred: Sequence, gold: Sequence) -> float:
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    p, g = p - p.mean(), g - g.mean()
    den = math.sqrt(float(p @ p) * float(g @ g))
    return float(p @ g / den) if den else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho requires."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(pred: Sequence, gold: Sequence) -> float:
    return pearson(_ranks(np.asarray(pred, dtype=np.float64)), _ranks(np.asarray(gold, dtype=np.float64)))


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}

# Which metrics fit which kind of task: class predictions against class ids, or real-valued predictions.
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")

# What each metric is called in tables, for readers who do not know the short names.
METRIC_TITLES = {
    "accuracy": "Acc.",
    "f1": "F1",
    "mcc": "MCC",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "exact_match": "EM",  # generation: the extracted answer equals the gold answer
    "lm_loss": "LM loss",
}


def compute(names: Sequence[str], pred: Sequence, gold: Sequence) -> dict[str, float]:
    return {name: METRICS[name](pred, gold) for name in names}


def trivial_baselines(names: Sequence[str], train: Sequence, gold: Sequence, regression: bool) -> dict[str, float]:
    """Each metric scored, by :func:`compute`, on the trivial prediction: the training split's majority class
    (ties: the smallest label) or, for regression, the training mean, predicted for every example of ``gold``.

    A constant has no correlation: Pearson and Spearman of it are 0 (the value :func:`pearson` gives a prediction
    without variance), as MCC is 0 and F1 is that of always answering the majority class.
    """
    train = np.asarray(train)
    if regression:
        value = float(train.astype(np.float64).mean()) if len(train) else 0.0
        pred = np.full(len(gold), value, dtype=np.float64)
    else:
        classes, counts = np.unique(train.astype(np.int64), return_counts=True)
        pred = np.full(len(gold), int(classes[counts.argmax()]) if len(classes) else 0, dtype=np.int64)
    return compute(names, pred, gold)


def collapsed(pred: Sequence, gold: Sequence, regression: bool) -> bool:
    """Whether predictions collapsed to one class or, for regression, a constant: a spread under 1 % of the gold
    labels' (a regression head's outputs are never exactly equal in floating point). One example cannot say."""
    p = np.asarray(pred, dtype=np.float64)
    if len(p) < 2:
        return False
    if not regression:
        return bool((p == p[0]).all())
    return bool(p.std() <= 0.01 * float(np.asarray(gold, dtype=np.float64).std()))
