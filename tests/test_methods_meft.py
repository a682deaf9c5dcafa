"""MEFT's defining properties (Liao et al. 2023, arXiv 2306.00477), under the defaults a user gets (MEFT1, λ = 0.1,
β = 1, bottleneck 8): the reversible backward gives autograd's gradients without storing the encoder's activations,
the reversible model starts at the pre-trained one, and only the adapters (and the head) train."""

import contextlib
import copy

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods import meft as meft_mod
from efficientft.methods.base import Context
from efficientft.methods.capabilities import check_run


def _tiny(layers, dtype=torch.float32, dropout=0.1):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg).to(dtype)


def _meft(model, **args):
    return METHODS.get("meft").from_config(args).prepare(model, [], Context(heads=["classifier"]))


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def _grads(model, reversible, batch):
    """The adapters' and head's gradients of one training step (dropout on, the same masks for both paths)."""
    model.bert.encoder.reversible = reversible
    model.train()
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(1)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _max_rel(a, b):
    return max(float((a[n] - b[n]).norm() / b[n].norm()) for n in b)


def test_reversible_backward_gives_autograds_gradients():
    """Defaults, fp32, 4 layers, dropout 0.1: the gradients the backward gets by rebuilding each layer's input
    (dividing by λ = 0.1 each layer) are autograd's through the same forward within 1e-5 (measured 4.3e-7); in fp64
    they agree to 1e-7 for every variant (measured 7e-14 for MEFT1; MEFT3 divides by λβ = 0.01 a layer: 7e-10), so
    the inverse and the chain rule through it are exact, not approximate."""
    batch = _batch()
    model = _meft(_tiny(4))
    assert model.bert.encoder.variant == "meft1" and (model.bert.encoder.lam, model.bert.encoder.beta) == (0.1, 1.0)
    rev, plain = _grads(model, True, batch), _grads(model, False, batch)
    assert set(rev) == set(plain) and len(rev) == 4 * 2 * 4 + 2  # 4 layers x 2 adapters x (2 weights, 2 biases)
    assert all(float(g.abs().sum()) > 0 for g in rev.values())
    assert _max_rel(rev, plain) < 1e-5
    for variant in ("meft1", "meft2", "meft3"):
        model = _meft(_tiny(4, torch.float64), variant=variant)
        assert _max_rel(_grads(model, True, batch), _grads(model, False, batch)) < 1e-7, variant


def test_pretrained_gradients_survive_six_divisions_by_lambda(minilm_dir, monkeypatch):
    """On MiniLM (6 trained layers, defaults, fp32) the bottom adapters' gradients are autograd's within 5e-3
    (measured 5.9e-4): the streams are carried in float64. Carried in the model's fp32, as the reference code does,
    the rounding of each rebuilt input grows tenfold a layer and they are 2.3e-2 off."""
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (8, 32), generator=g),
             "attention_mask": torch.ones(8, 32, dtype=torch.long), "labels": torch.tensor([0, 1] * 4)}
    torch.manual_seed(0)
    model = _meft(AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2))
    assert _max_rel(_grads(model, True, batch), _grads(model, False, batch)) < 5e-3
    monkeypatch.setattr(meft_mod, "STREAM", torch.float32)
    assert _max_rel(_grads(model, True, batch), _grads(model, False, batch)) > 1e-2


def test_recomputation_replays_the_forwards_dropout(monkeypatch):
    """A backward that recomputed F and G with fresh dropout masks would be a plausible wrong version: it is off."""
    batch = _batch()
    model = _meft(_tiny(2, torch.float64))
    plain = _grads(model, False, batch)
    assert _max_rel(_grads(model, True, batch), plain) < 1e-10
    monkeypatch.setattr(meft_mod, "_replay", lambda *a: contextlib.nullcontext())
    assert _max_rel(_grads(model, True, batch), plain) > 1e-2


