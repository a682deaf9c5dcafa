"""Our own adapters (BitFit, Houlsby, Pfeiffer, parallel, Compacter, SSF): each one's defining property, its exact
trainable count, export → reload on a fresh base, merge where defined, and a few steps on a causal LM."""

import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods.base import Context
from efficientft.models import head_modules, resolve_targets
from efficientft.strategy import Strategy

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 2178, 6251, 2003, 2936, 2084, 1996, 102]])
MASK = (IDS != 0).long()
LABELS = torch.tensor([0, 1])


def fresh(model_dir):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()


def prepared(name, model_dir, args=None, targets="qv"):
    base = fresh(model_dir)
    method = get_method(name).from_config(args or {})
    ctx = Context(heads=head_modules(base))
    torch.manual_seed(1)
    model = method.prepare(base, resolve_targets(base, targets), ctx)
    return method, model, ctx


@torch.no_grad()
def logits(model):
    return model.eval()(input_ids=IDS, attention_mask=MASK).logits


def steps(method, model, n=2, lr=1e-2):
    groups = method.param_groups(model, Strategy({}), lr, 0.0)
    opt = method.optimizer(groups, lr, 0.0)
    model.train()
    for _ in range(n):
        loss = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def head_numel(model):
    return sum(p.numel() for h in head_modules(model) for p in model.get_submodule(h).parameters())


def check_export_reload(name, method, model, model_dir, tmp_path, ctx, targets="qv"):
    method.export(model, tmp_path / "export")
    base = fresh(model_dir)
    again = get_method(name).from_config(method.args_dict())
    reloaded = again.reload(base, tmp_path / "export", resolve_targets(base, targets), ctx)
    assert torch.equal(logits(reloaded), logits(model))


# ---------------------------------------------------------------------------------------------- bottleneck adapters
ADAPTERS = {  # name: (args, adapters per layer)
    "houlsby": ({"bottleneck": 4}, 2),
    "pfeiffer": ({"bottleneck": 4}, 1),
    "parallel_adapter": ({"bottleneck": 4}, 1),
}


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("name", list(ADAPTERS))
def test_bottleneck_adapter_is_identity_at_init_counts_exactly_trains_and_reloads(name, family, tiny_bert,
                                                                                  tiny_llama, tiny_gpt2, tmp_path):
    model_dir = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    args, per_layer = ADAPTERS[name]
    before = logits(fresh(model_dir))
    method, model, ctx = prepared(name, model_dir, args)
    if name == "houlsby":  # adapter-bert's near-identity init: both weights at std 1e-3, so next to the base model
        torch.testing.assert_close(logits(model), before, atol=1e-4, rtol=0)
    else:
        assert torch.equal(logits(model), before)  # W_up = 0: exactly the base model

    d, m, layers = 32, 4, 2
    want = layers * per_layer * (2 * d * m + m + d) + head_numel(model)
    if name == "houlsby":  # + the layer norms of every layer (§2.1): BERT 2 LayerNorms (w, b), LLaMA 2 RMSNorms
        want += layers * {"bert": 4 * d, "llama": 2 * d, "gpt2": 4 * d}[family]
    assert method.trainable_parameters(model) == want
    assert not any("classifier" in n or "score" in n for n in trainable(model) if ".adapter." in n)

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    steps(method, model)
    assert not torch.allclose(logits(model), before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    check_export_reload(name, method, model, model_dir, tmp_path, ctx)


def test_adapters_and_ssf_draw_their_reference_initialisation(tiny_bert):
    """Each as its authors' code draws it, on tensors big enough for a 3% tolerance on the std."""
    from efficientft.methods.ssf import ScaleShift

    def stats(t):
        t = t.detach()
        return float(t.mean()), float(t.std()), float(t.abs().max())

    like, d = torch.zeros(1), 1024
    torch.manual_seed(0)
    # Houlsby (google-research/adapter-bert): both weights truncated-normal, std 1e-3, cut at ±2 std; zero biases
    houlsby = get_method("houlsby").from_config({}).build(d, like)
    for w in (houlsby.down.weight, houlsby.up.weight):
        mean, std, top = stats(w)
        assert w.numel() == d * d // 16 and top <= 2e-3 and abs(mean) < 1e-5
        assert std == pytest.approx(1e-3 * 0.8796, rel=0.03)  # the std of N(0, σ²) cut at ±2σ
    assert not houlsby.down.bias.any() and not houlsby.up.bias.any()
    # parallel adapter (He et al., init_option "lora"): W_down ~ U(±1/√d), W_up = 0, zero biases
    par = get_method("parallel_adapter").from_config({}).build(d, like)
    _, std, top = stats(par.down.weight)
    assert top <= d ** -0.5 and std == pytest.approx((3 * d) ** -0.5, rel=0.03)
    assert not par.up.weight.any() and not par.up.bias.any() and not par.down.bias.any()
    # SSF (dongzelian/SSF): γ ~ N(1, 0.02²), β ~ N(0, 0.02²)
    ss = ScaleShift(100_000, like)
    (g_mean, g_std, _), (b_mean, b_std, _) = stats(ss.scale), stats(ss.shift)
    assert g_mean == pytest.approx(1.0, abs=1e-3) and g_std == pytest.approx(0.02, rel=0.03)
    assert b_mean == pytest.approx(0.0, abs=1e-3) and b_std == pytest.approx(0.02, rel=0.03)
    # and a prepared model holds them (not only the builders)
    _, model, _ = prepared("houlsby", tiny_bert, {"bottleneck": 4})
    up = model.bert.encoder.layer[0].output.dense.adapter.up.weight
    assert up.any() and up.abs().max() <= 2e-3
    _, model, _ = prepared("ssf", tiny_bert)
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.value.ssf["v"].scale, torch.ones(32))


