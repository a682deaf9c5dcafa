"""The generation benchmark runs on a tiny model and both ways of decoding agree."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_generation_benchmark_compares_batched_with_per_example(minilm_dir):
    import generation
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = generation.build(32, 1, len(tokenizer))
    prompts = generation.gsm8k_prompts(5)
    assert prompts[0].startswith("Below is an instruction") and "Janet" in prompts[0]
    out = generation.compare(model, tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert out["same_texts"] == out["n"] == 5
    assert out["per-example"]["new_tokens"] == out["batched (batch 2)"]["new_tokens"] > 0
    assert out["ratio"] > 0 and out["cpu_ratio"] > 0 and out["batched (batch 2)"]["examples_s"] > 0
