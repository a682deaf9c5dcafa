"""``--compile`` against eager: step time, the first step's compile cost, and equal losses.

    python benchmarks/compile.py [--jobs minilm,llama] [--steps 60] [--threads 2]
    python benchmarks/compile.py --tiny            # a tiny BERT and a tiny LLaMA, a few steps (the test's mode)

Jobs: ``minilm`` is the default job's shape (bundled MiniLM, SST-2, LoRA q,v r=8, batch 16, max length 128);
``llama`` is generation training (a random 2-layer, hidden-64 LLaMA from ``benchmarks/tiny_decoder.py``'s builder,
``synthetic-reverse``, LoRA q,v, batch 16). For each job an eager run and a compiled run (``compile=True``: the
training step calls ``torch.compile(model)``) are prepared from the same config and stepped *interleaved* in this
process, their order alternating per step, through the very ``optimizer_step`` the loop uses, on the same batches
and each with its own copy of the random generator (the same dropout masks): a loaded machine slows both alike. Reported: each one's median step time after ``--warmup`` steps, the compiled
run's first step (compiling the graph) less the eager first step, the steps after which compiling pays back
("never" when the compiled step is not faster), and the largest relative difference of the two loss curves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, machine, median, table

from efficientft.config import RunConfig
from efficientft.train import device_batches, optimizer_step, prepare

sys.path.insert(0, str(ROOT))


def configs(job: str, a: argparse.Namespace, folder: Path) -> RunConfig:
    common = dict(method="lora", targets="qv", method_args={"rank": 8}, batch_size=a.batch_size, lr=5e-4,
                  steps=a.steps, max_train=a.batch_size * a.steps, max_eval=8, progress=False)
    if job == "minilm":
        model = "minilm"
        if a.tiny:
            from transformers import BertConfig, BertForSequenceClassification

            from efficientft.models import bundled_minilm
            from tests.conftest import _save_tiny

            cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512)
            model = str(_save_tiny(folder / "bert", BertForSequenceClassification(cfg), bundled_minilm()))
        return RunConfig(task="sst2", model=model, max_length=a.max_length, **common)
    from efficientft.models import bundled_minilm
    from tests.gen_fixtures import save_causal

    path = save_causal(folder / "llama", "llama", bundled_minilm(), 32 if a.tiny else 64, 2)
    return RunConfig(task="synthetic-reverse", model=str(path), max_length=64, max_new_tokens=4, **common)


def bench(job: str, a: argparse.Namespace) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = configs(job, a, Path(tmp))
        runs = {"eager": prepare(cfg), "compiled": prepare(cfg.replace(compile=True))}
    times: dict[str, list[float]] = {n: [] for n in runs}
    losses: dict[str, list[float]] = {n: [] for n in runs}
    batches = {n: device_batches(p) for n, p in runs.items()}
    for p in runs.values():
        p.model.train()
    torch.manual_seed(cfg.seed)  # each run draws its dropout masks from its own copy of the generator
    rng = {n: torch.get_rng_state() for n in runs}
    for i in range(a.steps):
        for name in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
            p = runs[name]
            runner = p.model if p.compiled is None else p.compiled
            torch.set_rng_state(rng[name])
            t = time.perf_counter()
            r = optimizer_step(p, [next(batches[name])], i + 1, None, runner)
            times[name].append(time.perf_counter() - t)
            losses[name].append(r.loss)
            rng[name] = torch.get_rng_state()
    eager, comp = (median(times[n][a.warmup:]) for n in ("eager", "compiled"))
    cost = times["compiled"][0] - times["eager"][0]
    payback = f"{cost / (eager - comp):,.0f}" if comp < eager else "never"
    diff = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(losses["eager"], losses["compiled"], strict=True))
    return [job, 1e3 * eager, 1e3 * comp, comp / eager, cost, payback, f"{diff:.1e}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", default="minilm,llama")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="tiny models, a few steps (the test's mode)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine())
    header = ["job", "eager ms/step", "compiled ms/step", "× eager", "compile s (first step)", "steps to pay back",
              "max loss rel. diff"]
    rows = []
    for job in a.jobs.split(","):
        rows.append(bench(job, a))
        print(table(header, rows[-1:]), flush=True)  # each job's row as it is measured (compiling takes minutes)
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
