"""Issue 12: one schema per setting (CLI flags, suite fields and the run key derived from it), and one Runtime
built once per run and passed explicitly."""

from __future__ import annotations

import pytest
import torch

from efficientft.cli import build_parser, config_from_args, main
from efficientft.config import ENVIRONMENT_FIELDS, KEY_WHEN_SET, SETTINGS, RunConfig
from efficientft.errors import ConfigError
from efficientft.resolve import run_key
from efficientft.sweep.suite import load_suite
from tests.conftest import tiny_config


# ---------------------------------------------------------------------------------------------- run keys
@pytest.mark.parametrize("kw,key", [  # computed on the code before the schema existed: stored runs keep them
    ({}, "952b6ddcd9e0ad6c"),
    ({"task": "rte", "method": "full", "targets": "qkv", "lr_ratio": 2, "steps": 10}, "be518fda4376b1e7"),
    ({"task": "mrpc", "method": "lora", "method_args": {"rank": 16, "alpha": 32}, "lr": 1e-3, "epochs": 2,
      "batch_size": 32}, "c966c7943686ae01"),
    ({"task": "stsb", "method": "dora", "targets": "qkvo", "role_lr": {"o": 2}, "lr_ratio": 4, "max_grad_norm": None,
      "schedule": "cosine"}, "8e3ce7ea6b95098b"),
    ({"task": "rte", "bucket": True}, "4791a1e6df881956"),
    ({"task": "rte", "feature_cache": True}, "b907cbdac44610d3"),
    ({"task": "rte", "bucket": True, "feature_cache": True, "precision": "bf16"}, "99996cec6bdbde14"),
    ({"task": "rte", "bucket": False, "feature_cache": False, "device": "cpu", "data_dir": "/x", "progress": False,
      "export_dir": "/y", "overwrite": True}, "42cc1a40811c004f"),
    ({"task": "sst2", "selection_size": 0.1, "max_train": 100, "max_eval": 50, "data_seed": 3, "eval_every": 5,
      "eval_batch_size": 8, "warmup_ratio": 0.1, "weight_decay": 0.01, "grad_accum": 2, "max_length": 64, "seed": 7},
     "15bdfb9e57a9296f"),
    # the settings added with the schema: at their defaults, or never in the key, they change no key
    ({"task": "rte", "gradient_checkpointing": False, "quantize": None, "quant_compute_dtype": None,
      "checkpoint_every": 50, "keep_checkpoints": True, "tracker": ["wandb"]}, "42cc1a40811c004f"),
    # compile computes what eager computes (BENCHMARKS.md §11): never in the key
    ({"task": "rte", "compile": True}, "42cc1a40811c004f"),
])
def test_run_keys_of_stored_configs_do_not_change(kw, key):
    # these runs read the bundled MiniLM through BERT's transformers head (cls-pooler); auto reads it through the
    # mean now (issue 25 §1): another experiment, another key (tests/test_head.py)
    assert run_key(RunConfig(**{"head": "cls-pooler", **kw})) == key
    assert run_key(RunConfig(**kw)) != key


def test_key_policy_is_read_from_the_schema():
    assert {"data_dir", "device", "progress", "export_dir", "overwrite", "trust_remote_code", "checkpoint_every",
            "keep_checkpoints", "tracker", "compile"} == ENVIRONMENT_FIELDS
    assert KEY_WHEN_SET == {"bucket": False, "feature_cache": False, "gradient_checkpointing": False,
                            "quantize": None, "quant_compute_dtype": None, "template": None,
                            "train_on_inputs": False, "max_new_tokens": None, "train_data": None,
                            "forgetting_file": None, "selection_max": None, "eval_every_max": None, "head": "auto",
                            "score_official": True}
    base = RunConfig(task="rte")
    q4 = base.replace(quantize="4bit", quant_compute_dtype="fp32")
    for other in (base.replace(gradient_checkpointing=True), q4, q4.replace(quant_compute_dtype="bf16")):
        assert run_key(other) != run_key(base)  # set: a different experiment
    assert run_key(q4) != run_key(q4.replace(quant_compute_dtype="bf16"))


# ---------------------------------------------------------------------------------------------- derived flags
SAMPLE = {"task": "rte", "method": "lora", "model": "minilm", "targets": "qkv", "data_dir": "/data",
          "export_dir": "/out", "tracker": "wandb,mlflow", "precision": "bf16",  # auto would resolve
          "template": "alpaca", "train_data": "boolq", "forgetting_file": "held-out.txt",
          "head": "mean"}  # model would resolve to its BERT spelling, cls-pooler


