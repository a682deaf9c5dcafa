"""The generation kind: supervised fine-tuning of a causal LM, judged by what it generates.

Training (as LLM-Adapters' ``finetune.py`` and Alpaca do): the prompt is the task's template filled with the
instruction (and input); the target is the response with EOS appended; the loss covers the response only unless
``train_on_inputs`` (the prompt positions carry label -100). Sequences longer than ``max_length`` (the cutoff) are
cut from the right and counted; an example left with no target token is dropped and counted (it would add 0/0 to
the loss). The loss is a mean over target tokens, and accumulation weights micro-batches by their target tokens
(:meth:`GenerationKind.batch_weight`), so a step's gradient is that of the mean over all its target tokens.

Evaluation: batched greedy decoding (:func:`efficientft.generation.generate`), the task's answer filter on each
continuation (:mod:`.answers`), exact match per evaluation set, the average over a suite's sets, and every
prediction kept for the store. The forgetting score is the LM loss on held-out text before and after training
(PEFT's ``method_comparison`` reports the same idea): the user's ``forgetting_file``, else a slice of the task's
own held-out data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..data import Encoded
from ..errors import ConfigError
from ..textfile import read_text
from .kinds import TaskKind

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..train import Prepared
    from .base import Task

IGNORE = -100  # the label of a position the loss skips (Hugging Face's ignore_index)
FORGETTING_EXAMPLES = 32  # the default held-out slice: this many examples of the task's first evaluation set


@dataclass
class SFTEncoded(Encoded):
    """One split of a generation task: token ids and per-token labels (training), or prompts to generate from.

    ``targets[i]`` are example i's labels (-100 where no loss is taken); ``prompts``/``gold`` feed generation;
    ``filter``/``max_new_tokens`` are the evaluation protocol of the split.
    """

    targets: list[np.ndarray] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    example_ids: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    gold: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # the reference responses (the default forgetting text)
    filter: str = "text"
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    add_special_tokens: bool = True  # how the prompts are tokenised (False: a chat template's text holds them)

    def collate(self, idx: list[int] | np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded ids, attention mask and labels (-100 on padding)."""
        longest = max(len(self.ids[i]) for i in idx)
        ids = np.full((len(idx), longest), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), longest), dtype=np.int64)
        labels = np.full((len(idx), longest), IGNORE, dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(self.ids[i])
            ids[row, :n], mask[row, :n], labels[row, :n] = self.ids[i], 1, self.targets[i]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels)}


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no EOS token; a generation task appends EOS to "
                          "every target so the model learns to stop.")
    return int(tokenizer.eos_token_id)


def prompt_ids(tokenizer: Any, prompt: str, template: str) -> list[int]:
    """The prompt's ids exactly as generation tokenises it: with the tokenizer's special tokens (BOS), except for
    a chat template, whose rendered text holds them already."""
    from .templates import get_template

    return list(tokenizer(prompt, add_special_tokens=get_template(template).add_special_tokens)["input_ids"])


def encode_sft(rows: list, tokenizer: Any, template: str, max_length: int, train_on_inputs: bool) -> SFTEncoded:
    """Token ids and labels of instruction examples: prompt + response + EOS, the loss on the response only
    unless ``train_on_inputs``, cut at ``max_length`` (cut and dropped examples counted in ``stats``)."""
    from .templates import render_prompt

    eos = eos_id(tokenizer)
    ids, targets, kept = [], [], []
    truncated = dropped = 0
    for i, ex in enumerate(rows):
        p = prompt_ids(tokenizer, render_prompt(template, ex.instruction, ex.input, tokenizer), template)
        r = list(tokenizer(ex.output, add_special_tokens=False)["input_ids"]) + [eos]
        seq = p + r
        if len(seq) > max_length:
            truncated += 1
            seq = seq[:max_length]
        lab = np.asarray(seq, dtype=np.int64)
        if not train_on_inputs:
            lab[: len(p)] = IGNORE
        if not (lab[1:] != IGNORE).any():  # nothing left to learn: the cutoff took the whole response
            dropped += 1
            continue
        ids.append(np.asarray(seq, dtype=np.int32))
        targets.append(lab)
        kept.append(i)
    stats = {"examples": len(rows), "truncated": truncated, "dropped_no_target": dropped, "cutoff_len": max_length}
    return SFTEncoded(ids, None, np.asarray(kept, dtype=np.int64), stats, targets)


