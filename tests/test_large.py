"""Large-model options: gradient checkpointing (every method, same numbers) and quantized bases (QLoRA on CPU).

Checkpointing must change memory and time only: for every registered method, on a tiny BERT and LLaMA, the first
step's gradients and the loss curve of a few steps are the same with and without it, and the layers really are
recomputed in the backward pass. Quantization: methods are iterated by their declaration
(``capabilities.quantized_base``): those that declare it train on a 4-bit NF4 base (loss falls, head full precision),
those that do not are refused before training with a message naming the method and the reason.
"""


import pytest
import torch

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.capabilities import Capabilities
from efficientft.resolve import resolve, run_key
from efficientft.step import accumulate, optimizer_step
from efficientft.train import device_batches, prepare
from tests.conftest import skip_where_the_model_lacks_what_the_method_feeds, tiny_config


def method_args(name):
    return METHODS.get(name).test_args()


def _first_grads_and_losses(cfg, steps=3):
    p = prepare(cfg)
    p.model.train()  # as the loop does (checkpointing only acts in training mode; dropout runs too)
    layers = [m for n, m in p.model.named_modules() if n.endswith(("layer.0.attention", "layers.0.self_attn"))]
    calls = []
    layers[0].register_forward_hook(lambda *a: calls.append(1))
    batches = device_batches(p)
    first = next(batches)
    accumulate(p, [first], 1)
    grads = {n: q.grad.clone() for n, q in p.model.named_parameters() if q.grad is not None}
    p.optimizer.zero_grad(set_to_none=True)
    losses = [optimizer_step(p, [first if s == 1 else next(batches)], s).loss for s in range(1, steps + 1)]
    return grads, losses, len(calls)


@pytest.fixture(params=["bert", "llama"])
def model_dir(request, tiny_bert, tiny_llama):
    return {"bert": tiny_bert, "llama": tiny_llama}[request.param]


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).capabilities.gradient_checkpointing])
def test_gradient_checkpointing_gives_the_same_gradients_and_losses(name, model_dir):
    kw = dict(method=name, targets="qv", method_args=method_args(name), max_train=16, batch_size=4, steps=3,
              warmup_ratio=0.0, max_eval=4)
    try:
        g0, l0, calls0 = _first_grads_and_losses(tiny_config(model_dir, **kw))
    except ConfigError as e:  # the method refuses this model (BitFit: LLaMA has no biases), checkpointing or not
        pytest.skip(f"{name} refuses this model: {e}")
    g1, l1, calls1 = _first_grads_and_losses(tiny_config(model_dir, gradient_checkpointing=True, **kw))
    assert calls1 > calls0  # the layer ran again in the backward pass: checkpointing is on
    assert set(g1) == set(g0) and g0  # the same parameters got gradients (none silently lost)
    for n in g0:
        assert torch.count_nonzero(g0[n]) == torch.count_nonzero(g1[n]), n
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    assert l1 == pytest.approx(l0, rel=1e-5)


def test_gradient_checkpointing_is_in_the_key_only_when_set(tiny_bert):
    base = tiny_config(tiny_bert)
    assert "gradient_checkpointing" not in base.identity() and "quantize" not in base.identity()
    assert run_key(tiny_config(tiny_bert, gradient_checkpointing=True)) != run_key(base)
    assert run_key(tiny_config(tiny_bert, quantize="4bit")) != run_key(base)


