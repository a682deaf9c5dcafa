"""How should the classifier read the bundled MiniLM (issue 25 §1)? Measured with an independent transformers + peft
loop (not EfficientFT's, so that the loop under test is not its own judge): LoRA Q,V r=8 alpha=16, AdamW lr 2e-3,
linear decay, batch 16, max length 128, a fixed number of steps, scored on the GLUE dev split. Heads:

- ``cls-pooler-frozen``: BERT's head as transformers builds it, the pooler frozen (what EfficientFT did before the
  ``head`` setting, and does under ``--head cls-pooler``);
- ``cls-pooler-trained``: the pooler trains with the classifier;
- ``mean``: the masked mean of the last hidden states -> dropout -> linear, as sentence-transformers reads this
  checkpoint.

    EFT_DATA_DIR=../shared/data/glue python benchmarks/head_pilot.py [results.jsonl]

Appends one JSON line per run (task, head, seed, steps, dev score x100, trainable parameters, seconds, distinct
predictions) and skips the runs the file already holds (resumable). The table is in src/efficientft/suites/pilot.md.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import pearsonr
from sklearn.metrics import matthews_corrcoef
from torch import nn
from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

from efficientft.models import bundled_minilm

MODEL = str(bundled_minilm())
GLUE = os.environ.get("EFT_DATA_DIR", "../shared/data/glue")
HEADS = ("cls-pooler-frozen", "mean", "cls-pooler-trained")
PLAN = [(t, h, seed, 300) for seed in (0, 1) for t in ("mrpc", "sst2") for h in HEADS[:2]]
PLAN += [(t, HEADS[2], 0, 300) for t in ("mrpc", "sst2")]


def read(task: str, split: str) -> list[tuple]:
    folder = {"mrpc": "MRPC", "sst2": "SST-2", "rte": "RTE", "cola": "CoLA", "stsb": "STS-B"}[task]
    with open(f"{GLUE}/{folder}/{split}.tsv") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task == "cola":
        return [(r[3], None, int(r[1])) for r in rows]
    rows = rows[1:]
    if task == "sst2":
        return [(r[0], None, int(r[1])) for r in rows]
    if task == "mrpc":
        return [(r[3], r[4], int(r[0])) for r in rows]
    if task == "rte":
        return [(r[1], r[2], 1 if r[3] == "not_entailment" else 0) for r in rows]
    return [(r[7], r[8], float(r[9])) for r in rows]  # stsb


class Net(nn.Module):
    def __init__(self, head: str, n: int) -> None:
        super().__init__()
        self.bert = AutoModel.from_pretrained(MODEL, add_pooling_layer=head != "mean")
        self.head = head
        self.drop = nn.Dropout(0.1)
        self.classifier = nn.Linear(self.bert.config.hidden_size, n)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, **enc):
        out = self.bert(**enc)
        if self.head == "mean":
            m = enc["attention_mask"].unsqueeze(-1).float()
            h = (out.last_hidden_state * m).sum(1) / m.sum(1)
        else:
            h = out.pooler_output
        return self.classifier(self.drop(h))


def run(task: str, head: str, seed: int, steps: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    tok = AutoTokenizer.from_pretrained(MODEL)
    train, dev = read(task, "train"), read(task, "dev")
    n = 1 if task == "stsb" else 2
    net = Net(head, n)
    net.bert = get_peft_model(net.bert, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                   target_modules=["query", "value"]))
    if head == "cls-pooler-trained":
        for p in net.bert.base_model.model.pooler.parameters():
            p.requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(train)), 0

    def enc(batch):
        b = [x[1] for x in batch] if batch[0][1] is not None else None
        return tok([x[0] for x in batch], b, truncation=True, max_length=128, padding=True, return_tensors="pt")

    t0 = time.time()
    net.train()
    for _ in range(steps):
        if pos + 16 > len(order):
            order, pos = rng.permutation(len(train)), 0
        batch = [train[i] for i in order[pos:pos + 16]]
        pos += 16
        y = torch.tensor([x[2] for x in batch])
        logits = net(**enc(batch))
        loss = (nn.functional.mse_loss(logits.squeeze(-1), y.float()) if n == 1
                else nn.functional.cross_entropy(logits, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    secs = time.time() - t0
    net.eval()
    preds: list = []
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            lo = net(**enc(dev[i:i + 64]))
            preds += lo.squeeze(-1).tolist() if n == 1 else lo.argmax(-1).tolist()
    gold = [x[2] for x in dev]
    if task == "stsb":
        score = pearsonr(preds, gold)[0]
    elif task == "cola":
        score = matthews_corrcoef(gold, preds)
    else:
        score = float(np.mean(np.array(preds) == np.array(gold)))
    return {"task": task, "head": head, "seed": seed, "steps": steps, "score": round(100 * score, 2),
            "trainable": sum(p.numel() for p in params), "seconds": round(secs, 1),
            "distinct_preds": len(set(preds)) if n > 1 else None}


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "head_pilot.jsonl"
    done = set()
    if os.path.exists(out):
        with open(out) as f:
            done = {(r["task"], r["head"], r["seed"], r["steps"]) for r in map(json.loads, f)}
    for task, head, seed, steps in PLAN:
        if (task, head, seed, steps) in done:
            continue
        r = run(task, head, seed, steps)
        print(json.dumps(r), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")