def encode_prompts(rows: list, tokenizer: Any, template: str, spec: tuple[str, int, tuple[str, ...]]) -> SFTEncoded:
    """An evaluation split: the rendered prompts, their gold answers and the split's protocol."""
    from .templates import get_template, render_prompt

    prompts = [render_prompt(template, ex.instruction, ex.input, tokenizer) for ex in rows]
    ids = [np.asarray(prompt_ids(tokenizer, q, template), dtype=np.int32) for q in prompts]
    filt, max_new, stop = spec
    return SFTEncoded(ids, None, np.arange(len(rows)), {}, [], prompts, [ex.id for ex in rows],
                      [_question(ex) for ex in rows], [ex.answer if ex.answer is not None else ex.output for ex in rows],
                      [ex.output for ex in rows], filt, max_new, tuple(stop), get_template(template).add_special_tokens)


def _question(ex: Any) -> str:
    return ex.instruction if not ex.input else f"{ex.instruction}\n{ex.input}"


class GenerationKind(TaskKind):
    """Causal LMs trained on instructions and scored on what they generate."""

    name = "generation"
    peft_task_type = "CAUSAL_LM"
    supports_feature_cache = False
    no_feature_cache_reason = ("its evaluation decodes with the KV cache, which runs every layer on each new token "
                               "(cached features of the prompt cannot serve it)")
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"lm_loss", "increase", "lm_loss_before"})

    def model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def configure_tokenizer(self, tokenizer: Any) -> None:
        if tokenizer.eos_token is None and getattr(tokenizer, "sep_token", None) is not None:
            tokenizer.eos_token = tokenizer.sep_token  # a BERT-style vocabulary: [SEP] ends a text
        eos_id(tokenizer)

    def check_method(self, method: Any) -> None:
        if not method.capabilities.generation:
            raise ConfigError(f"method {method.name!r} does not train generation tasks (its capabilities declare "
                              "generation: False); choose another method (see `eft methods`).")

    def heads(self, model: nn.Module) -> list[str]:
        """None: a causal LM's ``lm_head`` is part of the model (on GPT-2 it *is* the input embeddings)."""
        return []

    def resolve(self, cfg: RunConfig, task: Task) -> dict[str, Any]:
        from .templates import get_template

        template = cfg.template or task.default_template
        get_template(template)  # an unknown name: one line with a did-you-mean
        if cfg.train_data is not None and not task.takes_train_data:
            raise ConfigError(f"train_data: task {task.name!r} trains on its own training split; --train-data is for "
                              "the suites (gsm8k, math, commonsense).")
        return {"template": template}

    def encode(self, task: Task, examples: Any, tokenizer: Any, cfg: RunConfig, model: nn.Module,
               split: str) -> Encoded:
        template = cfg.template or task.default_template
        if split == "train":
            enc = encode_sft(examples.rows, tokenizer, template, cfg.max_length, cfg.train_on_inputs)
            if len(enc) == 0:
                from .templates import render_prompt

                longest = max(len(prompt_ids(tokenizer, render_prompt(template, ex.instruction, ex.input, tokenizer),
                                             template)) for ex in examples.rows[:200])
                raise ConfigError(f"max_length {cfg.max_length} leaves no response token in any training example "
                                  f"(prompts are up to {longest} tokens); give --max-length {longest + 64} or more.")
            return enc
        return encode_prompts(examples.rows, tokenizer, template, task.eval_spec(split))

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """Target tokens: the positions the causal LM loss counts (labels shifted by one, -100 skipped)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    @torch.no_grad()
    def evaluate(self, p: Prepared, split: str) -> dict[str, float]:
        from ..generation import generate
        from .answers import extract, is_correct

        enc: SFTEncoded = p.evals[split]  # type: ignore[assignment]
        was_training = p.model.training
        p.model.eval()
        with p.runtime.autocast():
            out = generate(p.model, p.tokenizer, enc.prompts, p.cfg.max_new_tokens or enc.max_new_tokens, enc.stop,
                           batch_size=p.cfg.eval_batch_size, device=p.device,
                           add_special_tokens=enc.add_special_tokens)
        p.model.train(was_training)
        rows = []
        for i, text in enumerate(out.texts):
            pred = extract(enc.filter, text)
            rows.append({"id": enc.example_ids[i], "question": enc.questions[i], "generated": text,
                         "extracted": pred, "gold": enc.gold[i], "correct": bool(is_correct(enc.filter, pred,
                                                                                          enc.gold[i]))})
        p.predictions[split] = rows
        p.eval_cost["generation_s"] = p.eval_cost.get("generation_s", 0.0) + out.seconds
        p.eval_cost["generated_tokens"] = p.eval_cost.get("generated_tokens", 0) + out.new_tokens
        return {"exact_match": float(np.mean([r["correct"] for r in rows])) if rows else float("nan")}

    def summarise(self, p: Prepared, scores: dict[str, float]) -> dict[str, float]:
        """A suite's average over its evaluation sets (as ``dev/exact_match``), and the forgetting score."""
        out: dict[str, float] = {}
        sets = [s for s in p.task.eval_splits if f"{s}/exact_match" in scores and not p.task.sets[s].extra]
        if "dev" not in p.task.eval_splits and sets:
            out["dev/exact_match"] = float(np.mean([scores[f"{s}/exact_match"] for s in sets]))
        before = p.info.get("forgetting", {}).get("lm_loss_before")
        if before is not None:
            after = lm_loss(p, p.kind_state["forgetting_batches"])
            out.update({"forgetting/lm_loss": after, "forgetting/lm_loss_before": before,
                        "forgetting/increase": after - before})
        return out

    def before_training(self, p: Prepared) -> None:
        texts, source = forgetting_texts(p)
        enc = [np.asarray(tokenizer_ids(p.tokenizer, t)[: p.cfg.max_length], dtype=np.int64) for t in texts]
        enc = [e for e in enc if len(e) > 1]
        if not enc:
            return
        batches = []
        for i in range(0, len(enc), p.cfg.eval_batch_size):
            chunk = enc[i: i + p.cfg.eval_batch_size]
            sft = SFTEncoded([e.astype(np.int32) for e in chunk], None, np.arange(len(chunk)), {}, list(chunk))
            batches.append(sft.collate(list(range(len(chunk))), p.info["pad_id"]))
        p.kind_state["forgetting_batches"] = batches
        p.info["forgetting"] = {"source": source, "texts": len(enc), "lm_loss_before": lm_loss(p, batches)}


