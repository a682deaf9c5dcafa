"""The benchmarks' own pieces: the floor trains nothing of the backbone yet back-propagates through all of it."""

import argparse
import sys

import torch

from efficientft.train import forward, prepare
from tests.conftest import ROOT, tiny_config

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_floor_freezes_the_backbone_but_gradients_reach_layer_0(tiny_bert):
    from _common import make_floor

    p = make_floor(prepare(tiny_config(tiny_bert, method="full", targets="all", method_args={})))
    trainable = [n for n, q in p.model.named_parameters() if q.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert [n for g in p.groups for n in g["names"]] == trainable
    seen = {}

    def keep(module, args, output):  # the embeddings' output, which enters layer 0
        output.retain_grad()
        seen["embeddings"] = output

    p.model.bert.embeddings.register_forward_hook(keep)
    idx, batch = next(p.batches().indexed())
    forward(p, "train", idx, batch).loss.backward()
    assert seen["embeddings"].grad is not None and torch.count_nonzero(seen["embeddings"].grad) > 0
    assert all(q.grad is None for n, q in p.model.named_parameters() if n not in trainable)


def test_step_time_benchmark_runs_and_reports_ratios(tiny_bert, capsys, monkeypatch):
    import step_time
    from _common import register_references

    from efficientft.methods import METHODS

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the references stay out of other tests
    register_references()
    a = argparse.Namespace(model=str(tiny_bert), batch_size=4, max_length=32, steps=3, repeats=2,
                           precision="fp32", variants="floor,lora,dora,dora-peft")
    out = step_time.bench_task("rte", a)
    assert set(out) == {"floor", "lora", "dora", "dora-peft"}
    assert out["floor"]["x_floor"] == 1.0 and out["lora"]["x_lora"] == 1.0
    assert all(o["steps"] == 2 * 2 and o["median_s"] > 0 for o in out.values())  # 2 timed steps x 2 repeats
    assert out["dora"]["trainable"] == out["dora-peft"]["trainable"] > out["lora"]["trainable"]
    assert "| floor |" in capsys.readouterr().out


def test_scale_benchmark_measures_and_predicts_a_tiny_llama(tmp_path, capsys):
    """The scale benchmark's pieces on a tiny model, in this process (the real run uses a process per mode)."""
    import scale

    from efficientft.memory_model import SIZES, predict

    scale.build("tiny", tmp_path / "tiny")
    rows = [{"size": "tiny", **scale.child(str(tmp_path / "tiny"), mode, 1, 16, 2, 4)}
            for mode in ("fp32", "nf4+ckpt")]
    assert all(r["peak_rss_mb"] > r["runtime_mb"] * 0.5 and r["median_step_s"] > 0 for r in rows)
    assert all(r["memory_p99_mb"] <= r["peak_rss_mb"] + 1 and r["loss"] == r["loss"] for r in rows)
    a = argparse.Namespace(batch=1, seq=16, rank=4, gpu_gb=80.0)
    out = scale.table(rows, a)
    assert "| tiny |" in out and "nf4+ckpt" in out and "largest |error|" in out
    # the formula's terms: 4-bit weights are ~1/8 of fp32's linear weights; checkpointing keeps less
    shape = SIZES["llama-8b"]
    full = predict(shape, "fp32", False, 1, 1024)
    nf4 = predict(shape, "nf4", True, 1, 1024)
    assert nf4.weights < 0.2 * full.weights and nf4.activations < full.activations
    assert 15e9 < shape.params() * 2 < 17e9  # Llama-3-8B: ~8.0 B parameters
    text = scale.predict_table("llama-8b", a)
    assert "| nf4+ckpt |" in text and "fits" in text


def test_memory_model_counts_the_activations_autograd_saves():
    """The formula's activation term against what autograd actually keeps for LoRA q,v on a tiny LLaMA."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from efficientft.memory_model import LlamaShape, predict
    from efficientft.methods import get_method
    from efficientft.methods.base import Context
    from efficientft.models import head_modules, resolve_targets

    shape, seq = LlamaShape(128, 2, 352, 4, 4, vocab=1000), 64
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(**shape.config_kwargs(), pad_token_id=0, num_labels=2))
    method = get_method("lora").from_config({"rank": 4})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model))).train()
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(1, 1000, (1, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1]))
    predicted = predict(shape, "fp32", False, 1, seq, rank=4).activations
    assert abs(sum(saved.values()) / predicted - 1) < 0.1, (sum(saved.values()), predicted)
