"""Where a run's peak memory goes: resident set after each phase, and what one training step adds.

    python benchmarks/memory.py                  # RTE, LoRA r=8 on W_q, W_v, MiniLM, batch 16 x 128 tokens
    python benchmarks/memory.py --task sst2

Part 1 follows one run's set-up phase by phase in a fresh process (imports, data, model, adapters) and then
training steps and an evaluation, printing the resident set (RSS) and its high-water mark (VmHWM) after each.
Part 2 measures the peak RSS increase of one forward + backward on a full batch (16 examples of 128 tokens) with
the model's dropout as configured, without attention-probability dropout, without any dropout, and of one
evaluation forward (no gradients): the autograd activations are most of a step's memory, and dropout's saved
masks and the attention path it forces are a large part of them.
"""

from __future__ import annotations

import argparse

import torch
from _common import machine

from efficientft.config import RunConfig
from efficientft.meters import PeakMemory, read_status, release_freed_memory, rss_bytes
from efficientft.resolve import resolve


def mb(x: float) -> str:
    return f"{x / 2**20:7.0f}"


def phase(name: str) -> None:
    print(f"| {name} | {mb(rss_bytes())} | {mb(read_status('VmHWM') or 0)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="rte")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=320)
    ap.add_argument("--max-eval", type=int, default=None)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {machine()}\n\n### phases of one run ({a.task}, LoRA QV r=8, batch 16)\n")
    print("| after | RSS MB | high-water MB |\n|---|---|---|")
    phase("imports (torch, efficientft)")
    from efficientft import train as T
    from efficientft.tasks import get_task

    cfg = resolve(RunConfig(task=a.task, method="lora", targets="qv", method_args={"rank": 8}, steps=a.steps,
                    max_train=a.max_train, max_eval=a.max_eval, progress=False))
    T.load_data(get_task(a.task), cfg)
    phase("reading the task's data")
    import peft  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401

    phase("importing transformers' model code and peft")
    p = T.prepare(cfg)
    phase("prepare: model loaded, data tokenised, adapters, optimizer")
    batches = T.device_batches(p)
    for step in range(1, a.steps + 1):
        T.optimizer_step(p, [next(batches)], step)
        phase(f"training step {step}")
    T.evaluate_all(p)
    phase("evaluation")

    print("\n### one step on a full batch (16 x 128 tokens): peak RSS increase\n")
    print("| dropout | forward + backward MB |\n|---|---|")
    idx, batch = next(batches)
    full = {k: v[:, :1].repeat(1, 128) if v.dim() == 2 else v for k, v in batch.items()}
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    drops = {n: m for n, m in p.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    p_orig = {n: m.p for n, m in drops.items()}
    for label, off in [("as configured", ()), ("no attention-probability dropout", ("attention.self",)),
                       ("none", ("",))]:
        for n, m in drops.items():
            m.p = 0.0 if any(o in n for o in off) else p_orig[n]
        p.model.train()
        meter = PeakMemory(p.device)
        meter.reset()
        T.forward(p, "train", idx, full).loss.backward()
        m = meter.read()
        p.optimizer.zero_grad(set_to_none=True)
        print(f"| {label} | {m['peak_rss_mb'] - m['rss_start_mb']:.0f} |", flush=True)
    p.model.eval()
    meter = PeakMemory(p.device)
    meter.reset()
    with torch.no_grad():
        T.forward(p, "train", idx, {k: v for k, v in full.items() if k != "labels"})
    m = meter.read()
    print(f"| evaluation forward (no gradients) | {m['peak_rss_mb'] - m['rss_start_mb']:.0f} |")
    release_freed_memory()


if __name__ == "__main__":
    main()