def _capture(module, store, key):
    return module.register_forward_hook(lambda mod, inp, out: store.__setitem__(key, (inp[0].detach(), out.detach())))


@pytest.mark.parametrize("name", ["houlsby", "parallel_adapter"])
def test_series_adapter_reads_the_output_parallel_adapter_reads_the_sub_layer_input(name, tiny_bert):
    from efficientft.methods._adapters import InputTap, ParallelAdapter, SeriesAdapter

    method, model, _ = prepared(name, tiny_bert, {"bottleneck": 4, "scaling": 2.0} if "parallel" in name
                                else {"bottleneck": 4})
    layer = model.bert.encoder.layer[0]
    wrapped = layer.output.dense
    with torch.no_grad():  # a non-zero W_up, so the adapter's term shows
        for n, p in model.named_parameters():
            if ".adapter.up." in n:
                p.normal_(0, 0.5)
    seen = {}
    hooks = [_capture(wrapped, seen, "out"), _capture(wrapped.base, seen, "base")]
    if name == "parallel_adapter":
        assert isinstance(wrapped, ParallelAdapter) and isinstance(layer.intermediate.dense, InputTap)
        hooks.append(_capture(layer.intermediate.dense.base, seen, "ffn_in"))
    else:
        assert isinstance(wrapped, SeriesAdapter) and isinstance(layer.attention.output.dense, SeriesAdapter)
    logits(model)
    for h in hooks:
        h.remove()
    h_base, out = seen["base"][1], seen["out"][1]
    with torch.no_grad():
        if name == "parallel_adapter":  # h + s · W_up f(W_down x), x the FFN's input (He et al. Eq. 10)
            a = wrapped.adapter
            want = h_base + 2.0 * a.up(torch.relu(a.down(seen["ffn_in"][0])))
        else:  # h + W_up f(W_down h)
            want = h_base + wrapped.adapter(h_base)
    assert torch.allclose(out, want, atol=1e-6) and not torch.allclose(out, h_base)


