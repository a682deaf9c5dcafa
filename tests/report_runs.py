"""A store of real tiny runs for the report tests: 2 tasks, several methods / targets / λ / lr, 3 seeds.

STS-B is in it because a tiny random model's Pearson r differs from seed to seed (its accuracy on a classification
task is often the same constant-prediction score), so means, spreads and ranks are not all ties.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from efficientft.resolve import resolve, run_key
from efficientft.store import Store
from efficientft.train import run
from tests.conftest import tiny_config

# A model folder name with HTML and LaTeX specials: it reaches every format through the config's "model".
EVIL = "<img src=x onerror=alert(1)>&_%$#{}~^"
EVIL_TAG = "<script>alert(1)</script>"
TASK_STEPS = {"stsb": 6, "rte": 4}  # a per-task protocol setting
GRID = [  # (method, targets, λ, lr, seeds, tasks)
    ("lora", "qv", 1.0, 3e-3, (0, 1, 2), ("stsb", "rte")),
    ("lora", "qv", 4.0, 3e-3, (0, 1, 2), ("stsb", "rte")),
    ("lora", "qkv", 1.0, 3e-3, (0, 1, 2), ("stsb", "rte")),
    ("full", "qv", 1.0, 3e-3, (0, 1, 2), ("stsb", "rte")),
    ("lora", "qv", 2.0, 3e-3, (0, 1), ("stsb",)),          # 2 seeds: flagged; no RTE cell: no average
    ("lora", "qv", 4.0, 1e-3, (0, 1, 2), ("stsb",)),       # a second lr for --select-lr
]


def fill(path: Path, tiny_bert: Path) -> Store:
    model = path.parent / f"m{EVIL}"
    shutil.copytree(tiny_bert, model)
    store = Store(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the machine is shared
    try:
        _grid(store, model)
    finally:
        torch.set_num_threads(threads)
    # a run that failed, with markup in its error text: listed, never in a cell
    bad = tiny_config(model, task="rte", method="lora", targets="qv", seed=9, lr=5e-2)
    store.start(run_key(bad), resolve(bad).to_dict(), {}, {"suite": "grid"}, "dev/accuracy")
    store.finish(run_key(bad), "failed", error="RuntimeError: <b>boom</b>")
    return store


def _grid(store: Store, model: Path) -> None:
    for method, targets, lam, lr, seeds, tasks in GRID:
        for task in tasks:
            for seed in seeds:
                cfg = tiny_config(model, task=task, method=method, targets=targets, lr_ratio=lam, lr=lr, seed=seed,
                                  steps=TASK_STEPS[task], max_eval=64, selection_size=24, eval_every=3)
                tags = {"suite": EVIL_TAG} if (method, lam, seed) == ("lora", 4.0, 0) else {"suite": "grid"}
                run(cfg, store, tags=tags)
