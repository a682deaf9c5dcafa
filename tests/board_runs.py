"""A store of hand-made records for the leaderboard tests: known scores, seeds, costs, baselines and search tags,
written through the store's API (no training), so every number the leaderboard shows can be computed by hand."""

from __future__ import annotations

from pathlib import Path

from efficientft.store import Store

SEEDS = (0, 1, 2)
METRIC = {"stsb": "pearson", "rte": "accuracy", "sst2": "accuracy"}
BASELINE = {"stsb": 0.0, "rte": 0.527, "sst2": 0.509}
# (method, targets, λ, lr) -> task -> scores per seed (seeds 0, 1, 2)
SCORES = {
    ("lora", "qv", 1.0, 3e-3): {"stsb": (0.800, 0.820, 0.810), "rte": (0.600, 0.640, 0.620),
                                "sst2": (0.880, 0.890, 0.900)},
    ("dora", "qv", 1.0, 3e-3): {"stsb": (0.805, 0.815, 0.812), "rte": (0.610, 0.630, 0.640),
                                "sst2": (0.885, 0.895, 0.890)},
    ("lora", "qkv", 1.0, 3e-3): {"stsb": (0.790, 0.800, 0.830), "rte": (0.640, 0.650, 0.660),
                                 "sst2": (0.870, 0.880, 0.875)},
    ("bitfit", "qv", 1.0, 1e-2): {"stsb": (0.100, 0.120, 0.110), "rte": (0.527, 0.527, 0.527),
                                  "sst2": (0.700, 0.720, 0.710)},
}
COST = {  # trainable params, peak memory MB, median step s, tokens/s
    "lora": (150_000, 900.0, 0.050, 20_000.0), "dora": (160_000, 950.0, 0.070, 15_000.0),
    "bitfit": (100_000, 800.0, 0.040, 25_000.0),
}
QKV_COST = (220_000, 920.0, 0.055, 19_000.0)
SEARCH = "tune-dora"  # dora's runs are the seeded re-runs of a search's choice; its trials are stored too
TRIALS = [(1e-3, 4, 40), (3e-3, 8, 40), (1e-2, 8, 20), (3e-3, 16, 80)]  # lr, rank, steps per trial, on each task


def _config(task: str, method: str, targets: str, lam: float, lr: float, seed: int, **args) -> dict:
    return {"task": task, "method": method, "targets": targets, "lr_ratio": lam, "lr": lr, "seed": seed,
            "data_seed": 0, "model": "tiny", "steps": 100, "method_args": {"rank": 8, **args}}


def fill(path: Path) -> Store:
    store = Store(path)
    n = 0

    def put(cfg: dict, scores: dict, cost: dict, tags: dict, details: dict) -> None:
        nonlocal n
        n += 1
        key = f"k{n:04d}"
        store.start(key, cfg, {}, tags, f"dev/{METRIC[cfg['task']]}")
        store.finish(key, "done", scores=scores, cost=cost, details=details)

    for (method, targets, lam, lr), by_task in SCORES.items():
        params, mem, step, tps = QKV_COST if targets == "qkv" else COST[method]
        for task, values in by_task.items():
            m = METRIC[task]
            for seed, v in zip(SEEDS, values, strict=True):
                tags = {"search_final": SEARCH} if method == "dora" else {}
                put(_config(task, method, targets, lam, lr, seed), {f"dev/{m}": v},
                    {"trainable_params": params, "peak_memory_mb": mem, "median_step_s": step, "tokens_per_s": tps,
                     "total_steps": 100}, tags, {"baselines": {f"dev/{m}": BASELINE[task]}})
            if method == "dora":
                for i, (tlr, rank, steps) in enumerate(TRIALS):
                    put(_config(task, method, targets, lam, tlr, 0, rank=rank) | {"steps": steps},
                        {f"selection/{m}": 0.5 + i / 100}, {"total_steps": steps},
                        {"search": SEARCH, "trial": i, "rung": 0}, {})
    return store
