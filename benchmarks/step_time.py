"""Training step time of each method against the floor, interleaved in one process, medians reported.

    python benchmarks/step_time.py                          # RTE and SST-2 shapes, MiniLM, batch 16, fp32
    python benchmarks/step_time.py --steps 10 --repeats 2   # a quick check
    python benchmarks/step_time.py --precision bf16

Variants (all through the same ``efficientft.train.optimizer_step`` the real loop uses: forward, backward,
clipping, AdamW, schedule):

- ``floor``: every backbone weight frozen, gradients flowing through every layer (see ``_common.make_floor``);
- ``lora``: LoRA r=8 on W_q, W_v (PEFT's layers with our forward, ``efficientft.lowrank``);
- ``lora-peft``: the same through stock PEFT;
- ``dora``: DoRA r=8 on W_q, W_v (ours, ``methods/dora.py``);
- ``dora-peft``: DoRA r=8 on W_q, W_v through PEFT's ``use_dora=True``;
- ``full``: full fine-tuning of every weight.

Every variant steps through the same list of batches (the run's seeded, dynamically padded training batches).
Repeats interleave the variants (their order rotates each repeat) so that machine noise hits all alike; the first
step of each block is discarded (warm-up), and the median over all other steps is reported: wall time, and the
process CPU time of the step, which on a machine shared with other work is the steadier figure (with one thread,
``--threads 1``, it is the work done, whoever else runs).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import machine, make_floor, median, quartiles, register_references, table

from efficientft.config import RunConfig
from efficientft.train import optimizer_step, prepare

VARIANTS = {
    "floor": {"method": "full", "targets": "all"},
    "lora": {"method": "lora", "targets": "qv", "method_args": {"rank": 8}},
    "lora-peft": {"method": "lora-peft", "targets": "qv", "method_args": {"rank": 8}},
    "dora": {"method": "dora", "targets": "qv", "method_args": {"rank": 8}},
    "dora-peft": {"method": "dora-peft", "targets": "qv", "method_args": {"rank": 8}},
    "full": {"method": "full", "targets": "all"},
}


def build(task: str, name: str, a: argparse.Namespace):
    cfg = RunConfig(task=task, model=a.model, batch_size=a.batch_size, max_length=a.max_length, lr=1e-5,
                    steps=10_000, max_train=a.batch_size * a.steps, max_eval=8, precision=a.precision,
                    progress=False, schedule="constant", warmup_ratio=0.0, **VARIANTS[name])
    p = prepare(cfg)
    return make_floor(p) if name == "floor" else p


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_task(task: str, a: argparse.Namespace) -> dict:
    names = a.variants.split(",")
    prepared = {n: build(task, n, a) for n in names}
    first = prepared[names[0]]
    it = first.batches().indexed()
    batches = []
    for _ in range(a.steps):
        idx, b = next(it)
        batches.append((idx, {k: v.to(first.device) for k, v in b.items()}))
    tokens = sum(int(b["attention_mask"].sum()) for _, b in batches)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            p = prepared[n]
            for i, micro in enumerate(batches):
                sync(p.device)
                t0, c0 = time.perf_counter(), time.process_time()
                optimizer_step(p, [micro], i + 1)
                sync(p.device)
                if i > 0:
                    times[n].append(time.perf_counter() - t0)
                    cpu[n].append(time.process_time() - c0)
    def ratio(d, n, ref):
        return median(d[n]) / median(d[ref]) if ref in d else float("nan")

    rows, out = [], {}
    for n in names:
        med = median(times[n])
        q1, q3 = quartiles(times[n])
        out[n] = {"median_s": med, "q1_s": q1, "q3_s": q3, "cpu_median_s": median(cpu[n]), "steps": len(times[n]),
                  "x_floor": ratio(times, n, "floor"), "x_lora": ratio(times, n, "lora"),
                  "cpu_x_floor": ratio(cpu, n, "floor"), "cpu_x_lora": ratio(cpu, n, "lora"),
                  "tokens_per_s": tokens / len(batches) / med,
                  "trainable": sum(q.numel() for g in prepared[n].groups for q in g["params"])}
        o = out[n]
        rows.append([n, 1e3 * med, f"{1e3 * q1:.3g}–{1e3 * q3:.3g}", o["x_floor"], o["x_lora"],
                     1e3 * o["cpu_median_s"], o["cpu_x_floor"], o["cpu_x_lora"], round(o["tokens_per_s"]),
                     o["trainable"]])
    mean_len = tokens / len(batches) / a.batch_size
    print(f"\n### {task}: batch {a.batch_size}, mean {mean_len:.1f} real tokens per example, {a.precision}, "
          f"{a.steps} steps x {a.repeats} repeats\n")
    print(table(["variant", "wall ms/step (median)", "IQR ms", "x floor", "x LoRA", "CPU ms/step", "CPU x floor",
                 "CPU x LoRA", "tokens/s", "trainable"], rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="rte,sst2")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=30, help="steps per block (the first is warm-up)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved blocks per variant")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    register_references()
    print(f"machine: {machine()}")
    results = {t: bench_task(t, a) for t in a.tasks.split(",")}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(a), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