def _ffn_block_outputs(model, family):
    """Each layer's FFN-block output, as a frozen base computes it: the closing LayerNorm's (BERT, post-norm), the
    layer's output, x + h (LLaMA, GPT-2: pre-norm)."""
    seen, hooks = [], []
    for name, mod in model.named_modules():
        if (family == "bert" and name.endswith(".output.LayerNorm") and ".attention." not in name) or (
                family != "bert" and re.fullmatch(r".*\.(layers|h)\.\d+", name)):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).detach())))
    logits(model)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_pfeiffer_reads_the_normalised_output_of_the_ffn_block(family, tiny_bert, tiny_llama, tiny_gpt2):
    """AdapterHub's Pfeiffer placement: the adapter's input is the FFN block's output after its residual and norm
    (an adapter on the raw FFN output, Houlsby's, or after attention reads something else and fails here), and its
    output goes back before that norm: LN(s + A(LN(s)))."""
    from efficientft.methods._adapters import Bottleneck

    model_dir = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    want = _ffn_block_outputs(fresh(model_dir), family)
    method, model, _ = prepared("pfeiffer", model_dir, {"bottleneck": 4})
    adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
    seen = []
    hooks = [a.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach())) for a in adapters]
    logits(model)  # W_up = 0: the same function as the base, so the same block outputs
    for h in hooks:
        h.remove()
    assert len(want) == len(seen) == 2
    for got, ref in zip(seen, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    if family == "bert":  # the adapter's output is added before the same LayerNorm, applied again
        norm = model.bert.encoder.layer[0].output.LayerNorm
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".adapter.up." in n:
                    p.normal_(0, 0.5)
        io = {}
        hook = _capture(norm, io, "ln")
        logits(model)
        hook.remove()
        s, out = io["ln"]
        ln = norm.base
        with torch.no_grad():
            torch.testing.assert_close(out, ln(s + norm.adapter(ln(s))), rtol=0, atol=1e-6)
            assert not torch.allclose(out, ln(s), atol=1e-3)


def test_compacter_defaults_follow_the_compacter_plus_plus_configuration(tiny_bert):
    """rabeehk/compacter compacter++.json: task_reduction_factor 32, hypercomplex_division 4, non_linearity
    gelu_new, unfreeze_layer_norms, phm_c_init normal with phm_init_range 1e-4, W's factors Glorot-uniform."""
    from transformers.activations import NewGELUActivation

    from efficientft.methods.compacter import PHMLinear, SharedRule

    args = get_method("compacter").from_config({}).args
    assert (args.reduction_factor, args.phm_dim, args.nonlinearity, args.layer_norm) == (32, 4, "gelu_new", True)
    torch.manual_seed(0)
    a = SharedRule(16, torch.zeros(1)).A.detach()  # 4096 entries: the std within 3%
    assert abs(float(a.mean())) < 1e-5 and float(a.std()) == pytest.approx(1e-4, rel=0.03)

    before = logits(fresh(tiny_bert))
    method, model, _ = prepared("compacter", tiny_bert)
    adapter = model.bert.encoder.layer[0].output.dense.adapter
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(adapter.act(x), NewGELUActivation()(x))  # gelu_new, not erf GELU
    assert not torch.allclose(adapter.act(x), torch.nn.functional.gelu(x), atol=1e-5, rtol=0)
    phm = [m for m in model.modules() if isinstance(m, PHMLinear)]
    assert all(m.s.any() and m.t.any() for m in phm)  # W_up is not zeroed: near the base model, not at it
    torch.testing.assert_close(logits(model), before, atol=1e-4, rtol=0)
    norms = {n for n, _ in model.named_parameters() if "LayerNorm" in n}  # every norm, the embeddings' too
    assert norms and norms <= set(trainable(model))
    assert model.bert.embeddings.LayerNorm.weight.requires_grad


@pytest.mark.parametrize(("raw", "msg"), [
    ({"targets": "qkv"}, "method 'pfeiffer' places its modules at sub-layer positions (its own method_args say "
                         "which), not on --targets; leave the default 'qv', got 'qkv'."),
    ({"lr_ratio": 4.0}, "lr_ratio 4 (W_v's rate) cannot apply to method 'pfeiffer': it trains no parameter of W_v; "
                        "drop the ratio (it must be 1 for this method)."),
    ({"method_args": {"nonlinearity": "swish"}},
     "method 'pfeiffer': nonlinearity must be one of relu, gelu, silu, tanh, identity, gelu_new, got 'swish'."),
    ({"method_args": {"bottleneck": -1}}, "method 'pfeiffer': bottleneck must be a non-negative integer (0: d // reduction_factor), got -1."),
    ({"method": "parallel_adapter", "method_args": {"positions": "ffn,mlp"}},
     "method 'parallel_adapter': positions must be attn, ffn or attn,ffn, got 'ffn,mlp'."),
])
def test_bad_adapter_settings_are_one_clear_line_before_a_model_loads(tiny_bert, raw, msg, monkeypatch):
    import efficientft.train as train_mod
    from efficientft.train import prepare
    from tests.conftest import tiny_config

    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ConfigError) as e:
        prepare(tiny_config(tiny_bert, **{"method": "pfeiffer", "method_args": {}, **raw}))
    assert str(e.value) == msg