@pytest.mark.parametrize("raw,msg", [
    ({"quantize": "nf3"}, "quantize 'nf3' is not known. Accepted: 4bit, 8bit."),
    ({"quantize": "8bit", "quant_compute_dtype": "bf16"}, "quant_compute_dtype is the compute dtype of 4-bit"),
    ({"quantize": "4bit", "quant_compute_dtype": "int8"}, "quant_compute_dtype 'int8' is not known."),
    ({"gradient_checkpointing": "maybe"}, "gradient_checkpointing must be true or false, got 'maybe'."),
])
def test_bad_large_model_settings_are_one_clear_line(tiny_bert, raw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        tiny_config(tiny_bert, **raw)


def test_quantize_4bit_resolves_its_compute_dtype_into_the_key(tiny_bert):
    cfg = resolve(tiny_config(tiny_bert, quantize="4bit", device="cpu"))
    assert cfg.quant_compute_dtype in ("bf16", "fp32")
    assert run_key(tiny_config(tiny_bert, quantize="4bit", device="cpu", quant_compute_dtype=cfg.quant_compute_dtype)) \
        == run_key(tiny_config(tiny_bert, quantize="4bit", device="cpu"))


# ---------------------------------------------------------------------------------------------- quantized bases
@pytest.fixture(scope="session")
def bert64(tmp_path_factory, minilm_dir):
    """A tiny BERT wide enough for bitsandbytes' 64-value blocks."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("bert64")
    BertForSequenceClassification(cfg).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(path))
    return path


def _q4(model, **kw):
    base = dict(quantize="4bit", quant_compute_dtype="fp32", device="cpu", max_train=8, batch_size=8, steps=6,
                lr=5e-3, warmup_ratio=0.0, max_eval=8)
    return tiny_config(model, **{**base, **kw})


def _packed_cpu_gemv(A, B, shapeB, absmax, code, blocksize):
    """bitsandbytes' AVX512-BF16 CPU kernel (``gemv_4bit`` on its repacked CPU layout), in torch: B is [N, K/2]
    with 32-row nibble interleaving (``_convert_weight_packed_for_cpu``), absmax [K/blocksize, N], compute bf16."""
    n, k = shapeB
    packed = B.contiguous().view(torch.uint8).reshape(-1, 32)
    nibbles = torch.cat([packed & 0xF, (packed >> 4) & 0xF], dim=-1)
    codes = nibbles.reshape(n // 32, k // 2, 32, 2).transpose(-3, -2).reshape(n, k).long()
    w = code.float()[codes] * absmax.float().T.repeat_interleave(blocksize, dim=1)
    out = A.reshape(-1, k).to(torch.bfloat16) @ w.to(torch.bfloat16).T
    return out.to(A.dtype).reshape(*A.shape[:-1], n)


@pytest.fixture(params=["natural", "avx512bf16"])
def cpu_layout(request, monkeypatch):
    """The CPU as it is, and a CPU with AVX512-BF16, where a 4-bit layer evaluated without gradients repacks its
    weight into bitsandbytes' CPU inference layout. Forced here by the feature check the layer reads when it is
    built; where the CPU lacks the instruction, the inference kernel is the torch version above (the repack itself
    is bitsandbytes' own, pure torch), so the switch happens and computes on every machine CI runs on."""
    import bitsandbytes.functional as bf
    import bitsandbytes.nn.modules as bm

    if request.param == "natural" or bf.has_avx512bf16():
        yield request.param
        return
    monkeypatch.setattr(bm, "has_avx512bf16", lambda: True)
    with torch.library._scoped_library("bitsandbytes", "IMPL") as lib:
        lib.impl("gemv_4bit", _packed_cpu_gemv, "CPU")
        yield request.param


def _train_mode_loss_and_grads(p, micro):
    """How training computes on ``micro``: the loss and every gradient of one training-mode pass (no step)."""
    p.model.train()
    p.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = accumulate(p, micro, 0)
    grads = {n: q.grad.clone() for n, q in p.model.named_parameters() if q.grad is not None}
    p.optimizer.zero_grad(set_to_none=True)
    return loss, grads


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).capabilities.quantized_base])
def test_methods_that_declare_a_quantized_base_train_on_nf4(name, bert64, cpu_layout):
    """Train, evaluate, train again (as ``--eval-every`` does; EVA's data-driven init evaluates before the first
    step): evaluating never changes how training computes, on every CPU."""
    import bitsandbytes as bnb

    from efficientft.train import evaluate_all

    skip_where_the_model_lacks_what_the_method_feeds(name, bert64)
    p = prepare(_q4(bert64, method=name, method_args=method_args(name)))
    quantized = [m for n, m in p.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    names = [n for n, m in p.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any("attention.self.query" in n for n in names) and any("intermediate" in n for n in names)
    assert not any("classifier" in n for n in names)  # the head stays full precision
    head = [m for n, m in p.model.named_modules() if "classifier" in n and isinstance(m, torch.nn.Linear)]
    assert head and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in head)
    assert any(q.requires_grad for m in head for q in m.parameters())  # and it trains
    idx, batch = next(device_batches(p))
    micro = [(idx, batch)]
    losses = [optimizer_step(p, micro, s).loss for s in range(1, 4)]
    weights = [m.weight.data.clone() for m in quantized]
    before = _train_mode_loss_and_grads(p, micro)
    scores = evaluate_all(p)
    assert scores and all(v == v for v in scores.values())
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantized)
    assert all(torch.equal(m.weight.data, w) for m, w in zip(quantized, weights, strict=True))
    loss, grads = _train_mode_loss_and_grads(p, micro)
    assert loss == before[0] and set(grads) == set(before[1]) and grads
    assert all(torch.equal(grads[n], before[1][n]) for n in grads)
    p.model.train()
    losses += [optimizer_step(p, micro, s).loss for s in range(4, 7)]
    assert all(map(lambda x: x == x, losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", [n for n in METHODS.names() if not METHODS.get(n).capabilities.quantized_base])
def test_methods_that_need_full_precision_weights_refuse_a_quantized_base(name, bert64, monkeypatch):
    import efficientft.train as t

    monkeypatch.setattr(t, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ConfigError) as e:
        prepare(_q4(bert64, method=name, method_args=method_args(name)))
    msg = str(e.value)
    assert msg.startswith(f"method {name!r} cannot train on a 4bit quantized base: ")
    assert METHODS.get(name).capabilities.quantized_base_reason in msg and "Methods that can: " in msg and "lora" in msg


def test_every_method_declares_its_quantized_base_support_in_its_own_class():
    default = Capabilities().quantized_base_reason
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert "capabilities" in cls.__dict__, f"{name} inherits its declaration"
        if not cls.capabilities.quantized_base:
            assert cls.capabilities.quantized_base_reason != default, f"{name} refuses without saying why"


def test_qlora_export_loads_on_the_full_precision_original(bert64, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    p = prepare(_q4(bert64, method="lora", method_args={"rank": 4}))
    idx, batch = next(device_batches(p))
    for s in range(1, 7):
        optimizer_step(p, [(idx, batch)], s)
    info = p.method.export(p.model, tmp_path / "adapter")
    assert info["format"] == "peft-adapter"
    full = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(str(bert64)),
                                     str(tmp_path / "adapter")).eval()
    assert not any(type(m).__name__ == "Linear4bit" for m in full.modules())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    p.model.eval()
    with torch.no_grad():
        a, b = full(**inputs).logits, p.model(**inputs).logits
        untrained = AutoModelForSequenceClassification.from_pretrained(str(bert64)).eval()(**inputs).logits
    # the trained adapter and head on the fp32 original give the quantized model's logits up to quantisation error
    err = (a - b).abs().max()
    assert err < 0.1 * (a - untrained).abs().max(), (err, (a - untrained).abs().max())


def test_quantize_refuses_a_model_with_nothing_to_quantize(tiny_gpt2):
    with pytest.raises(ConfigError, match=r"no nn\.Linear layer that bitsandbytes quantizes"):
        prepare(_q4(tiny_gpt2, method="lora", method_args={"rank": 4}))


def test_cli_refuses_a_quantized_base_for_full_fine_tuning_in_one_line(bert64, capsys):
    from efficientft.cli import main

    code = main(["run", "--model", str(bert64), "--task", "rte", "--method", "full", "--quantize", "4bit",
                 "--steps", "1", "--max-train", "8", "--max-eval", "8", "--no-progress", "--device", "cpu",
                 "--store", str(bert64.parent / "refused.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("eft run: error: method 'full' cannot train on a 4bit quantized base: it trains the base "
                          "weights themselves")
    able = sorted(n for n, c in METHODS.items() if c.capabilities.quantized_base)  # new methods join the list
    assert {"lora", "ia3", "houlsby", "ssf"} <= set(able) and "full" not in able
    assert err.endswith(f"Methods that can: {', '.join(able)}; or drop --quantize.")


def test_cli_flags_reach_the_config(tiny_bert):
    from efficientft.cli import build_parser, config_from_args

    a = build_parser().parse_args(["run", "--model", str(tiny_bert), "--gradient-checkpointing", "--quantize", "4bit",
                                   "--quant-compute-dtype", "fp32"])
    cfg = config_from_args(a)
    assert (cfg.gradient_checkpointing, cfg.quantize, cfg.quant_compute_dtype) == (True, "4bit", "fp32")


def test_a_suite_that_quantizes_a_method_needing_full_weights_fails_before_any_run(tmp_path, tiny_bert, capsys):
    from efficientft.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndefaults: {{model: {tiny_bert}, steps: 1, max_train: 8, max_eval: 8, quantize: 4bit}}"
                     f"\ngrid: {{task: [rte], seed: [0]}}\nmethods:\n  - {{method: lora, method_args: {{rank: 2}}}}\n"
                     "  - {method: sift}\n")
    db = tmp_path / "runs.sqlite"
    assert main(["sweep", str(suite), "--store", str(db)]) == 2
    err = capsys.readouterr().err
    assert "method 'sift' cannot train on a 4bit quantized base: it writes sparse increments" in err
    assert "Traceback" not in err
    assert not db.exists() or not __import__("efficientft.store").store.Store(db).runs()


def test_lora_trains_on_an_8bit_base_on_cpu(bert64):
    import bitsandbytes as bnb

    p = prepare(_q4(bert64, method="lora", method_args={"rank": 4}, quantize="8bit", quant_compute_dtype=None))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in p.model.modules())
    idx, batch = next(device_batches(p))
    losses = [optimizer_step(p, [(idx, batch)], s).loss for s in range(1, 7)]
    assert losses[-1] < losses[0]


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_quantized_load_keeps_no_tensor_in_the_mapped_checkpoint_file(bert64):
    """The full-precision tensors of a 4-bit model must not be views into the mmap of the checkpoint: one such view
    keeps every page of the file resident (the full-precision model's size in RSS, beside the 4-bit weights)."""
    from efficientft.config import RunConfig
    from efficientft.models import load_model
    from efficientft.models.loading import LoadOptions
    from efficientft.runtime import build_runtime

    runtime = build_runtime(RunConfig(model=str(bert64), quantize="4bit", quant_compute_dtype="fp32", device="cpu"))
    model = load_model(str(bert64), 2, LoadOptions.from_runtime(runtime)).model
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            if str(bert64) in line and "safetensors" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                ranges.append((lo, hi))
    tensors = [*model.parameters(), *model.buffers()]
    inside = [t.shape for t in tensors if any(lo <= t.untyped_storage().data_ptr() < hi for lo, hi in ranges)]
    assert inside == []
