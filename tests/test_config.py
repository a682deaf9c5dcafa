import pytest

from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.resolve import resolve, run_key


def test_key_is_stable_and_ignores_environment():
    a = RunConfig(task="rte", seed=1)
    assert run_key(a) == run_key(RunConfig(task="rte", seed=1))
    assert run_key(a) == run_key(a.replace(data_dir="/elsewhere", device="cpu", progress=False))
    assert run_key(a) != run_key(a.replace(seed=2))
    assert run_key(a) != run_key(a.replace(lr_ratio=4))


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig(task="mrpc", method="full", targets="qkv", lr_ratio=2, steps=10)
    p = tmp_path / "run.yaml"
    p.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(p) == cfg


def test_role_ratios():
    assert RunConfig(lr_ratio=4).role_ratios == {"v": 4.0}
    assert RunConfig(targets="qkvo", role_lr={"v": 2, "o": 3}).role_ratios == {"v": 2.0, "o": 3.0}
    with pytest.raises(ConfigError, match="disagree"):
        RunConfig(lr_ratio=4, role_lr={"v": 2})


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"lr": 0}, "lr must be a positive number, got 0"),
        ({"lr_ratio": -1}, "lr_ratio must be a positive number"),
        ({"lr_ratio": float("nan")}, "lr_ratio must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"epochs": 1, "steps": 5}, "either epochs or steps"),
        ({"precision": "fp8"}, "precision 'fp8' is not known"),
        ({"schedule": "cosin"}, "Did you mean 'cosine'"),
        ({"role_lr": {"v": 0}}, r"role_lr\['v'\] must be a positive number"),
        ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\)"),
    ],
)
def test_validation(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw)


def test_unknown_field_and_bad_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown field 'lr_ration'. Did you mean 'lr_ratio'"):
        RunConfig.from_dict({"lr_ration": 4})
    with pytest.raises(ConfigError, match="steps must be an integer, got 'ten'"):
        RunConfig.from_dict({"steps": "ten"})
    p = tmp_path / "bad.yaml"
    p.write_text("task: rte\nlr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+, column \d+: not valid YAML"):
        RunConfig.from_yaml(p)


def test_defaults_resolve_to_the_same_key():
    # the method's default arguments and the default length are made explicit before hashing
    assert run_key(RunConfig()) == run_key(RunConfig(method_args={"rank": 8})) == run_key(RunConfig(epochs=3))
    assert resolve(RunConfig()).method_args == {"rank": 8, "alpha": None, "dropout": 0.0}
    assert run_key(RunConfig()) != run_key(RunConfig(method_args={"rank": 16}))


def test_precision_auto_is_resolved_before_hashing(monkeypatch):
    from efficientft import hardware

    monkeypatch.setattr(hardware, "best_precision", lambda device="auto": "bf16")
    auto = RunConfig(precision="auto")
    assert resolve(auto).precision == "bf16"
    assert run_key(auto) == run_key(RunConfig(precision="bf16")) != run_key(RunConfig())


@pytest.mark.parametrize("flags,want", [({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"), ({"avx2"}, "fp32")])
def test_best_precision_on_cpu_follows_native_bf16(monkeypatch, flags, want):
    from efficientft import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    assert hardware.best_precision("cpu") == want


def test_speed_options_enter_the_key_only_when_set():
    base = RunConfig(task="rte", head="cls-pooler")  # the head every run had before the setting (issue 25 §1)
    assert "bucket" not in base.identity() and "feature_cache" not in base.identity()
    # the key of a default run is what it was before these options existed
    added = ("bucket", "feature_cache", "gradient_checkpointing", "quantize", "quant_compute_dtype",
             "template", "train_on_inputs", "max_new_tokens", "train_data", "forgetting_file", "selection_max",
             "eval_every_max", "head", "score_official")
    legacy = {k: v for k, v in resolve(base).to_dict().items() if k not in added}
    for name in ("data_dir", "device", "progress", "export_dir", "overwrite", "trust_remote_code",
                 "checkpoint_every", "keep_checkpoints", "tracker", "compile"):
        legacy.pop(name)
    import hashlib
    import json

    blob = json.dumps(legacy, sort_keys=True, separators=(",", ":"), default=str)
    assert run_key(base) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert len({run_key(base), run_key(base.replace(bucket=True)), run_key(base.replace(feature_cache=True))}) == 3


def test_a_corrected_method_is_another_experiment_and_an_unchanged_one_keeps_its_key(monkeypatch):
    """A correction that changes what a method computes under the same arguments (its ``revision``) changes the
    run key, so a result stored before the correction is never "already done"; revision 1 adds nothing to the key."""
    import hashlib
    import json

    from efficientft.methods import get_method

    def unrevised_key(cfg):
        blob = json.dumps(resolve(cfg).identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    lora = RunConfig(method="lora")
    assert get_method("lora").revision == 1 and run_key(lora) == unrevised_key(lora)
    for name in ("sora", "kasa", "pfeiffer", "compacter", "houlsby", "ssf", "parallel_adapter"):
        cfg = RunConfig(method=name)
        assert get_method(name).revision == 2, name
        assert run_key(cfg) != unrevised_key(cfg), name
    before = run_key(lora)
    monkeypatch.setattr(get_method("lora"), "revision", 2)
    assert run_key(lora) != before
