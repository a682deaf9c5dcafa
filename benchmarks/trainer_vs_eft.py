"""The default LoRA QV job end to end: EfficientFT against a plain Hugging Face ``Trainer`` + ``peft`` pipeline.

    python benchmarks/trainer_vs_eft.py                  # SST-2 (the default task), 200 steps, full dev set, 2 repeats
    python benchmarks/trainer_vs_eft.py --task rte
    python benchmarks/trainer_vs_eft.py --steps 10 --max-train 160 --max-eval 64 --repeats 1   # a quick check

Both sides do the same work, in fp32, in one process, interleaved (EfficientFT, Trainer, EfficientFT, ...):
the same examples (read by the same task reader, same seeded subsample), MiniLM, LoRA r=8, α=8, no dropout on
W_q and W_v, the classifier trained, batch 16, AdamW lr 5e-4 (β, ε, no weight decay: both libraries' defaults),
linear schedule with 6 % warm-up, gradient clipping at 1.0, the same number of optimizer steps, then one
evaluation of the whole evaluation split, scored by accuracy. Each side's wall time runs from "nothing loaded" to
"scores in hand". Library imports (transformers loads model code, PEFT and the Trainer lazily) are charged to
neither: an untimed round of one step of each pipeline runs first.

The Trainer pipeline is the way the reference implementation of this benchmark ran it: a ``datasets.Dataset``
tokenised with ``padding="max_length"`` (every example padded to 128 tokens), ``get_peft_model`` with stock
PEFT layers, ``TrainingArguments`` defaults for everything not listed above (evaluation batch 8, logging every
500 steps, a checkpoint every 500 steps — none is reached at these sizes, so the Trainer is not charged for
checkpoint writes), no progress bars on either side.

EfficientFT is measured twice: ``eft cold`` is a job in a fresh worker (token cache on disk emptied, nothing in
memory: every file read, tokenised and hashed), ``eft warm`` the same job again in the same worker, as in a sweep
(tokens and the backbone reused). The target compares ``eft cold`` with the Trainer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from _common import machine, median, table

from efficientft import data
from efficientft.config import RunConfig
from efficientft.models import bundled_minilm
from efficientft.models.loading import clear_backbone_cache
from efficientft.store import Store
from efficientft.tasks import get_task
from efficientft.train import load_data, run


def eft_job(a: argparse.Namespace, cold: bool, workdir: str) -> tuple[float, float]:
    if cold:
        data._MEMORY.clear()
        clear_backbone_cache()
        shutil.rmtree(os.path.join(workdir, "cache"), ignore_errors=True)
    os.environ["EFT_CACHE_DIR"] = os.path.join(workdir, "cache")
    cfg = RunConfig(task=a.task, method="lora", targets="qv", method_args={"rank": 8}, steps=a.steps,
                    max_train=a.max_train, max_eval=a.max_eval, progress=False, seed=0)
    store = Store(os.path.join(workdir, f"eft-{time.monotonic_ns()}.sqlite"))
    t0 = time.perf_counter()
    rec = run(cfg, store)
    wall = time.perf_counter() - t0
    return wall, rec["scores"][f"dev/{get_task(a.task).main_metric}"]


def trainer_job(a: argparse.Namespace, workdir: str) -> tuple[float, float]:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    t0 = time.perf_counter()
    task = get_task(a.task)
    cfg = RunConfig(task=a.task, max_train=a.max_train, max_eval=a.max_eval)
    train_ex, evals = load_data(task, cfg)
    path = str(bundled_minilm())
    tok = AutoTokenizer.from_pretrained(path)

    def dataset(ex):
        cols = {"a": ex.text_a, "label": ex.labels} | ({"b": ex.text_b} if ex.text_b is not None else {})
        return Dataset.from_dict(cols).map(
            lambda b: tok(b["a"], b.get("b"), truncation=True, padding="max_length", max_length=128),
            batched=True, remove_columns=[c for c in cols if c != "label"])

    train_ds, eval_ds = dataset(train_ex), dataset(evals["dev"])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=["query", "value"]))
    args = TrainingArguments(
        output_dir=os.path.join(workdir, "trainer"), per_device_train_batch_size=16, learning_rate=5e-4,
        max_steps=a.steps, warmup_steps=0.06, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
        seed=0, report_to="none", use_cpu=True, disable_tqdm=True)

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      compute_metrics=accuracy)
    trainer.train()
    score = trainer.evaluate()["eval_accuracy"]
    return time.perf_counter() - t0, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--max-train", type=int, default=None, help="seeded training subsample (default: all)")
    ap.add_argument("--max-eval", type=int, default=None, help="seeded evaluation subsample (default: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import datasets

    datasets.disable_progress_bars()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="eft-warmup-") as workdir:  # imports, charged to neither side
        tiny = argparse.Namespace(**{**vars(a), "steps": 1, "max_train": 16, "max_eval": 8})
        eft_job(tiny, True, workdir)
        trainer_job(tiny, workdir)
    walls: dict[str, list[float]] = {"eft cold": [], "eft warm": [], "trainer+peft": []}
    scores: dict[str, list[float]] = {k: [] for k in walls}
    with tempfile.TemporaryDirectory(prefix="eft-bench-") as workdir:
        for _ in range(a.repeats):
            for name in walls:
                if name == "trainer+peft":
                    w, s = trainer_job(a, workdir)
                else:
                    w, s = eft_job(a, name == "eft cold", workdir)
                walls[name].append(w)
                scores[name].append(s)
                print(f"  {name}: {w:.1f} s, score {s:.4f}", flush=True)
    ref = median(walls["trainer+peft"])
    rows = [[n, median(w), median(w) / ref, ", ".join(f"{s:.4f}" for s in scores[n])] for n, w in walls.items()]
    print(f"\n### {a.task}: {a.steps} steps of batch 16, max_train={a.max_train}, max_eval={a.max_eval}, "
          f"fp32, {a.repeats} repeats\n")
    print(table(["pipeline", "median wall s", "x Trainer+PEFT", "scores"], rows))


if __name__ == "__main__":
    main()
