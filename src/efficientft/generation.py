"""Batched greedy generation: the cost of evaluating a generative task.

Generating one example at a time leaves a CPU or GPU mostly idle, so prompts are decoded in batches with the KV
cache. A causal LM continues the *last* position of each row, so prompts are padded on the left (with the
attention mask telling the model which positions are padding, and ``generate`` deriving position ids from it);
batches are formed from prompts sorted by length so that little compute goes to padding, and the results are
returned in the caller's order. Decoding is greedy (``do_sample=False``, one beam): the published protocols we
compare with score greedy outputs, and greedy is deterministic.

Left-padded batched decoding gives the same tokens as decoding each prompt alone (tests/test_generation.py checks
it token for token in fp32 on tiny LLaMA and GPT-2 models).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .errors import ConfigError


@dataclass
class GenerationResult:
    """Generated continuations (prompt excluded, cut at EOS or the first stop string) in input order, the number
    of tokens generated (up to each row's end, EOS included) and the wall time. ``token_ids`` are each row's
    generated ids before EOS (for audits and exact comparisons)."""

    texts: list[str]
    new_tokens: int
    seconds: float
    token_ids: list[list[int]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return len(self.texts) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


class _StopStrings(StoppingCriteria):
    """Marks a row finished once its generated text contains a stop string (``generate`` then pads that row
    while the others go on), so a batch ends when every row has stopped, not after max_new_tokens."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_len: int) -> None:
        self.tokenizer, self.stop, self.prompt_len = tokenizer, tuple(stop), prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a sequence: the model's generation config may list several (Llama 3), and the
    tokenizer's EOS is the one fine-tuning appends to every target, so it ends a sequence too."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))


def _cut(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest stop string (the stop string itself excluded)."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(ends)] if ends else text


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a model without parameters: nothing to place
        return torch.device("cpu")


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, stop: Sequence[str] = (),
             batch_size: int = 32, device: Any = None, add_special_tokens: bool = True,
             max_prompt_tokens: int | None = None) -> GenerationResult:
    """Greedy continuations of ``prompts`` in batches of ``batch_size`` (left padding, KV cache).

    Each text is the continuation only, decoded without special tokens and cut at EOS or at the first stop
    string. ``add_special_tokens`` is passed to the tokenizer (False for prompts rendered by a chat template,
    which already hold BOS). ``max_prompt_tokens``: longer prompts are cut from the left (their end, which the
    answer continues, stays), so that prompt and answer fit the model's positions. The tokenizer's padding and
    truncation sides (and pad token, which falls back to EOS when it has none) and the model's train/eval mode are
    restored afterwards.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if batch_size < 1:
        raise ConfigError(f"the generation batch size must be at least 1, got {batch_size}.")
    if not prompts:
        return GenerationResult([], 0, 0.0, [])
    device = torch.device(device) if device is not None else _device_of(model)
    eos = _eos_ids(model, tokenizer)
    stop = tuple(s for s in stop if s)
    saved_side, saved_pad, saved_cut = tokenizer.padding_side, tokenizer.pad_token, tokenizer.truncation_side
    was_training = model.training
    texts: list[str] = [""] * len(prompts)
    ids: list[list[int]] = [[] for _ in prompts]
    new_tokens = 0
    start = time.perf_counter()
    try:
        tokenizer.padding_side = tokenizer.truncation_side = "left"
        cut = {"truncation": True, "max_length": max_prompt_tokens} if max_prompt_tokens is not None else {}
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError("the tokenizer has neither a pad nor an EOS token; batched generation needs one "
                                  "to pad prompts.")
            tokenizer.pad_token = tokenizer.eos_token
        pad_id = tokenizer.pad_token_id
        model.eval()
        lengths = [len(r) for r in tokenizer(prompts, add_special_tokens=add_special_tokens, **cut)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens, **cut)
            enc = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}  # no BERT token_type_ids
            width = enc["input_ids"].shape[1]
            criteria = StoppingCriteriaList([_StopStrings(tokenizer, stop, width)]) if stop else None
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=pad_id, eos_token_id=eos or None, stopping_criteria=criteria,
                                     temperature=None, top_p=None, top_k=None)
            for row, i in zip(out[:, width:].tolist(), idx, strict=True):
                end = next((k for k, t in enumerate(row) if t in eos), None)
                kept = row if end is None else row[:end]
                while end is None and kept and kept[-1] == pad_id:  # a row stopped by a stop string is padded
                    kept = kept[:-1]
                new_tokens += len(kept) + (end is not None)
                ids[i] = kept
                texts[i] = _cut(tokenizer.decode(kept, skip_special_tokens=True), stop)
    finally:
        tokenizer.padding_side, tokenizer.pad_token, tokenizer.truncation_side = saved_side, saved_pad, saved_cut
        model.train(was_training)
    return GenerationResult(texts, new_tokens, time.perf_counter() - start, ids)


__all__ = ["GenerationResult", "generate"]
