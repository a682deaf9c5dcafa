"""Model FLOPs, device peaks and MFU (efficientft.flops), the memory model's prediction in every run's record, and the
surfaces that show speed: ``eft show``, ``eft runs --json``, the report's cost table and ``eft export``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from efficientft import flops
from tests.conftest import tiny_config


def _tiny_llama(**kw) -> nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=2, **kw)
    return LlamaForSequenceClassification(cfg)


# tiny LLaMA: per layer q 32·32 + k 32·16 + v 32·16 + o 32·32 + gate/up/down 3·32·64 + 2 norms 2·32 = 9280;
# 2 layers + final norm 32 + head 32·2 = 18656 matmul parameters (the 100×32 embedding table is a lookup)
N_TINY = 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 32 + 64


def test_full_training_is_6n_per_token_plus_palms_attention_term():
    model = _tiny_llama()
    shape = flops.flop_shape(model)
    assert (shape.frozen, shape.trainable, shape.layers, shape.attn_width) == (0, N_TINY, 2, 32)
    # 10 tokens in 2 examples of 6 and 4 tokens: 6·N·10 + 12·L·d·(6² + 4²)
    assert shape.flops(10, 36 + 16) == 6 * N_TINY * 10 + 12 * 2 * 32 * 52 == 1_159_296


def test_adapter_accounting_counts_no_weight_gradient_for_the_frozen_base():
    from efficientft.methods import get_method
    from efficientft.methods.base import Context
    from efficientft.models import head_modules, resolve_targets

    model = _tiny_llama()
    method = get_method("lora").from_config({"rank": 4})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    shape = flops.flop_shape(model)
    lora = 2 * 4 * ((32 + 32) + (32 + 16))  # A and B of W_q and W_v in 2 layers
    assert shape.trainable == lora + 64  # the classification head trains too
    assert shape.frozen == N_TINY - 64
    # forward 2·(N_f + N_t) + activation gradients 2·(N_f + N_t) + weight gradients 2·N_t = 4·N_f + 6·N_t
    assert shape.per_token() == 4 * shape.frozen + 6 * shape.trainable
    assert shape.per_token() < 6 * (shape.frozen + shape.trainable)
    # MeZO: two forwards, no backward: 2 × 2·N, and 2 × 4·L·d per token pair for attention
    assert shape.per_token(forward_passes=2, backward=False) == 4 * (shape.frozen + shape.trainable)
    assert shape.attention(10, forward_passes=2, backward=False) == 8 * 2 * 32 * 10


def test_zeroth_order_methods_declare_their_passes():
    from efficientft.methods import METHODS

    assert (METHODS.get("mezo").capabilities.forward_passes, METHODS.get("mezo").capabilities.backward) == (2, False)
    assert (METHODS.get("lora").capabilities.forward_passes, METHODS.get("lora").capabilities.backward) == (1, True)


def test_a_tied_output_projection_counts_once_and_the_input_table_not_at_all():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    shape = flops.flop_shape(model)
    total = sum(p.numel() for p in model.parameters())  # wte (tied to lm_head) once, wpe once
    assert shape.frozen + shape.trainable == total - 16 * 8  # the position table is a lookup; wte is the head


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H200", "bf16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100 80GB PCIe", "fp32", 19.5), ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.05), ("Tesla T4", "fp16", 65.0), ("NVIDIA A100-SXM4-40GB", "tf32", 156.0)])
def test_gpu_peaks_are_matched_by_name(name, precision, tflops):
    assert flops.gpu_peak(name, precision) == pytest.approx(tflops * 1e12)


def test_an_unknown_gpu_or_precision_has_no_peak():
    assert flops.gpu_peak("NVIDIA GeForce GTX 1080", "bf16") is None
    assert flops.gpu_peak("Tesla V100-SXM2-16GB", "bf16") is None  # V100 has no bf16 tensor cores
    assert flops.utilisation(1e12, None, 1.0) is None


def test_the_cpu_peak_is_probed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFT_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(flops, "probe_cpu_peak", lambda dtype: calls.append(dtype) or 123e9)
    assert flops.cpu_peak("fp32") == (123e9, "probe")
    cached = json.loads((tmp_path / "cpu_peak.json").read_text())
    assert list(cached.values()) == [123e9]
    assert f"threads={torch.get_num_threads()}" in next(iter(cached)) and next(iter(cached)).endswith("fp32")
    peak, source = flops.cpu_peak("fp32")
    assert peak == 123e9 and source.startswith("probe (cached") and len(calls) == 1
    flops.cpu_peak("bf16")  # another dtype is another key: probed
    assert calls == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_probe_is_quick(dtype):
    import time

    t = time.perf_counter()
    peak = flops.probe_cpu_peak(dtype)
    assert peak > 1e8 and time.perf_counter() - t < 2.0


def _run(tmp_path, model, monkeypatch, **kw):
    from efficientft.store import Store
    from efficientft.train import run

    monkeypatch.setenv("EFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(flops, "probe_cpu_peak", lambda dtype: 50e9)
    store = Store(tmp_path / "runs.sqlite")
    return store, run(tiny_config(model, **kw), store)


def test_every_run_records_model_flops_and_mfu(tmp_path, tiny_bert, monkeypatch):
    store, rec = _run(tmp_path, tiny_bert, monkeypatch)
    cost = rec["cost"]
    assert cost["peak_flops"] == 50e9 and cost["peak_flops_source"].startswith("probe: ")
    assert cost["model_flops"] > 6 * 0 and cost["tokens_trained"] > 0
    assert cost["mfu"] == pytest.approx(cost["model_flops"] / (cost["peak_flops"] * cost["step_time_total_s"]))
    assert cost["step_time_total_s"] == pytest.approx(cost["tokens_trained"] / cost["tokens_per_s"])
    # LoRA on a frozen BERT: at least 4·N per token (N less the word, position and type tables), plus attention
    n = cost["base_params"] - 30522 * 32 - 512 * 32 - 2 * 32
    assert cost["model_flops"] > 4 * n * cost["tokens_trained"]
    assert cost["predicted_peak_mb"] is None and "BERT" not in cost["predicted_peak_note"]
    assert cost["predicted_peak_note"].startswith("outside the memory model")


def test_the_memory_model_predicts_a_lora_qv_llama_run_beside_its_measured_peak(tmp_path, tiny_llama, monkeypatch):
    store, rec = _run(tmp_path, tiny_llama, monkeypatch, targets="qv")
    cost = rec["cost"]
    assert cost["predicted_peak_mb"] > cost["rss_start_mb"]  # the runtime baseline plus the model's terms
    assert cost["predicted_peak_residual_mb"] == pytest.approx(cost["peak_memory_mb"] - cost["predicted_peak_mb"])
    assert cost["predicted_peak_error"] == pytest.approx(
        (cost["predicted_peak_mb"] - cost["peak_memory_mb"]) / cost["peak_memory_mb"])


def test_a_run_the_memory_model_cannot_describe_records_none(tmp_path, tiny_llama, monkeypatch):
    store, rec = _run(tmp_path, tiny_llama, monkeypatch, targets="qkv")
    cost = rec["cost"]
    assert rec["status"] == "done" and cost["predicted_peak_mb"] is None
    assert cost["predicted_peak_residual_mb"] is None and "targets 'qkv'" in cost["predicted_peak_note"]


# ---- surfaces ----------------------------------------------------------------------------------------------------


@pytest.fixture
def stored(tmp_path, tiny_bert, monkeypatch):
    store, rec = _run(tmp_path, tiny_bert, monkeypatch)
    return store, rec


def _eft(args, capsys) -> str:
    from efficientft.cli import main

    assert main(args) == 0
    return capsys.readouterr().out


def test_eft_show_has_tokens_per_s_and_mfu(stored, capsys):
    store, rec = stored
    out = json.loads(_eft(["show", rec["run_key"][:10], "--store", str(store.path)], capsys))
    assert out["cost"]["mfu"] == pytest.approx(rec["cost"]["mfu"]) and out["cost"]["tokens_per_s"] > 0


def test_eft_runs_json_has_tokens_per_s_and_mfu(stored, capsys):
    store, rec = stored
    line = json.loads(_eft(["runs", "--json", "--store", str(store.path)], capsys).splitlines()[0])
    assert line["cost"]["mfu"] == pytest.approx(rec["cost"]["mfu"]) and line["cost"]["model_flops"] > 0


def test_the_export_has_tokens_per_s_and_mfu_columns(stored, tmp_path, capsys):
    store, rec = stored
    out = tmp_path / "runs.jsonl"
    _eft(["export", "--out", str(out), "--store", str(store.path)], capsys)
    row = json.loads(out.read_text().splitlines()[0])
    assert row["cost.mfu"] == pytest.approx(rec["cost"]["mfu"]) and row["cost.tokens_per_s"] > 0


def test_the_report_cost_table_shows_tokens_per_s_and_mfu(stored):
    from efficientft.report.collect import collect
    from efficientft.report.cost import cost_rows
    from efficientft.report.tables import COST_HEADERS, md_costs

    store, rec = stored
    rows = cost_rows(collect(store))
    assert "Tokens/s" in COST_HEADERS and "MFU (%)" in COST_HEADERS
    assert rows[0].tokens_per_s == pytest.approx(rec["cost"]["tokens_per_s"])
    assert rows[0].mfu == pytest.approx(rec["cost"]["mfu"])
    line = md_costs(rows).splitlines()[2]
    assert f"{100 * rec['cost']['mfu']:,.1f}" in line and f"{rec['cost']['tokens_per_s']:,.0f}" in line


def test_the_report_csv_table_has_tokens_per_s_and_mfu(stored):
    import csv
    import io

    from efficientft.report.build import build
    from efficientft.report.tables import csv_table

    store, rec = stored
    rep = build(store)
    rows = list(csv.DictReader(io.StringIO(csv_table(rep.table, rep.collection))))
    assert float(rows[0]["mfu"]) == pytest.approx(rec["cost"]["mfu"], rel=1e-3)
    assert float(rows[0]["tokens_per_s"]) == pytest.approx(rec["cost"]["tokens_per_s"], rel=1e-3)


def test_a_record_without_mfu_shows_a_dash():
    from efficientft.report.cost import CostRow
    from efficientft.report.tables import cost_cells

    row = CostRow("x", 1, 10, 10, 0.1, 100.0, 1.0, 1.0, tokens_per_s=math.nan, mfu=math.nan)
    assert cost_cells(row)[-2:] == ["–", "–"]
