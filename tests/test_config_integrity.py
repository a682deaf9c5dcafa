"""Issue 11, integrity: every value that validates also runs, equal experiments share one key, the user's data is
named by what it holds, a λ is never stored unapplied, and files cannot turn on remote code or explode."""

from __future__ import annotations

import time

import pytest

from efficientft.cli import main
from efficientft.config import RunConfig, load_yaml
from efficientft.errors import ConfigError
from efficientft.resolve import resolve, run_key


# ---------------------------------------------------------------------------------------------- canonical forms
def test_keys_of_canonical_configs_are_pinned():
    # Stored runs keep their keys: these are the keys these configs had before canonical forms existed; since the
    # head setting (issue 25) they are the keys of runs that read MiniLM through BERT's frozen pooler, as all did.
    old = {"head": "cls-pooler"}
    assert run_key(RunConfig(**old)) == "952b6ddcd9e0ad6c"
    assert run_key(RunConfig(task="rte", **old)) == "42cc1a40811c004f"
    assert run_key(RunConfig(task="rte", targets="qv", **old)) == "42cc1a40811c004f"
    assert run_key(RunConfig(task="rte", targets="qkv", lr_ratio=4, **old)) == "3daf8402bb6ad0a0"
    assert run_key(RunConfig(task="sst2", targets="all-linear", lr=1e-3, seed=2, **old)) == "a099c0ef36d250fd"
    # the default head of the bundled MiniLM is mean pooling (pilot.md), a new experiment with keys of its own
    assert run_key(RunConfig()) == "42dffdc840c53280"
    assert run_key(RunConfig(task="rte", targets="qkv", lr_ratio=4)) == "7ac9e1ec80a67aed"


@pytest.mark.parametrize("kw", [
    {"task": "RTE"}, {"task": " rte "}, {"targets": "q,v"}, {"targets": "v,q"}, {"targets": "VQ"},
    {"targets": "q, v"}, {"precision": "FP32"}, {"schedule": "Linear"}, {"method": "LoRA"}, {"device": "CPU"},
    {"data_source": "Local"}, {"seed": "0"}, {"lr": "5e-4"},
])
def test_spellings_of_one_experiment_share_its_key(kw):
    base = RunConfig(task="rte", device="cpu")
    assert run_key(RunConfig(**{"task": "rte", "device": "cpu", **kw})) == run_key(base)


def test_role_lr_keys_are_canonical():
    assert run_key(RunConfig(targets="qkvo", role_lr={"V": 4, " o ": 2})) == run_key(RunConfig(targets="qkvo", role_lr={"o": 2, "v": 4}))
    assert RunConfig(role_lr={"V": 4}).role_ratios == {"v": 4.0}


@pytest.mark.parametrize("spec,want", [
    ("qv", "qv"), ("v,q", "qv"), ("k , q", "qk"), ("QKV", "qkv"), ("o,v,k,q", "qkvo"),
    ("ffn_down,ffn_gate,ffn_up", "ffn"), ("q,k,v,o,ffn", "all-linear"), ("ffn_up,v", "v,ffn_up"),
    ("*.query, *.value", "*.query,*.value"), ("ALL", "all"),
])
def test_canonical_targets(spec, want):
    from efficientft.models import canonical_targets

    assert canonical_targets(spec) == want


def test_sst2_alias_is_the_same_task():
    assert resolve(RunConfig(task="SST-2")).task == "sst2"  # the one spelling is given by resolution


# ---------------------------------------------------------------------------------------------- one rule per field
@pytest.mark.parametrize("kw,msg", [
    ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\], got -1"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 4294967295\]"),
    ({"data_seed": -5}, r"data_seed must be an integer in \[0, 4294967295\]"),
    ({"lr": float("nan")}, "lr must be a positive number, got nan"),
    ({"lr": "inf"}, "lr must be a positive number, got 'inf'"),
    ({"lr_ratio": float("inf")}, "lr_ratio must be a positive number"),
    ({"role_lr": {"v": float("nan")}}, r"role_lr\['v'\] must be a positive number"),
    ({"warmup_ratio": float("nan")}, r"warmup_ratio must be in \[0, 1\)"),
    ({"weight_decay": float("inf")}, "weight_decay must be a number >= 0"),
    ({"weight_decay": float("nan")}, "weight_decay must be a number >= 0"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm must be a positive number"),
    ({"selection_size": float("inf")}, "selection_size must be a number >= 0"),
    ({"selection_size": 1.5}, r"selection_size must be a fraction of train in \(0, 1\) or a whole number"),
    ({"epochs": float("inf")}, "epochs must be a positive number"),
    ({"task": 123}, r"task must be text \(a name\), got 123"),
    ({"task": ["a"]}, r"task must be text \(a name\), got \['a'\]"),
    ({"model": 7}, "model must be text"),
    ({"method": None}, "method must be text"),
    ({"targets": "re:("}, r"target 're:\(' is not a valid regular expression"),
    ({"targets": " , "}, "targets ',' is empty"),
    ({"batch_size": -2}, "batch_size must be a positive integer"),
    ({"eval_batch_size": 0}, "eval_batch_size must be a positive integer"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"max_length": 2**40}, r"max_length must be a positive integer \(at most 2147483647\)"),
    ({"max_train": 0}, "max_train must be a positive integer"),
    ({"eval_every": -1}, r"eval_every must be an integer in \[0, 2147483647\], got -1"),
    ({"grad_accum": True}, "grad_accum must be an integer, got True"),
    ({"progress": "maybe"}, "progress must be true or false"),
    ({"method_args": [1]}, "method_args must be a mapping"),
    ({"custom": "x.csv"}, "custom must be a mapping"),
    ({"role_lr": {"w": 2}}, "role_lr names an unknown role 'w'"),
    ({"data_dir": 5}, "data_dir must be text"),
])
def test_every_field_has_a_type_and_a_range(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw)


