"""What each speed option buys, measured in one process with interleaved repeats (LoRA r=8 on W_q, W_v, MiniLM).

    python benchmarks/speed_options.py                       # all parts, RTE shapes
    python benchmarks/speed_options.py --only bucket,eval --steps 8 --repeats 2

Parts:

- ``bucket``: length bucketing of training batches (``bucket: true``): padding fraction over one epoch and step time;
- ``bf16``: bf16 autocast (``precision: bf16``) against fp32: step time;
- ``eval``: evaluation batch size (``eval_batch_size``): wall time of one evaluation of the evaluation split;
- ``features``: frozen-feature caching (``feature_cache: true``) with LoRA on the top two layers only: step time
  once every example's features exist (the second epoch on), and evaluation time.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, median, table

from efficientft.config import RunConfig
from efficientft.train import device_batches, evaluate, optimizer_step, prepare

TOP2 = r"re:.*layer\.[45]\.attention\.self\.(query|value)"


def cfg_for(a: argparse.Namespace, **kw) -> RunConfig:
    base = dict(task=a.task, method="lora", targets="qv", method_args={"rank": 8}, steps=10_000,
                max_train=a.max_train, max_eval=a.max_eval, progress=False, lr=1e-5, schedule="constant",
                warmup_ratio=0.0)
    return RunConfig(**{**base, **kw})


def step_times(ps: dict, a: argparse.Namespace, fresh_batches: bool = False) -> dict[str, list[float]]:
    """Interleaved blocks of ``a.steps`` optimizer steps per variant; each variant draws its own batches."""
    its = {n: device_batches(p) for n, p in ps.items()}
    times: dict[str, list[float]] = {n: [] for n in ps}
    for r in range(a.repeats):
        names = list(ps)
        for n in names[r % len(names):] + names[: r % len(names)]:
            for i in range(a.steps):
                micro = [next(its[n])]
                t0 = time.perf_counter()
                optimizer_step(ps[n], micro, i + 1)
                if i:
                    times[n].append(time.perf_counter() - t0)
    return times


def part_bucket(a):
    ps = {"dynamic padding": prepare(cfg_for(a)), "dynamic padding + buckets": prepare(cfg_for(a, bucket=True))}
    rows = []
    times = step_times(ps, a)
    for n, p in ps.items():
        b = p.batches()
        lengths = b.enc.lengths
        order = b.epoch_order(0)
        real = sum(int(lengths[i].sum()) for i in order)
        padded = sum(len(i) * int(lengths[i].max()) for i in order)
        rows.append([n, 1 - real / padded, 1e3 * median(times[n])])
    rows = [r + [r[2] / rows[0][2]] for r in rows]
    return ["training batches", "padding fraction (epoch 0)", "median ms/step", "x dynamic"], rows


def part_bf16(a):
    ps = {"fp32": prepare(cfg_for(a)), "bf16 autocast": prepare(cfg_for(a, precision="bf16"))}
    times = step_times(ps, a)
    ref = median(times["fp32"])
    return ["precision", "median ms/step", "x fp32"], [[n, 1e3 * median(t), median(t) / ref] for n, t in times.items()]


def part_eval(a):
    sizes = [8, 32, 64, 128, 256]
    ps = {s: prepare(cfg_for(a, eval_batch_size=s)) for s in sizes}
    walls: dict[int, list[float]] = {s: [] for s in sizes}
    for r in range(a.repeats):
        for s in sizes[r % len(sizes):] + sizes[: r % len(sizes)]:
            t0 = time.perf_counter()
            evaluate(ps[s], "dev")
            walls[s].append(time.perf_counter() - t0)
    ref = median(walls[64])
    n = len(ps[64].evals["dev"])
    return (["eval batch size", f"median s per evaluation ({n} examples)", "x batch 64"],
            [[s, median(w), median(w) / ref] for s, w in walls.items()])


def part_features(a):
    ps = {"LoRA top-2 layers": prepare(cfg_for(a, targets=TOP2)),
          "LoRA top-2 layers + feature_cache": prepare(cfg_for(a, targets=TOP2, feature_cache=True))}
    cached = ps["LoRA top-2 layers + feature_cache"]
    for split, enc in [("train", cached.train), *cached.evals.items()]:  # every example's features, once
        cached.features._compute(split, list(range(len(enc))))
    times = step_times(ps, a)
    evals: dict[str, list[float]] = {n: [] for n in ps}
    for _ in range(a.repeats):
        for n, p in ps.items():
            t0 = time.perf_counter()
            evaluate(p, "dev")
            evals[n].append(time.perf_counter() - t0)
    ref_t, ref_e = median(times["LoRA top-2 layers"]), median(evals["LoRA top-2 layers"])
    rows = [[n, 1e3 * median(times[n]), median(times[n]) / ref_t, median(evals[n]), median(evals[n]) / ref_e]
            for n in ps]
    mb = cached.features.nbytes / 2**20
    rows.append([f"(cache size: {mb:.1f} MB for {len(cached.train)} + {len(cached.evals['dev'])} examples)",
                 "", "", "", ""])
    return ["run", "median ms/step", "x uncached", "s per evaluation", "x uncached"], rows


PARTS = {"bucket": part_bucket, "bf16": part_bf16, "eval": part_eval, "features": part_features}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="rte")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--steps", type=int, default=20, help="steps per block (the first is warm-up)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=800)
    ap.add_argument("--max-eval", type=int, default=None)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {machine()}")
    for name in a.only.split(","):
        header, rows = PARTS[name](a)
        print(f"\n### {name}: {a.task}, batch 16, {a.steps} steps x {a.repeats} repeats\n")
        print(table(header, rows), flush=True)


if __name__ == "__main__":
    main()