def test_sequential_adapters_refuse_merge(tiny_bert):
    method, model, _ = prepared("houlsby", tiny_bert, {"bottleneck": 4})
    with pytest.raises(ConfigError, match="method 'houlsby' defines no merge: its adapters apply a non-linearity"):
        method.merge(model)


# ---------------------------------------------------------------------------------------------- generation (causal LM)
CAUSAL = {"houlsby": {"bottleneck": 4}, "pfeiffer": {"bottleneck": 4}, "parallel_adapter": {"bottleneck": 4},
          "bitfit": {}, "ssf": {}, "compacter": {}}


@pytest.mark.parametrize("name", list(CAUSAL))
def test_trains_a_causal_lm(name):
    """generation=True: on a tiny LLaMA causal LM (no head to train), the loss falls and only the method trains
    (BitFit on Qwen2, a LLaMA-family model whose Q, K, V projections have biases)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(Qwen2Config(**kw)) if name == "bitfit" else LlamaForCausalLM(LlamaConfig(**kw))
    method = get_method(name).from_config(CAUSAL[name])
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=[], peft_task_type="CAUSAL_LM"))
    assert method.capabilities.generation
    assert not any(n.startswith("lm_head") for n in trainable(model))
    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    groups = method.param_groups(model, Strategy({}), 1e-2, 0.0)
    opt = method.optimizer(groups, 1e-2, 0.0)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------------------- BitFit
@pytest.mark.parametrize(("targets", "modules"), [("qv", ("query", "value")), ("all", None)])
def test_bitfit_trains_exactly_the_biases_and_lambda_reaches_v_bias(tiny_bert, targets, modules, tmp_path):
    if targets == "all":  # the loop passes no targets for "all"
        base, method = fresh(tiny_bert), get_method("bitfit").from_config({})
        ctx = Context(heads=head_modules(base))
        model = method.prepare(base, [], ctx)
    else:
        method, model, ctx = prepared("bitfit", tiny_bert, targets=targets)
    heads = tuple(h + "." for h in head_modules(model))
    biases = [n for n, p in model.named_parameters() if n.endswith(".bias") and not n.startswith(heads)
              and (modules is None or n.split(".")[-2] in modules)]
    want = sum(model.get_parameter(n).numel() for n in biases) + head_numel(model)
    assert method.trainable_parameters(model) == want
    assert {n for n in trainable(model) if not n.startswith(heads)} == set(biases)
    assert len(biases) == (4 if targets == "qv" else 2 * 8 + 2)  # 2 layers × (q, v) | × 8, + embedding norm, pooler

    groups = method.param_groups(model, Strategy({"v": 4.0}), 1e-3, 0.1)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    v_bias = {n for n in biases if "attention.self.value" in n}
    assert len(v_bias) == 2 and all(scale[n] == 4.0 for n in v_bias)
    assert all(s == 1.0 for n, s in scale.items() if n not in v_bias)

    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".weight")
               and not n.startswith(heads)}
    bias0 = {n: model.get_parameter(n).detach().clone() for n in biases}
    steps(method, model)
    assert all(torch.equal(model.get_parameter(n), w) for n, w in weights.items())  # no weight moved
    assert all(not torch.equal(model.get_parameter(n), b) for n, b in bias0.items())  # every bias did
    assert method.merge(model) is model
    if targets == "qv":
        check_export_reload("bitfit", method, model, tiny_bert, tmp_path, ctx)


def test_bitfit_refuses_llama_whose_projections_have_no_bias(tiny_llama):
    from efficientft.train import prepare
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError) as e:
        prepare(tiny_config(tiny_llama, method="bitfit", method_args={}, targets="qv"))
    assert str(e.value) == ("method 'bitfit' trains bias terms only, and the targeted modules "
                            "model.layers.*.self_attn.q_proj, model.layers.*.self_attn.v_proj have none, so nothing "
                            "would train; choose targets with biases or another method.")
    with pytest.raises(ConfigError, match="^method 'bitfit' trains bias terms only, and this model has none"):
        prepare(tiny_config(tiny_llama, method="bitfit", method_args={}, targets="all"))


# ------------------------------------------------------------------------------------------------------------- SSF
@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_ssf_starts_near_identity_counts_two_per_output_feature_merges_and_reloads(family, tiny_bert, tiny_llama,
                                                                               tiny_gpt2, tmp_path):
    model_dir = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    before = logits(fresh(model_dir))
    method, model, ctx = prepared("ssf", model_dir)
    torch.testing.assert_close(logits(model), before, atol=0.1, rtol=0)  # γ ~ N(1, 0.02²), β ~ N(0, 0.02²)
    rows = {"bert": 32 + 32, "llama": 32 + 16, "gpt2": 32 + 32}[family]  # q + v outputs (LLaMA: 2 KV heads of 8)
    assert method.trainable_parameters(model) == 2 * 2 * rows + head_numel(model)  # 2 layers, γ and β

    groups = method.param_groups(model, Strategy({"v": 4.0}), 1e-3, 0.1)
    for g in groups:
        for n in g["names"]:
            ssf = ".ssf." in n
            v = ssf and (".value." in n or ".v_proj." in n or ".ssf.v." in n)
            assert g["lr_scale"] == (4.0 if v else 1.0) and (g["weight_decay"] == 0.0) == (ssf or "bias" in n), n
    steps(method, model)
    trained = logits(model)
    assert not torch.allclose(trained, before)
    if family == "gpt2":  # K's rows of c_attn are untouched
        assert set(model.transformer.h[0].attn.c_attn.ssf) == {"q", "v"}
    check_export_reload("ssf", method, model, model_dir, tmp_path, ctx)

    merged = method.merge(model)  # W' = diag(γ) W, b' = γ ⊙ b + β
    assert not any(".ssf." in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged), trained, atol=1e-5)


def test_ssf_scales_and_shifts_the_output_features(tiny_bert):
    method, model, _ = prepared("ssf", tiny_bert)
    m = model.bert.encoder.layer[0].attention.self.value
    with torch.no_grad():
        m.ssf["v"].scale.uniform_(0.5, 1.5)
        m.ssf["v"].shift.normal_()
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), m.ssf["v"].scale * m.base(x) + m.ssf["v"].shift)


# ------------------------------------------------------------------------------------------------------- Compacter
@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_compacter_is_a_kronecker_sum_with_one_shared_a_and_counts_exactly(family, tiny_bert, tiny_llama, tiny_gpt2,
                                                                         tmp_path):
    from efficientft.methods.compacter import PHMLinear

    model_dir = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    before = logits(fresh(model_dir))
    method, model, ctx = prepared("compacter", model_dir, {"phm_dim": 4, "phm_rank": 2})
    torch.testing.assert_close(logits(model), before, atol=1e-4, rtol=0)  # A at std 1e-4: next to the base model

    phm = [m for m in model.modules() if isinstance(m, PHMLinear)]
    assert len(phm) == 2 * 2  # down and up, in each of 2 layers (after the FFN only)
    assert len({id(m.rule.A) for m in phm}) == 1  # the slow weights A_i: one tensor for every layer
    assert len([k for k in model.state_dict() if k.endswith(".A")]) == 1  # saved once
    d, m, n, r = 32, 4, 4, 2  # m = 32 // 32 = 1, rounded up to a multiple of n
    norms = {"bert": 2 * 2 * 2 * d + 2 * d, "llama": 2 * 2 * d + d, "gpt2": 2 * 2 * 2 * d + 2 * d}[family]
    want = n ** 3 + 2 * (2 * r * (d + m) + m + d) + norms + head_numel(model)  # every norm trains (final/embedding)
    assert method.trainable_parameters(model) == want

    steps(method, model)
    assert not torch.allclose(logits(model), before)
    for layer in phm:  # W = Σ_i A_i ⊗ s_i t_iᵀ (Eq. 3, 5), after training too
        kron = sum(torch.kron(layer.rule.A[i], layer.s[i] @ layer.t[i]) for i in range(n))
        assert torch.allclose(layer.weight(), kron, atol=1e-7)
    assert not torch.equal(phm[0].s, torch.zeros_like(phm[0].s))
    check_export_reload("compacter", method, model, model_dir, tmp_path, ctx)


def test_compacter_refuses_a_bottleneck_that_phm_dim_does_not_divide(tiny_bert):
    from efficientft.train import prepare
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError) as e:
        prepare(tiny_config(tiny_bert, method="compacter", method_args={"bottleneck": 6}))
    assert str(e.value) == "method 'compacter': bottleneck 6 must be a multiple of phm_dim 4."


def test_bitfit_refuses_part_of_a_fused_bias_but_trains_every_bias_of_gpt2(tiny_gpt2):
    from efficientft.train import prepare
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError) as e:
        prepare(tiny_config(tiny_gpt2, method="bitfit", method_args={}, targets="qv"))
    assert str(e.value).startswith("method 'bitfit' cannot adapt part of a fused projection "
                                   "(transformer.h.0.attn.c_attn, role 'q'), and has no fused implementation here; ")
    p = prepare(tiny_config(tiny_gpt2, method="bitfit", method_args={}, targets="all"))
    assert {n.rpartition(".")[2] for n, q in p.model.named_parameters() if q.requires_grad
            and not n.startswith("score.")} == {"bias"}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_parallel_adapter_beside_attention_too(family, tiny_llama, tiny_gpt2):
    """positions attn,ffn: the attention adapter reads what W_q (GPT-2: the fused c_attn) reads, adds at W_o."""
    from efficientft.methods._adapters import InputTap, ParallelAdapter

    model_dir = {"llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    before = logits(fresh(model_dir))
    method, model, _ = prepared("parallel_adapter", model_dir, {"bottleneck": 4, "positions": "ffn,attn"})
    assert method.args.positions == "attn,ffn"
    assert torch.equal(logits(model), before)
    taps = sorted(n for n, m in model.named_modules() if isinstance(m, InputTap))
    adds = sorted(n for n, m in model.named_modules() if isinstance(m, ParallelAdapter))
    ends = {"llama": ("self_attn.q_proj", "mlp.up_proj", "self_attn.o_proj", "mlp.down_proj"),
            "gpt2": ("attn.c_attn", "mlp.c_fc", "attn.c_proj", "mlp.c_proj")}[family]
    assert sorted(n.split(".", 3)[3] for n in taps) == sorted(list(ends[:2]) * 2)  # 2 layers
    assert sorted(n.split(".", 3)[3] for n in adds) == sorted(list(ends[2:]) * 2)
    assert method.trainable_parameters(model) == 2 * 2 * (2 * 32 * 4 + 4 + 32) + head_numel(model)
    steps(method, model)
    assert not torch.allclose(logits(model), before)
