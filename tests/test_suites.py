"""Every suite shipped in the package (src/efficientft/suites) loads, expands and validates (every run: RunConfig and the method's args).

"""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientft.methods import METHODS
from efficientft.suites import SUITES
from efficientft.sweep import load_suite

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "src" / "efficientft" / "suites").glob("*.yaml"))
# configs/ (the suites RESULTS.md, the issues and suite comments name: all-methods, method-catalog, paper-claims,
# paper-table2, strategy): links to shipped suites, so that `eft sweep configs/X.yaml` and `eft sweep X` are one file,
# validated like every shipped suite.
REPO_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_suite_file_is_one_the_package_lists():
    assert [p.stem for p in CONFIGS] == SUITES.names()


def test_the_repository_configs_are_shipped_suites():
    assert [p.name for p in REPO_CONFIGS] == ["all-methods.yaml", "method-catalog.yaml", "paper-claims.yaml",
                                             "paper-table2.yaml", "strategy.yaml"]
    for p in REPO_CONFIGS:
        assert p.is_symlink() and p.resolve() in {c.resolve() for c in CONFIGS}, p
        assert load_suite(p).name == p.stem


def test_the_shipped_suites_are_there():
    assert {p.stem for p in CONFIGS} >= {"quick", "paper-table2", "all-methods"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_suite_loads_and_validates(path, glue_dir):
    suite = load_suite(path)
    given = {"model": "some/causal-lm", "train_data": "boolq"}  # what `eft sweep --model/--train-data` would give
    env = {"data_dir": str(glue_dir), "progress": False, **{k: given[k] for k in suite.requires}}
    runs = suite.expand(env)  # validates every run, methods included
    assert runs and len({(r.key, r.tags["group"]) for r in runs}) == len(runs)  # a search entry may share a base
    assert all(r.tags["suite"] == suite.name and r.tags["label"] for r in runs)


@pytest.mark.parametrize("name", ["all-methods", "method-catalog"])
def test_method_suites_name_every_registered_method(name):
    suite = load_suite(CONFIGS[0].parent / f"{name}.yaml")
    used = {r.cfg.method for r in suite.expand({"progress": False})}
    assert used == set(METHODS.names())


def test_quick_is_the_readme_job():
    runs = load_suite(CONFIGS[0].parent / "quick.yaml").expand()
    assert sorted((r.cfg.method, r.cfg.targets, r.cfg.lr_ratio, r.cfg.lr, r.cfg.seed) for r in runs) == sorted(
        (m, t, lam, lr, seed) for m, t, lam, lr in (("full", "qkv", 1.0, 1e-4), ("lora", "qkv", 1.0, 1e-3),
                                                    ("lora", "qv", 4.0, 1e-3)) for seed in (0, 1, 2))
    assert all(r.cfg.task == "sst2" and r.cfg.steps == 250 and r.cfg.max_train == 4000 and r.cfg.max_length == 64
               and r.cfg.batch_size == 16 and r.cfg.model == "minilm" and r.cfg.bucket for r in runs)


def test_paper_table2_grid():
    suite = load_suite(CONFIGS[0].parent / "paper-table2.yaml")
    # configurations per task, before learning rates and seeds: full QKV 1, full QV 3 λ, LoRA/DoRA QKV 2 r each,
    # LoRA/DoRA QV 2 r × 3 λ each
    per_entry = []
    for _, spec in suite.entries:
        n = 1
        for path, values in spec.axes.items():
            if path != ("lr",):
                n *= len(values)
        per_entry.append(n)
    assert per_entry == [1, 3, 2, 6, 2, 6]
    assert suite.grid.axes[("seed",)] == [0, 1, 2] and len(suite.grid.axes[("task",)]) == 8
    assert suite.selection is not None and suite.selection.over == ("lr",)


def test_the_generation_suites_leave_the_model_to_the_command_line(glue_dir):
    from efficientft.errors import ConfigError

    gsm = load_suite(CONFIGS[0].parent / "gsm8k.yaml")
    with pytest.raises(ConfigError, match=r"suite 'gsm8k' leaves model to the command line .*; run eft sweep gsm8k "
                                          r"--model VALUE\.$"):
        gsm.expand({"progress": False})
    runs = gsm.expand({"model": "meta-llama/Llama-3.1-8B", "progress": False})
    assert sorted({(r.cfg.method, r.cfg.targets, r.cfg.lr_ratio) for r in runs}) == [
        ("full", "qv", 1.0), ("lora", "qkv", 1.0), ("lora", "qv", 1.0), ("lora", "qv", 4.0)]
    assert all(r.cfg.task == "gsm8k" and r.cfg.template == "alpaca" and r.cfg.precision == "bf16"
               and r.cfg.model == "meta-llama/Llama-3.1-8B" for r in runs) and len(runs) == 12
    cs = load_suite(CONFIGS[0].parent / "commonsense.yaml")
    assert cs.requires == ("model", "train_data")
    runs = cs.expand({"model": "m/x", "train_data": "/data/commonsense_170k.json", "progress": False})
    assert {r.cfg.train_data for r in runs} == {"/data/commonsense_170k.json"} and runs[0].cfg.task == "commonsense"