def tokenizer_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


@torch.no_grad()
def lm_loss(p: Prepared, batches: list[dict[str, torch.Tensor]]) -> float:
    """The mean next-token cross-entropy over every target token of ``batches``, from the logits: a method's own
    additions to the training loss (AdaLoRA's orthogonality regulariser) are not part of a language model's loss."""
    model = p.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        b = {k: v.to(p.device) for k, v in b.items()}
        with p.runtime.autocast():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        # the text's own positions are the last ones: a prompt-type method (prompt tuning, P-tuning) puts its
        # virtual tokens before them, and the logits have as many more positions
        logits = logits[:, logits.shape[1] - b["labels"].shape[1]:]
        total += float(nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(),
                                                   ignore_index=IGNORE, reduction="sum"))
        count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / count if count else float("nan")


def forgetting_texts(p: Prepared) -> tuple[list[str], str]:
    """The held-out text of the forgetting score: the user's file, else prompt + response of the first
    :data:`FORGETTING_EXAMPLES` examples of the task's first evaluation set."""
    path = p.cfg.forgetting_file
    if path:
        return read_text_file(Path(path)), str(path)
    split = p.task.eval_splits[0]
    enc: SFTEncoded = p.evals[split]  # type: ignore[assignment]
    rows = [q + o for q, o in zip(enc.prompts, enc.outputs, strict=True)]
    return rows[:FORGETTING_EXAMPLES], f"{split}[:{FORGETTING_EXAMPLES}]"


def read_text_file(path: Path) -> list[str]:
    """Held-out text: a .txt file (one text per non-empty line) or JSON lines / a JSON array with ``text``."""
    if not path.is_file():
        raise ConfigError(f"forgetting_file {str(path)!r} does not exist.")
    raw = read_text(path, "forgetting_file")  # not UTF-8 or binary: one line naming the byte offset
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            rows = json.loads(raw) if path.suffix.lower() == ".json" else [json.loads(x) for x in raw.splitlines()
                                                                            if x.strip()]
            texts = [r if isinstance(r, str) else r["text"] for r in rows]
        except (ValueError, TypeError, KeyError):
            raise ConfigError(f"{path}: a forgetting file in JSON holds strings or objects with a 'text' key.") from None
    else:
        texts = [line for line in raw.splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"forgetting_file {str(path)!r} holds no text.")
    return texts


GENERATION = GenerationKind()
