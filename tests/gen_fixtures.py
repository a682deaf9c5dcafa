"""Tiny randomly initialised causal LMs (LLaMA, GPT-2) saved with the bundled MiniLM tokenizer, for the generation
tests. Import the fixtures into a test module by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def save_causal(path: Path, arch: str, minilm: Path, hidden: int = 32, layers: int = 2, dropout: float = 0.0) -> Path:
    """A tiny causal LM of ``arch`` (llama | gpt2) with MiniLM's WordPiece vocabulary ([SEP] serves as EOS)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=30522, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
            bos_token_id=101, eos_token_id=102))
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=30522, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, pad_token_id=0,
            bos_token_id=101, eos_token_id=102, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout))
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def causal_llama(tmp_path_factory, minilm_dir) -> Path:
    return save_causal(tmp_path_factory.mktemp("causal-llama"), "llama", minilm_dir)


@pytest.fixture(scope="session")
def causal_gpt2(tmp_path_factory, minilm_dir) -> Path:
    return save_causal(tmp_path_factory.mktemp("causal-gpt2"), "gpt2", minilm_dir)


def gen_config(model: Path, task: str = "synthetic-reverse", **kw):
    """A run of a few steps on a small subset of a generation task: seconds on a CPU."""
    from efficientft.config import RunConfig
    from efficientft.methods import get_method

    # the method's own small arguments for a tiny LLaMA (the conformance matrix's hook; None: it refuses LLaMA)
    args = get_method(kw.get("method", "lora")).test_args("llama")
    base = dict(task=task, model=str(model), steps=3, batch_size=4, max_train=16, max_eval=4, max_length=64,
                lr=1e-3, progress=False, max_new_tokens=4, method_args=args or {})
    base.update(kw)
    return RunConfig(**base)
