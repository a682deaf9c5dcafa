"""Memory and step time of LoRA q,v r=16 at a size where the model's memory dominates, measured and predicted.

    python benchmarks/scale.py                         # 0.3b, 0.6b, 1b randomly initialised LLaMA models, CPU
    python benchmarks/scale.py --sizes 0.3b --steps 3  # a reduced run
    python benchmarks/scale.py --predict llama-8b --gpu-gb 80 --batch 4 --seq 1024   # no measurement

For each size a LLaMA-architecture model is built from a config (random weights, seeded) and saved once; then each
mode trains a few steps in a process of its own, so that peaks do not mix: fp32; bf16 weights (bf16 autocast);
bf16 + gradient checkpointing; 4-bit NF4 (bitsandbytes, double quantisation) + checkpointing. The model is loaded
through the library's own path (``load_model``, ``--quantize``, ``enable_gradient_checkpointing``, the ``lora``
method) and the peak resident set is measured from the first training step on (the meter is reset after set-up,
so a transient of loading, such as fp32 weights before the bf16 cast, is not counted), with the AdamW state
allocated inside the window. The same table is computed by :mod:`efficientft.memory_model` (weights + adapter +
optimizer state + activations + the runtime baseline, which each child measures as its RSS with the libraries
imported, before the model exists) and the relative error is printed: the formula should be within 15 %.
The NF4 mode builds its Runtime as a run does, so glibc's mmap threshold is the one a quantized CPU run sets
(``allocator.return_large_blocks``); the other modes keep glibc's default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

from efficientft.memory_model import SIZES, predict

MODES = {  # name: (weights, gradient checkpointing)
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "bf16+ckpt": ("bf16", True),
    "nf4+ckpt": ("nf4", True),
}
MEASURED = ("0.3b", "0.6b", "1b")


def build(size: str, out: Path) -> None:
    """Save a randomly initialised LLaMA classifier of ``size`` (fp32) with the bundled tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from efficientft.models import bundled_minilm

    torch.manual_seed(0)
    cfg = LlamaConfig(**SIZES[size].config_kwargs(), max_position_embeddings=4096, pad_token_id=0, num_labels=2)
    LlamaForSequenceClassification(cfg).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(bundled_minilm())).save_pretrained(str(out))


def child(path: str, mode: str, batch: int, seq: int, steps: int, rank: int) -> dict:
    """Train ``steps`` steps of LoRA q,v in this process; return the measured figures (run in a subprocess)."""
    import torch

    import efficientft.methods  # noqa: F401  (everything the run imports, before the baseline is read)
    from efficientft.config import RunConfig
    from efficientft.hardware import best_precision
    from efficientft.meters import MemorySampler, PeakMemory, release_freed_memory, rss_bytes
    from efficientft.methods import get_method
    from efficientft.methods.base import Context
    from efficientft.models import head_modules, load_model, resolve_targets
    from efficientft.models.large import enable_gradient_checkpointing
    from efficientft.models.loading import LoadOptions
    from efficientft.runtime import build_runtime
    from efficientft.strategy import Strategy

    _warm_up(rank)
    release_freed_memory()
    runtime = rss_bytes()
    weights, ckpt = MODES[mode]
    device = torch.device("cpu")
    compute = best_precision("cpu")
    if weights == "nf4":
        qcfg = RunConfig(model=path, quantize="4bit", quant_compute_dtype=compute, device=device.type)
        model = load_model(path, 2, LoadOptions.from_runtime(build_runtime(qcfg))).model
        precision = "fp32"
    else:
        model = load_model(path, 2).model
        precision = weights
        if weights == "bf16":
            model = model.to(torch.bfloat16)
    if ckpt:
        enable_gradient_checkpointing(model)
    method = get_method("lora").from_config({"rank": rank})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    groups = method.param_groups(model, Strategy({}), 1e-4, 0.0)
    opt = method.optimizer(groups, 1e-4, 0.0)
    model.train()
    gen = torch.Generator().manual_seed(0)
    meter = PeakMemory(device)
    meter.reset()  # the peak of training only (set-up transients excluded); the runtime baseline is read above
    times = []
    with MemorySampler(device) as sampler:
        for _ in range(steps):
            ids = torch.randint(1, 1000, (batch, seq), generator=gen)
            labels = torch.randint(0, 2, (batch,), generator=gen)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
    peak = meter.read()
    return {"mode": mode, "runtime_mb": runtime / 2**20, "peak_rss_mb": peak["peak_rss_mb"],
            "rss_start_mb": peak["rss_start_mb"], "median_step_s": statistics.median(times[1:] or times),
            "loss": float(loss), "compute_dtype": compute if weights == "nf4" else precision,
            **sampler.summary()}


def _warm_up(rank: int) -> None:
    """One LoRA step on a tiny in-memory LLaMA: the libraries' lazy imports, kernels and thread pools are then
    part of the runtime baseline (as in any real process), not counted as the model's memory."""
    import bitsandbytes  # noqa: F401
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from efficientft.methods import get_method
    from efficientft.methods.base import Context
    from efficientft.models import head_modules, resolve_targets
    from efficientft.models.large import enable_gradient_checkpointing

    tiny = SIZES["tiny"]
    model = LlamaForSequenceClassification(LlamaConfig(**tiny.config_kwargs(), pad_token_id=0, num_labels=2))
    enable_gradient_checkpointing(model)
    method = get_method("lora").from_config({"rank": rank})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad])
    model.train()
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            ids = torch.randint(1, tiny.vocab, (1, 8))
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1])).loss.backward()
        opt.step()
    del model, opt