def _sample(name: str) -> str | None:
    """A valid command-line value for each setting (None: a switch)."""
    rule = SETTINGS[name].rule
    if name in SAMPLE:
        return SAMPLE[name]
    if rule.kind == "choice":
        return rule.choices[-1]
    return {"bool": None, "int": "3", "float": "0.5"}[rule.kind]


FLAGGED = [n for n, s in SETTINGS.items() if s.flag_name(n) is not None]
NEEDS = {"quant_compute_dtype": {"quantize": "4bit"},  # a setting that is only valid beside another
         **{n: {"task": "synthetic-reverse"} for n in ("template", "train_on_inputs", "max_new_tokens",
                                                      "forgetting_file")},
         "train_data": {"task": "gsm8k"},
         "selection_max": {"selection_size": "0.1"}, "eval_every_max": {"eval_every": "10"},
         "score_official": {"selection_size": "0.1"}}


def test_every_setting_with_a_flag_is_in_eft_run_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    assert {"gradient_checkpointing", "quantize", "checkpoint_every", "tracker"} <= set(FLAGGED)
    for name in FLAGGED:
        s = SETTINGS[name]
        assert s.flag_name(name) in text, name
        if s.help:
            assert " ".join(s.help.split()[:3]) in " ".join(text.split()), name


