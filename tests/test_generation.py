"""Batched greedy generation: left-padded batches decode exactly as single prompts, in the caller's order."""

from __future__ import annotations

import pytest
import torch

from efficientft.errors import ConfigError
from efficientft.generation import generate

PROMPTS = [
    "the cat sat on the mat and looked at the dog",
    "hello",
    "one two three",
    "a much longer prompt that has many more words than the others in this small list",
    "red blue",
    "what is the answer to this question",
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=101, eos_token_id=102)
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=0,
                     bos_token_id=101, eos_token_id=102)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return _llama() if request.param == "llama" else _gpt2()


def _single(model, tokenizer, prompt: str, n: int) -> list[int]:
    """The reference: one prompt, no padding at all, plain ``model.generate``."""
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=0,
                             eos_token_id=[102])
    row = out[0, enc["input_ids"].shape[1]:].tolist()
    return row[:row.index(102)] if 102 in row else row


def test_batched_equals_unbatched_token_for_token(model, tokenizer):
    n = 10
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=n, batch_size=4)
    refs = [_single(model, tokenizer, p, n) for p in PROMPTS]
    assert batched.token_ids == refs
    assert batched.texts == [tokenizer.decode(r, skip_special_tokens=True) for r in refs]
    assert batched.new_tokens == sum(min(len(r) + 1, n) for r in refs)  # EOS counts as a generated token
    one = generate(model, tokenizer, PROMPTS, max_new_tokens=n, batch_size=1)
    assert one.token_ids == batched.token_ids


def test_order_preserved_and_padding_side_restored(model, tokenizer):
    tokenizer.padding_side = "right"
    fwd = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    rev = generate(model, tokenizer, PROMPTS[::-1], max_new_tokens=6, batch_size=3)
    assert rev.texts == fwd.texts[::-1]
    assert tokenizer.padding_side == "right"
    assert len({t for t in fwd.texts}) > 1  # the prompts really get different continuations
    assert fwd.seconds > 0 and fwd.new_tokens > 0


def test_stop_string_cuts(model, tokenizer):
    full = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=10).texts
    words = full[0].split()
    assert len(words) >= 3
    stop = words[2]
    cut = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=10, stop=[stop]).texts
    assert cut[0] == full[0][:full[0].find(stop)]
    assert stop not in cut[0]
    for f, c in zip(full, cut, strict=True):
        assert f.startswith(c)


def test_eos_stops(model, tokenizer):
    first = _single(model, tokenizer, PROMPTS[1], 1)[0]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = first  # the token it emits first now ends the sequence
    try:
        res = generate(model, tokenizer, [PROMPTS[1]], max_new_tokens=10)
    finally:
        model.generation_config.eos_token_id = saved
    assert res.texts == [""]
    assert res.new_tokens == 1
    import copy

    tok = copy.deepcopy(tokenizer)  # the tokenizer's EOS (the one fine-tuning appends) ends a sequence too
    tok.eos_token = tok.convert_ids_to_tokens(first)
    res = generate(model, tok, [PROMPTS[1]], max_new_tokens=10)
    assert res.token_ids == [[]] and res.new_tokens == 1


def test_a_tokenizer_without_pad_token_pads_with_eos_and_is_restored(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    model = _llama()
    ref = generate(model, tok, PROMPTS[:3], max_new_tokens=4, batch_size=3)
    tok.pad_token, tok.eos_token = None, "[SEP]"
    got = generate(model, tok, PROMPTS[:3], max_new_tokens=4, batch_size=3)
    assert tok.pad_token is None and tok.padding_side == tokenizer.padding_side
    assert got.token_ids == ref.token_ids  # the pad id differs, the masked-out padding changes nothing
    tok.eos_token = None
    with pytest.raises(ConfigError, match="neither a pad nor an EOS token"):
        generate(model, tok, PROMPTS[:3], max_new_tokens=4)
    assert generate(model, tok, [], max_new_tokens=4).texts == []


def test_add_special_tokens_is_passed_to_the_tokenizer(tokenizer):
    model = _llama()
    plain = generate(model, tokenizer, ["[CLS] red blue [SEP]"], max_new_tokens=3, add_special_tokens=False)
    default = generate(model, tokenizer, ["red blue"], max_new_tokens=3)
    assert plain.token_ids == default.token_ids  # the same ids: [CLS] red blue [SEP], written out or added


def test_bad_arguments(tokenizer):
    model = _llama()
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        generate(model, tokenizer, ["x"], max_new_tokens=0)
    with pytest.raises(ConfigError, match="batch size must be at least 1"):
        generate(model, tokenizer, ["x"], max_new_tokens=2, batch_size=0)