def test_a_file_error_names_the_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("task: 123\n")
    with pytest.raises(ConfigError, match=r"run.yaml: task must be text \(a name\), got 123"):
        RunConfig.from_yaml(p)


@pytest.mark.parametrize("name,value,msg", [
    ("alpha", "nan", "alpha must be a positive number, got nan"),  # as a run setting's (lr) says it
    ("dropout", float("inf"), r"dropout must be in \[0, 1\), got inf"),
])
def test_method_float_arguments_are_finite(name, value, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve(RunConfig(method_args={name: value}))


@pytest.mark.parametrize("argv,msg", [
    (["--seed", "-1"], r"seed must be an integer in \[0, 4294967295\], got -1"),
    (["--lr", "nan"], "lr must be a positive number, got nan"),
    (["--warmup-ratio", "inf"], r"warmup_ratio must be in \[0, 1\), got inf"),
    (["--targets", "re:("], "is not a valid regular expression"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--alpha", "nan"], "alpha must be a positive number, got nan"),
    (["--role-lr", "v=nan"], r"role_lr\['v'\] must be a positive number"),
])
def test_cli_bad_values_exit_2_with_one_line(argv, msg, capsys, tmp_path):
    rc = main(["run", "--task", "rte", "--store", str(tmp_path / "s.sqlite"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("eft run: error: ") and err.count("\n") == 1, err
    assert pytest.importorskip("re").search(msg, err), err


def test_cli_choices_are_case_folded():
    from efficientft.cli import build_parser, config_from_args

    a = build_parser().parse_args(["run", "--task", "RTE", "--precision", "FP32", "--targets", "v,q"])
    cfg = resolve(config_from_args(a))  # the task's one spelling is given by resolution (eft run resolves first)
    assert (cfg.task, cfg.precision, cfg.targets) == ("rte", "fp32", "qv")


# ---------------------------------------------------------------------------------------------- YAML safety
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True))


def test_an_alias_bomb_run_config_is_refused_quickly(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="bomb.yaml: the YAML expands to more than 100,000 values"):
        load_yaml(p)
    assert time.perf_counter() - t0 < 1.0


def test_a_few_aliases_still_load(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("base: &b {lr: 0.001}\nrun: *b\n")
    assert load_yaml(p) == {"base": {"lr": 0.001}, "run": {"lr": 0.001}}


def test_an_alias_bomb_suite_is_refused_quickly(tmp_path):
    from efficientft.sweep import load_suite

    p = tmp_path / "suite.yaml"
    p.write_text(BOMB.replace("a:", "x_a:", 1) + "methods:\n  - {method: lora, seed: *i}\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="the YAML expands to more than 100,000 values"):
        load_suite(p)
    assert time.perf_counter() - t0 < 1.0


def _big_grid(tmp_path, extra: str = ""):
    values = "[" + ", ".join(str(i) for i in range(100)) + "]"
    p = tmp_path / "big.yaml"
    p.write_text(f"{extra}grid:\n  seed: {values}\n  data_seed: {values}\n  max_train: "
                 f"[{', '.join(str(i) for i in range(1, 101))}]\nmethods:\n  - {{method: lora}}\n")
    return p


def test_a_huge_grid_is_refused_before_expanding(tmp_path, monkeypatch):
    from efficientft.sweep import load_suite

    monkeypatch.delenv("EFT_MAX_RUNS", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to 1,000,000 runs, more than the limit of 100,000"):
        load_suite(_big_grid(tmp_path)).expand(validate=False)
    assert time.perf_counter() - t0 < 1.0
    monkeypatch.setenv("EFT_MAX_RUNS", "10")
    with pytest.raises(ConfigError, match="more than the limit of 10;"):
        load_suite(_big_grid(tmp_path).parent / "big.yaml").expand(validate=False)
    with pytest.raises(ConfigError, match="max_runs must be a positive whole number of runs"):
        load_suite(_big_grid(tmp_path, "max_runs: -3\n"))
    suite = load_suite(_big_grid(tmp_path, "max_runs: 2000000\n"))
    assert suite.max_runs == 2_000_000 and suite.size() == 1_000_000


@pytest.mark.parametrize("text,msg", [
    ("methods:\n  - {method: lora, seed: -1}\n", r"line 2: seed must be an integer in \[0, 4294967295\]"),
    ("methods:\n  - {method: lora, task: 123}\n", r"line 2: methods\[0\]: task must be text"),
    ("defaults: {lr: .nan}\nmethods:\n  - {method: lora}\n", "line 1: lr must be a positive number"),
    ("methods:\n  - {method: lora}\nselection: {selection_size: .inf}\n", "selection.selection_size must be > 0"),
    ("methods:\n  - {method: lora}\nselection: {}\nearly_stopping: {rungs: [1], reduction_factor: .inf}\n",
     "early_stopping.reduction_factor must be a number > 1"),
    ("name: [a]\nmethods:\n  - {method: lora}\n", "line 1: name must be text"),
])
def test_suite_values_have_a_type_and_a_range(tmp_path, text, msg):
    from efficientft.sweep import load_suite

    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_suite(p).expand(validate=False)


def test_suite_per_task_follows_the_canonical_task_name(tmp_path):
    from efficientft.sweep import load_suite

    p = tmp_path / "s.yaml"
    p.write_text("grid: {task: [RTE, sst2]}\nmethods:\n  - {method: lora}\nper_task:\n  rte: {steps: 3}\n")
    runs = load_suite(p).expand(validate=False)
    assert {(r.cfg.task, r.cfg.steps) for r in runs} == {("rte", 3), ("sst2", None)}


# ---------------------------------------------------------------------------------------------- trust_remote_code
def test_trust_remote_code_is_refused_in_a_run_config(tmp_path, capsys):
    p = tmp_path / "run.yaml"
    p.write_text("task: rte\ntrust_remote_code: true\n")
    with pytest.raises(ConfigError, match="trust_remote_code cannot be set in a file .* pass --trust-remote-code"):
        RunConfig.from_yaml(p)
    assert main(["run", "--config", str(p), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err == (f"eft run: error: {p}: trust_remote_code cannot be set in a file (it lets a model's own code "
                   f"run on this machine); pass --trust-remote-code on the command line instead.\n")


def test_trust_remote_code_is_refused_in_a_suite(tmp_path):
    from efficientft.sweep import load_suite

    p = tmp_path / "s.yaml"
    p.write_text("defaults: {trust_remote_code: true}\nmethods:\n  - {method: lora}\n")
    with pytest.raises(ConfigError, match="line 1: defaults: trust_remote_code cannot be set in a file .*; run such "
                                          "a model with eft run --trust-remote-code"):
        load_suite(p)


def test_trust_remote_code_from_the_flag_is_in_the_config():
    from efficientft.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["run", "--task", "rte", "--trust-remote-code"]))
    assert resolve(cfg).to_dict()["trust_remote_code"] is True  # what the run record stores
    assert run_key(cfg) == run_key(cfg.replace(trust_remote_code=False))


# ---------------------------------------------------------------------------------------------- identity of data
def _files(tmp_path, name: str, rows: str):
    train, dev = tmp_path / f"{name}-train.csv", tmp_path / f"{name}-dev.csv"
    train.write_text("text,label\n" + rows)
    dev.write_text("text,label\ngood,1\nbad,0\n")
    return str(train), str(dev)


def test_custom_data_is_keyed_by_its_files(tmp_path):
    a_train, a_dev = _files(tmp_path, "a", "great,1\nawful,0\n")
    b_train, b_dev = _files(tmp_path, "b", "fine,1\npoor,0\n")
    a = resolve(RunConfig(task="reviews", custom={"train": a_train, "dev": a_dev}))
    b = resolve(RunConfig(task="reviews", custom={"train": b_train, "dev": b_dev}))
    assert a.task.startswith("reviews@") and b.task.startswith("reviews@") and a.task != b.task
    assert run_key(a) != run_key(b)
    import hashlib
    from pathlib import Path

    assert a.custom["sha256"] == {s: hashlib.sha256(Path(f).read_bytes()).hexdigest()
                                  for s, f in (("train", a_train), ("dev", a_dev))}
    assert a.custom["text_columns"] == ["text"] and a.custom["label_column"] == "label"
    assert resolve(a) == a and run_key(resolve(a)) == run_key(a)  # resolving twice changes nothing
    # the same data spelt differently is the same run
    same = RunConfig(task="reviews", custom={"train": a_train, "dev": a_dev, "text_columns": "text"})
    assert run_key(same) == run_key(a)
    assert resolve(RunConfig(custom={"train": a_train, "dev": a_dev})).task.startswith("custom@")


def test_a_glue_name_cannot_label_custom_data(tmp_path, capsys):
    train, dev = _files(tmp_path, "a", "great,1\nawful,0\n")
    with pytest.raises(ConfigError, match="task 'rte' is a GLUE task, so it cannot name your own data"):
        resolve(RunConfig(task="RTE", custom={"train": train, "dev": dev}))
    rc = main(["run", "--task", "rte", "--train-file", train, "--eval-file", dev, "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is a GLUE task, so it cannot name your own data" in err


def test_missing_custom_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data file '.*nope.csv' does not exist"):
        run_key(RunConfig(task="mine", custom={"train": str(tmp_path / "nope.csv"), "dev": str(tmp_path / "x")}))
