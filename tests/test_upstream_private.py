"""Private names of upstream packages that this code still relies on, each pinned: where one disappears or changes
meaning in a new release, the test says which upstream change broke which of our features, instead of a run
failing later (or, worse, silently computing something else).

Replaced by public APIs (nothing to pin): ``PretrainedConfig._name_or_path`` (its public ``name_or_path`` setter),
``ProcessPoolExecutor._processes`` (the workers are recorded through the documented ``mp_context``; pinned below
is that the pool does launch them through it).
"""

import os

import pytest
import torch
import torch.nn as nn


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return self.lin(x)


def _fast_lora_model():
    from peft import LoraConfig, get_peft_model

    from efficientft.lowrank import use_fast_lora

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["lin"], init_lora_weights=False)
    use_fast_lora(config)
    model = get_peft_model(_Net(), config)
    return model, model.base_model.model.lin


def test_peft_still_routes_a_registered_custom_lora_layer_through_its_forward(monkeypatch):
    """``LoraConfig._register_custom_module`` (PEFT's experimental custom-layer API) puts our fast LoRA forward
    (efficientft.lowrank.FastLoraLinear) under every ``nn.Linear`` target of the lora method."""
    from peft import LoraConfig

    import efficientft.lowrank as lowrank

    assert hasattr(LoraConfig, "_register_custom_module"), (
        "PEFT removed LoraConfig._register_custom_module: efficientft.lowrank.use_fast_lora can no longer put its "
        "fast LoRA forward under PEFT's LoRA layers; port it to PEFT's replacement custom-layer API.")
    model, layer = _fast_lora_model()
    assert type(layer) is lowrank.fast_lora_class(), (
        f"PEFT built {type(layer).__name__} for a target registered with _register_custom_module, not our "
        "FastLoraLinear: the custom-layer mapping changed meaning upstream.")
    calls = []
    real = lowrank.lowrank_add
    monkeypatch.setattr(lowrank, "lowrank_add", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, 6)
    out = model(x)
    assert calls == [1], "PEFT no longer calls the registered layer's forward"
    a, b, base = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.base_layer
    torch.testing.assert_close(out, base(x) + 2.0 * x @ a.T @ b.T)


def test_peft_lora_layers_still_cast_their_input_through_cast_input_dtype():
    """``LoraLayer._cast_input_dtype`` (private): FastLoraLinear casts its input as PEFT's own LoRA forward does, so
    that ``peft.helpers.disable_input_dtype_casting`` applies to ours too."""
    from peft.helpers import disable_input_dtype_casting
    from peft.tuners.lora.layer import LoraLayer

    assert hasattr(LoraLayer, "_cast_input_dtype"), (
        "PEFT removed LoraLayer._cast_input_dtype: efficientft.lowrank.FastLoraLinear.forward calls it to cast its "
        "input as PEFT's LoRA forward does; follow PEFT's forward again.")
    model, layer = _fast_lora_model()
    x = torch.randn(3, 6, dtype=torch.float64)
    assert layer._cast_input_dtype(x, torch.float32).dtype == torch.float32
    with disable_input_dtype_casting(model):
        assert layer._cast_input_dtype(x, torch.float32).dtype == torch.float64, (
            "LoraLayer._cast_input_dtype no longer honours disable_input_dtype_casting")


def test_transformers_models_still_name_their_blocks_in_no_split_modules():
    """``PreTrainedModel._no_split_modules`` (private, read by accelerate's wrap policy too): FSDP shards each block
    it names (efficientft.sharding.blocks); without it a sharded run shards only the root (no memory saved)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from efficientft.sharding import blocks

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    assert getattr(model, "_no_split_modules", None), (
        "transformers no longer lists a model's blocks in _no_split_modules: efficientft.sharding.blocks finds "
        "nothing to shard block by block.")
    assert [type(m).__name__ for m in blocks(model)] == ["LlamaDecoderLayer"] * 3


def test_torch_tensors_still_count_their_in_place_changes_in_version():
    """``Tensor._version`` (private): DoRA's cache of weight norms is keyed on it (efficientft.methods.dora); a
    counter that stopped moving on in-place updates would serve stale norms after each optimizer step."""
    t = torch.zeros(3)
    before = t._version
    t.add_(1.0)
    with torch.no_grad():
        t.mul_(2.0)
    assert t._version == before + 2, "torch's Tensor._version no longer counts in-place changes"


def test_a_process_pool_launches_its_workers_through_the_context_it_is_given():
    """The documented ``mp_context`` is how the sweep's LocalPool records its workers (to signal them on abort)
    instead of reading ``ProcessPoolExecutor._processes``."""
    from concurrent.futures import ProcessPoolExecutor

    from efficientft.sweep.executors import SpawnRecorder

    spawn = SpawnRecorder()
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        pid = pool.submit(os.getpid).result(timeout=120)
        assert [p.pid for p in spawn.processes] == [pid], (
            "ProcessPoolExecutor no longer starts its workers with mp_context.Process: LocalPool.close(abort=True) "
            "would not find the workers to stop.")


@pytest.mark.parametrize("name", ["_parameters", "_buffers"])
def test_torch_modules_still_hold_their_tensors_in_parameters_and_buffers(name):
    """``nn.Module._parameters`` / ``_buffers`` (private): models.large.own_full_precision_tensors replaces a
    quantized model's memory-mapped tensors in place through them."""
    m = nn.BatchNorm1d(3)
    held = getattr(m, name)
    assert isinstance(held, dict) and held, f"torch's nn.Module.{name} is gone or empty"
    key = next(iter(held))
    assert getattr(m, key) is held[key]