def measure(size: str, a: argparse.Namespace, work: Path) -> list[dict]:
    path = work / size
    if not (path / "config.json").is_file():
        print(f"building {size} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--build", size, "--path", str(path)], check=True)
    rows = []
    for mode in a.modes.split(","):
        print(f"{size} {mode} ...", file=sys.stderr, flush=True)
        env = dict(os.environ)
        if a.mmap_threshold:  # glibc: blocks this large are mmapped and returned to the system when freed
            env.update(MALLOC_MMAP_THRESHOLD_=str(a.mmap_threshold), MALLOC_TRIM_THRESHOLD_=str(a.mmap_threshold))
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--path", str(path), "--batch",
                              str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps), "--rank", str(a.rank)],
                             check=True, capture_output=True, text=True, env=env)
        rows.append({"size": size, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def predicted(size: str, mode: str, a: argparse.Namespace, runtime_mb: float, act_dtype: str | None = None):
    weights, ckpt = MODES[mode]
    return predict(SIZES[size], weights, ckpt, a.batch, a.seq, a.rank, runtime_mb * 2**20, act_dtype)


def table(rows: list[dict], a: argparse.Namespace) -> str:
    lines = ["| size | params | mode | measured peak MB | step s | predicted MB (runtime + weights + adapter + "
             "activations + workspace) | error |", "|---|---|---|---|---|---|---|"]
    errors = []
    for r in rows:
        act = "fp32" if MODES[r["mode"]][0] == "nf4" and r["compute_dtype"] == "fp32" else None
        p = predicted(r["size"], r["mode"], a, r["runtime_mb"], act).as_mb()
        err = p["total"] / r["peak_rss_mb"] - 1
        errors.append(abs(err))
        parts = " + ".join(f"{p[k]:.0f}" for k in ("runtime", "weights", "adapter", "activations", "workspace"))
        lines.append(f"| {r['size']} | {SIZES[r['size']].params() / 1e9:.2f} B | {r['mode']} | "
                     f"{r['peak_rss_mb']:.0f} (mean {r.get('memory_mean_mb', 0):.0f}, p99 "
                     f"{r.get('memory_p99_mb', 0):.0f}) | {r['median_step_s']:.2f} | {p['total']:.0f} = {parts} | "
                     f"{err:+.1%} |")
    lines.append(f"\nlargest |error|: {max(errors):.1%} (target: within 15 %); runtime baseline (RSS with torch, "
                 f"transformers, peft, bitsandbytes imported): {rows[0]['runtime_mb']:.0f} MB")
    return "\n".join(lines)


def predict_table(name: str, a: argparse.Namespace) -> str:
    shape = SIZES[name]
    lines = [f"{name}: {shape.params() / 1e9:.2f} B parameters, LoRA q,v r={a.rank}, batch {a.batch} x {a.seq} "
             f"tokens, on a {a.gpu_gb:g} GB GPU (CUDA allocated; add ~0.5-1 GB for the CUDA context)",
             "| mode | weights GB | adapter+AdamW GB | activations GB | workspace GB | total GB | fits |",
             "|---|---|---|---|---|---|---|"]
    for mode, (weights, ckpt) in MODES.items():
        act = "bf16" if weights == "nf4" else None  # a GPU computes 4-bit layers in bf16
        p = predict(shape, weights, ckpt, a.batch, a.seq, a.rank, 0.0, act)
        gb = {k: v / 2**30 for k, v in p.__dict__.items()}
        total = p.total / 2**30
        lines.append(f"| {mode} | {gb['weights']:.1f} | {gb['adapter']:.2f} | {gb['activations']:.1f} | "
                     f"{gb['workspace']:.2f} | {total:.1f} | {'yes' if total < a.gpu_gb else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(MEASURED), help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="training steps per mode (the first is not timed)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--mmap-threshold", type=int, help="glibc MALLOC_MMAP_THRESHOLD_ for the measured processes "
                    "(e.g. 1048576: freed large blocks leave RSS; default: glibc's own, dynamic, except that the "
                    "NF4 mode's Runtime sets 1 MiB as every quantized CPU run does)")
    ap.add_argument("--work", help="folder for the built models (default: a temporary folder)")
    ap.add_argument("--json", help="also write the measured rows here")
    ap.add_argument("--from-json", help="print the tables from rows a previous --json run wrote; measure nothing")
    ap.add_argument("--predict", metavar="SIZE", help="print the prediction for a named size; measure nothing")
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for s in [a.predict] if a.predict else a.sizes.split(","):
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; known: {', '.join(SIZES)}")
    unknown = [m for m in a.modes.split(",") if m not in MODES]
    if unknown:
        ap.error(f"unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")
    if a.build:
        build(a.build, Path(a.path))
        return 0
    if a.child:
        print(json.dumps(child(a.path, a.child, a.batch, a.seq, a.steps, a.rank)))
        return 0
    if a.predict:
        print(predict_table(a.predict, a))
        return 0
    if a.from_json:
        print(table(json.loads(Path(a.from_json).read_text()), a))
        return 0
    if a.work:
        Path(a.work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eft-scale-", dir=a.work) as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        rows = [r for size in a.sizes.split(",") for r in measure(size, a, work)]
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(table(rows, a))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    raise SystemExit(main())