def _saved(model, batch):
    """Number and bytes of the tensors autograd keeps, from one training forward, for its backward (what the
    backward's recomputation saves, one layer at a time, is freed with that layer and not counted)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    counted = len(sizes), sum(sizes)
    loss.backward()
    return counted


def test_activation_memory_does_not_grow_with_depth():
    """What runs is the reversible backward, not one that stores activations: the tensors kept for the backward are
    the same in number and bytes at 2 and 6 layers (the encoder keeps only its output), while autograd through the
    same forward keeps more with every layer."""
    batch = _batch()
    shallow, deep = _meft(_tiny(2)), _meft(_tiny(6))
    assert _saved(shallow, batch) == _saved(deep, batch)
    shallow.bert.encoder.reversible = deep.bert.encoder.reversible = False
    (n2, b2), (n6, b6) = _saved(shallow, batch), _saved(deep, batch)
    assert n6 > n2 and b6 > 1.5 * b2


def test_starts_at_the_pretrained_model(minilm_dir):
    """At initialisation (MiniLM, defaults) the two streams carry the pre-trained h_{N-1} and h_N (up to λ's leak), so
    the encoder's output, their mean, is (h_{N-1} + h_N) / 2 within 25 % (measured 19 %). Without λ → 0 (λ = 1) or
    without the streams' swap after each layer, the layers read the wrong inputs: off by more than 50 % (measured 330 %
    and 96 %)."""
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(["a gripping, funny and moving film", "the plot is thin and the acting worse"], padding=True,
                return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    with torch.no_grad():
        hs = base.bert(**batch, output_hidden_states=True).hidden_states
    want = (hs[-2] + hs[-1]) / 2

    def off(**args):
        torch.manual_seed(0)
        model = _meft(copy.deepcopy(base), **{k: v for k, v in args.items() if k != "swap"}).eval()
        model.bert.encoder.swap = args.get("swap", True)
        with torch.no_grad():
            return float((model.bert(**batch).last_hidden_state - want).norm() / want.norm())

    assert off() < 0.25
    assert off(lam=1.0) > 0.5
    assert off(swap=False) > 0.5


def test_only_adapters_and_head_train():
    """The base stays frozen: only the adapters and the head train, two adapters per layer as in the reference (the
    FFN-parallel one, and G's (MEFT1) or the attention's (MEFT3)), each W_down, b_down, W_up, b_up: 2 d m + m + d;
    nothing frozen gets a gradient from the reversible backward."""
    d, m, layers = 32, 8, 3
    per_adapter = d * m + m + m * d + d
    for variant in ("meft1", "meft3"):
        model = _meft(_tiny(layers), variant=variant)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert all("_adapter." in n or n.startswith("classifier.") for n in names), names
        assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == (
            layers * 2 * per_adapter + (d * 2 + 2))
        grads = _grads(model, True, _batch())
        assert set(grads) == set(names)
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_refusals_are_one_line():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=4,
                                                       num_key_value_heads=2))
    with pytest.raises(ConfigError, match=r"^method 'meft' makes BERT-family encoders reversible .*"
                                          r"LlamaForSequenceClassification has none") as e:
        METHODS.get("meft").from_config({}).prepare(llama, [], Context(heads=["score"]))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^method 'meft': lam must be a positive number \(none: the variant's\), "
                                          r"got 0.0.$"):
        METHODS.get("meft").from_config({"lam": 0})
    with pytest.raises(ConfigError, match=r"^method 'meft' cannot train with gradient checkpointing \(its "
                                          r"reversible backward already recomputes every layer"):
        check_run(METHODS.get("meft")(), targets="qv", quantize=None, role_ratios={}, lr_ratio=1.0,
                  default_targets="qv", gradient_checkpointing=True)


@pytest.mark.parametrize("model, flags, message", [
    ("tiny_llama", [], "method 'meft' makes BERT-family encoders reversible (post-norm layers with attention, "
                       "intermediate and output blocks, as the reference's RevBertLayer); "
                       "LlamaForSequenceClassification has none"),
    ("tiny_bert", ["--gradient-checkpointing"], "method 'meft' cannot train with gradient checkpointing (its "
                                                "reversible backward already recomputes every layer"),
])
def test_the_command_line_refuses_in_one_line_with_exit_2(model, flags, message, request, glue_dir, tmp_path, capsys):
    from efficientft.cli import main

    path = request.getfixturevalue(model)
    capsys.readouterr()  # what building the fixture printed
    assert main(["run", "--model", str(path), "--task", "rte", "--method", "meft", *flags, "--steps", "1",
                 "--max-train", "8", "--max-eval", "8", "--max-length", "32", "--data-dir", str(glue_dir),
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"eft run: error: {message}") and "\n" not in err and "Traceback" not in err, err
