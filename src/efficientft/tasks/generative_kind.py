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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from ..data import Encoded
from ..errors import ConfigError
from ..textfile import describe, read_text, text_field
from .kinds import TaskKind

if TYPE_CHECKING:
    from ..config import RunConfig
    from .context import Baseline, EvalContext, Evaluation, GenerativeTaskView

IGNORE = -100  # the label of a position the loss skips (Hugging Face's ignore_index)
FORGETTING_EXAMPLES = 32  # the default held-out slice: this many examples of the task's first evaluation set


@dataclass
class SFTEncoded(Encoded):
    """One split of a generation task: token ids and per-token labels (training), or prompts to generate from.

    ``targets[i]`` are example i's labels (-100 where no loss is taken); ``prompts``/``gold`` feed generation;
    ``filter``/``max_new_tokens`` are the evaluation protocol of the split; ``max_prompt_tokens``: prompts are cut
    from the left to this many tokens, so that prompt + new tokens fit the model's positions (None: uncut).
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
    max_prompt_tokens: int | None = None

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
    return SFTEncoded(ids, None, np.asarray(kept, dtype=np.int64), stats, targets,
                      gold=[rows[i].answer for i in kept if rows[i].answer is not None])


def encode_prompts(rows: list, tokenizer: Any, template: str, spec: tuple[str, int, tuple[str, ...]],
                   max_prompt_tokens: int | None = None) -> SFTEncoded:
    """An evaluation split: the rendered prompts, their gold answers and the split's protocol. Prompts longer
    than ``max_prompt_tokens`` are cut from the left when generating (the question's end, next to the answer,
    stays) and counted in ``stats``, as training counts what its cutoff truncated."""
    from .templates import get_template, render_prompt

    prompts = [render_prompt(template, ex.instruction, ex.input, tokenizer) for ex in rows]
    ids = [np.asarray(prompt_ids(tokenizer, q, template), dtype=np.int32) for q in prompts]
    stats = {}
    if max_prompt_tokens is not None:
        stats = {"examples": len(rows), "truncated": sum(len(i) > max_prompt_tokens for i in ids),
                 "prompt_cutoff_len": max_prompt_tokens}
        ids = [i[-max_prompt_tokens:] for i in ids]
    filt, max_new, stop = spec
    return SFTEncoded(ids, None, np.arange(len(rows)), stats, [], prompts, [ex.id for ex in rows],
                      [_question(ex) for ex in rows], [ex.answer if ex.answer is not None else ex.output for ex in rows],
                      [ex.output for ex in rows], filt, max_new, tuple(stop), get_template(template).add_special_tokens,
                      max_prompt_tokens)


def trivial_exact_match(train_answers: list[str], enc: SFTEncoded) -> float:
    """Exact match of answering every example with the most frequent gold answer of the training split (of the
    evaluation split itself where the training data has no answers, e.g. free-form instruction data); ties: the
    answer met first."""
    from collections import Counter

    from .answers import is_correct

    answers = train_answers or enc.gold
    if not answers or not enc.gold:
        return float("nan")
    top = Counter(answers).most_common(1)[0][0]
    return float(np.mean([is_correct(enc.filter, top, g) for g in enc.gold]))


def _question(ex: Any) -> str:
    return ex.instruction if not ex.input else f"{ex.instruction}\n{ex.input}"


class GenerationKind(TaskKind):
    """Causal LMs trained on instructions and scored on what they generate."""

    name = "generation"
    peft_task_type = "CAUSAL_LM"
    supports_feature_cache = False
    no_feature_cache_reason = ("its evaluation decodes with the KV cache, which runs every layer on each new token "
                               "(cached features of the prompt cannot serve it)")

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

    def resolve(self, cfg: RunConfig, task: GenerativeTaskView) -> dict[str, Any]:
        from .templates import get_template

        template = cfg.template or task.default_template
        get_template(template)  # an unknown name: one line with a did-you-mean
        if cfg.train_data is not None and not task.takes_train_data:
            raise ConfigError(f"train_data: task {task.name!r} trains on its own training split; --train-data is for "
                              "the suites (gsm8k, math, commonsense).")
        return {"template": template}

    def encode(self, task: GenerativeTaskView, examples: Any, tokenizer: Any, cfg: RunConfig, model: nn.Module,
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
        spec = task.eval_spec(split)
        return encode_prompts(examples.rows, tokenizer, template, spec,
                              prompt_room(model.config, cfg.max_new_tokens or spec[1], tokenizer, cfg.model))

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """Target tokens: the positions the causal LM loss counts (labels shifted by one, -100 skipped)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    @torch.no_grad()
    def evaluate(self, p: EvalContext, split: str) -> Evaluation:
        from ..generation import generate
        from .answers import extract, is_correct
        from .context import Evaluation

        enc: SFTEncoded = p.evals[split]  # type: ignore[assignment]
        was_training = p.model.training
        p.model.eval()
        with p.autocast():
            out = generate(p.model, p.tokenizer, enc.prompts, p.cfg.max_new_tokens or enc.max_new_tokens, enc.stop,
                           batch_size=p.cfg.eval_batch_size, device=p.device,
                           add_special_tokens=enc.add_special_tokens, max_prompt_tokens=enc.max_prompt_tokens)
        p.model.train(was_training)
        rows = []
        for i, text in enumerate(out.texts):
            pred = extract(enc.filter, text)
            rows.append({"id": enc.example_ids[i], "question": enc.questions[i], "generated": text,
                         "extracted": pred, "gold": enc.gold[i], "correct": bool(is_correct(enc.filter, pred,
                                                                                          enc.gold[i]))})
        return Evaluation({"exact_match": float(np.mean([r["correct"] for r in rows])) if rows else float("nan")},
                          rows, {"generation_s": out.seconds, "generated_tokens": out.new_tokens},
                          baselines={"exact_match": trivial_exact_match(p.train.gold, enc)},
                          collapsed=len(rows) > 1 and len({r["extracted"] for r in rows}) == 1)

    def summarise(self, p: EvalContext, scores: dict[str, float]) -> dict[str, float]:
        """A suite's average over its evaluation sets (as ``dev/exact_match``), and the forgetting score."""
        out: dict[str, float] = {}
        sets = [s for s in p.task.eval_splits if f"{s}/exact_match" in scores and not p.task.sets[s].extra]
        if "dev" not in p.task.eval_splits and sets:
            out["dev/exact_match"] = float(np.mean([scores[f"{s}/exact_match"] for s in sets]))
        before = (p.kind_state or {}).get("lm_loss_before")
        if before is not None:
            after = lm_loss(p, p.kind_state["forgetting_batches"])
            out.update({"forgetting/lm_loss": after, "forgetting/lm_loss_before": before,
                        "forgetting/increase": after - before})
        return out

    def summarise_baselines(self, p: EvalContext, baselines: dict[str, float]) -> dict[str, float]:
        """A suite's average's baseline: the mean of its sets' (as :meth:`summarise` averages their scores)."""
        sets = [s for s in p.task.eval_splits if f"{s}/exact_match" in baselines and not p.task.sets[s].extra]
        if "dev" in p.task.eval_splits or not sets:
            return {}
        return {"dev/exact_match": float(np.mean([baselines[f"{s}/exact_match"] for s in sets]))}

    def before_training(self, p: EvalContext) -> Baseline | None:
        from .context import Baseline

        texts, source = forgetting_texts(p)
        enc = [np.asarray(tokenizer_ids(p.tokenizer, t)[: p.cfg.max_length], dtype=np.int64) for t in texts]
        enc = [e for e in enc if len(e) > 1]
        if not enc:
            return None
        batches = []
        for i in range(0, len(enc), p.cfg.eval_batch_size):
            chunk = enc[i: i + p.cfg.eval_batch_size]
            sft = SFTEncoded([e.astype(np.int32) for e in chunk], None, np.arange(len(chunk)), {}, list(chunk))
            batches.append(sft.collate(list(range(len(chunk))), p.pad_id))
        before = lm_loss(p, batches)
        return Baseline({"forgetting": {"source": source, "texts": len(enc), "lm_loss_before": before}},
                        {"forgetting_batches": batches, "lm_loss_before": before})