@pytest.mark.parametrize("name", FLAGGED)
def test_every_flag_reaches_its_field(name):
    flag, value = SETTINGS[name].flag_name(name), _sample(name)
    needs = [a for k, v in NEEDS.get(name, {}).items() for a in (SETTINGS[k].flag_name(k), v)]
    cfg = config_from_args(build_parser().parse_args(["run", *needs, flag, *([] if value is None else [value])]))
    expected = not flag.startswith("--no-") if value is None else SETTINGS[name].rule.check(name, value)
    assert getattr(cfg, name) == expected
    if name == "tracker":
        assert cfg.tracker == ["wandb", "mlflow"]


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.in_suite and s.rule.kind != "mapping"])
def test_every_suite_setting_is_accepted_in_a_suite(name, tmp_path):
    value = _sample(name)
    value = True if value is None else SETTINGS[name].rule.check(name, value)
    p = tmp_path / "s.yaml"
    import yaml

    p.write_text(yaml.safe_dump({"name": "t", "defaults": {"task": "rte", name: value, **NEEDS.get(name, {})},
                                 "methods": [{"method": "lora"}]}))
    runs = load_suite(p).expand({"progress": False})
    assert [getattr(r.cfg, name) for r in runs] == [value]  # a list setting's list is one value, not an axis


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if not s.in_suite])
def test_a_suite_refuses_a_command_line_setting_naming_a_flag_that_exists(name, tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(f"name: t\ndefaults: {{{name}: {'false' if SETTINGS[name].rule.kind == 'bool' else 'x'}}}\n"
                 "methods:\n  - {method: lora}\n")
    if name == "trust_remote_code":  # `false` is harmless, but still not the suite's to say
        p.write_text("name: t\ndefaults: {trust_remote_code: true}\nmethods:\n  - {method: lora}\n")
    with pytest.raises(ConfigError) as e:
        load_suite(p)
    msg = str(e.value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--help"])
    sweep_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    run_help = capsys.readouterr().out
    for flag in [w.strip("().,;") for w in msg.split() if w.startswith(("--", "(--"))]:
        help_text = sweep_help if f"eft sweep {flag}" in msg else run_help
        assert flag in help_text, (name, flag, msg)
    if SETTINGS[name].sweep_flag:
        assert f"(eft sweep {SETTINGS[name].flag_name(name)})" in msg
    elif name == "export_dir":
        assert msg.endswith("'export_dir' says where things are, not what is run; eft sweep cannot set it; "
                            "eft run --export-dir sets it for one run."), msg


def test_eft_sweep_environment_flags_come_from_the_schema():
    a = build_parser().parse_args(["sweep", "quick", "--device", "CPU", "--data-dir", "/d"])
    assert (a.device, a.data_dir) == ("cpu", "/d")  # case-folded as eft run's --device is


def test_a_list_setting_has_a_type():
    assert RunConfig(tracker="WandB, tensorboard").tracker == ["wandb", "tensorboard"]
    with pytest.raises(ConfigError, match=r"tracker must be a list of names \(experiment trackers\), or one "
                                          r"comma-separated text, got 5\."):
        RunConfig(tracker=5)


def test_new_settings_are_validated_with_one_clear_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:  # argparse's own choice check, as for every choice flag
        main(["run", "--quantize", "3bit", "--store", str(tmp_path / "s.sqlite")])
    assert e.value.code == 2 and "argument --quantize: invalid choice: '3bit'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"checkpoint_every must be an integer in \[0, 2147483647\], got -1"):
        RunConfig(checkpoint_every=-1)
    with pytest.raises(ConfigError, match=r"quantize '3bit' is not known\. Did you mean '8bit'\? Accepted: 4bit, 8bit"):
        RunConfig(quantize="3bit")


def test_runtime_is_built_once_and_reaches_loading_and_training(tiny_bert, monkeypatch):
    from efficientft import train as T
    from efficientft.models.loading import LoadOptions
    from efficientft.runtime import build_runtime

    built, seen = [], {}
    monkeypatch.setattr(T, "build_runtime", lambda cfg: built.append(build_runtime(cfg)) or built[-1])
    real_load, real_train = T.load_model, T.train

    def load(name, num_labels, options, **kw):
        seen["load"] = options
        return real_load(name, num_labels, options, **kw)

    def train(p, *a, **k):
        seen["train"] = p.runtime
        return real_train(p, *a, **k)

    monkeypatch.setattr(T, "load_model", load)
    monkeypatch.setattr(T, "train", train)
    rec = T.run(tiny_config(tiny_bert, steps=1, max_train=8, max_eval=8, device="cpu"))
    assert rec["status"] == "done"
    assert len(built) == 1 and seen["train"] is built[0] and seen["load"] == LoadOptions.from_runtime(built[0])


def test_precision_auto_is_resolved_by_the_runtime_not_run_as_fp16(tiny_bert, monkeypatch):
    # prepare() of an unresolved config (benchmarks, notebooks) once autocast "auto" as fp16, without a GradScaler
    from efficientft import hardware
    from efficientft.step import forward
    from efficientft.train import device_batches, prepare

    monkeypatch.setattr(hardware, "best_precision", lambda device="auto": "fp32")
    p = prepare(tiny_config(tiny_bert, precision="auto", max_train=8, max_eval=8, device="cpu"))
    assert p.runtime.precision == "fp32" and p.runtime.grad_scaler() is None
    idx, batch = next(device_batches(p))
    assert forward(p, "train", idx, batch).logits.dtype == torch.float32


def test_a_runtime_that_is_not_the_configs_is_refused(tiny_bert):
    from efficientft.runtime import Runtime
    from efficientft.train import prepare

    cfg = tiny_config(tiny_bert, precision="fp32", device="cpu")
    with pytest.raises(ConfigError, match=r"the runtime's precision is 'bf16' but the config's is 'fp32'; build the "
                                          r"runtime from the config \(build_runtime\(cfg\)\)\."):
        prepare(cfg, Runtime(torch.device("cpu"), "bf16"))


def test_two_runtimes_in_one_process_keep_their_own_settings(monkeypatch):
    import accelerate

    from efficientft.runtime import build_runtime

    class FakeAccelerator:
        num_processes, is_main_process, device = 2, True, torch.device("cpu")

        def __init__(self, cpu: bool) -> None:
            self.cpu = cpu

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    a = build_runtime(RunConfig(device="cpu", precision="bf16", batch_size=8), world_size=2)
    b = build_runtime(RunConfig(device="cpu", precision="fp16", batch_size=4, gradient_checkpointing=True,
                                quantize="4bit", quant_compute_dtype="bf16"), world_size=2)
    c = build_runtime(RunConfig(device="cpu"), world_size=1)
    assert a.accelerator is not b.accelerator and c.accelerator is None and c.is_main and c.num_processes == 1
    assert (a.precision, a.autocast_dtype, a.needs_grad_scaler) == ("bf16", torch.bfloat16, False)
    assert (b.precision, b.needs_grad_scaler, b.gradient_checkpointing, b.quantize, b.quant_compute_dtype) == \
        ("fp16", True, True, "4bit", torch.bfloat16)
    assert (c.precision, c.autocast_dtype, c.gradient_checkpointing, c.quantize) == ("fp32", None, False, None)
    with pytest.raises(ConfigError, match="batch_size 3 must be divisible by the 2 data-parallel processes"):
        build_runtime(RunConfig(device="cpu", batch_size=3), world_size=2)


def test_the_backbone_cache_keeps_loads_of_different_dtypes_apart(tiny_bert):
    from efficientft.models.loading import LoadOptions, clear_backbone_cache, load_model

    clear_backbone_cache()
    load_model(str(tiny_bert), 2)
    load_model(str(tiny_bert), 2)  # kept in memory from now on
    half = load_model(str(tiny_bert), 2, LoadOptions(dtype=torch.bfloat16)).model
    full = load_model(str(tiny_bert), 2).model
    assert next(half.parameters()).dtype == torch.bfloat16 and next(full.parameters()).dtype == torch.float32
    clear_backbone_cache()