def prompt_room(config: Any, max_new_tokens: int, tokenizer: Any, name: str) -> int | None:
    """How many prompt tokens fit the model's positions beside ``max_new_tokens`` (None: no fixed table);
    refuses, before training, new tokens that leave no room for a prompt."""
    from ..models.loading import max_positions

    n = max_positions(config)
    if n is None:
        return None
    least = tokenizer.num_special_tokens_to_add() + 1
    if n - max_new_tokens < least:
        raise ConfigError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt: model {name!r} has {n} "
                          f"positions for prompt and answer together; give --max-new-tokens {n - least} or less.")
    return n - max_new_tokens


def tokenizer_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


@torch.no_grad()
def lm_loss(p: EvalContext, batches: list[dict[str, torch.Tensor]]) -> float:
    """The mean next-token cross-entropy over every target token of ``batches``, from the logits: a method's own
    additions to the training loss (AdaLoRA's orthogonality regulariser) are not part of a language model's loss."""
    model = p.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        b = {k: v.to(p.device) for k, v in b.items()}
        with p.autocast():
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


def forgetting_texts(p: EvalContext) -> tuple[list[str], str]:
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
    """Held-out text: a .txt file (one text per non-empty line), or JSON (an array) / JSON Lines (one item per line)
    whose items are strings or objects with a ``text`` string. Anything else (a JSON string or object, whose
    characters or keys would be read as texts) is one clear line naming the file and item."""
    raw = read_text(path, "forgetting_file")
    what = "a forgetting file in JSON holds strings or objects with a 'text' key"
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid JSON ({str(e)[:80]}); {what}.") from None
        if not isinstance(rows, list):
            raise ConfigError(f"{path} holds {describe(rows)}; {what}, in one array.")
        items = [(r, f"{path}: item {i + 1}") for i, r in enumerate(rows)]
    elif path.suffix.lower() == ".jsonl":
        items = []
        for n, line in enumerate(raw.split("\n"), start=1):
            if line.strip():
                try:
                    items.append((json.loads(line), f"{path}:{n}"))
                except (ValueError, RecursionError) as e:
                    raise ConfigError(f"{path}:{n}: not valid JSON ({str(e)[:80]}); {what}, one per line.") from None
    else:
        items = [(line, f"{path}:{n}") for n, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    texts = []
    for item, where in items:
        if isinstance(item, dict):
            if "text" not in item:
                raise ConfigError(f"{where}: an object with no 'text' key; {what}.")
            item = item["text"]
        elif not isinstance(item, str):
            raise ConfigError(f"{where} is {describe(item)}; {what}.")
        texts.append(text_field(item, "text", where))
    if not texts:
        raise ConfigError(f"forgetting_file {str(path)!r} holds no text.")
    return texts


GENERATION = GenerationKind()
