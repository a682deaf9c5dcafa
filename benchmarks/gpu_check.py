"""The GPU acceptance run: one command, every CUDA path the product has, one Markdown table of pass/fail.

    python benchmarks/gpu_check.py --device cuda                  # one H100, at most 8 minutes, no network
    python benchmarks/gpu_check.py --device cpu --tiny            # the rehearsal: tiny shapes, seconds (the tests)

Every model is built from a config with random weights (no download); the tokenizer is the bundled MiniLM's.
The checks, each a row of the table (what, device, figure, pass/fail):

- ``eft run`` (``efficientft.api.run``, the product's own path: store, loop, GradScaler, record) in bf16 and in
  fp16 (GradScaler) for LoRA r=8 on W_q, W_v with λ = 4, DoRA r=8 on W_q, W_v and full fine-tuning, on a
  RoBERTa-base-shaped encoder (12 layers, hidden 768; MiniLM's vocabulary) trained full-batch on a small SST-2
  subset: passes when the run is ``done`` and the loss falls (mean of the last 3 steps below the first 3's). The
  figure gives tokens/s and MFU from the run record (``n/a`` where the record has no ``mfu``).
- QLoRA: LoRA q,v r=16 on an NF4 base of a 1.0 B LLaMA-shaped decoder (TinyLlama's shape) with gradient
  checkpointing, and the same without: the record's peak (``torch.cuda.max_memory_allocated``, less what was
  allocated before the run) against ``efficientft.memory_model.predict``; passes within ±25 % on CUDA, and
  checkpointing must lower the peak. On a CPU the peak is the whole process's RSS and the formula's runtime term
  is the RSS the run started from (the same tolerance, where the high-water mark could be reset at the start).
- generation: ``efficientft.generation.generate`` (sorted, left-padded batches, KV cache) against a
  per-example ``model.generate`` loop on the same random LLaMA and prompts (``benchmarks/generation.py``):
  passes when every text is identical (and, on CUDA, when batching is faster).
- step time (``benchmarks/step_time.py``'s interleaved measurement): LoRA q,v against the frozen-backbone floor
  and against full fine-tuning, bf16, tokens/s; on CUDA LoRA must not beat the floor by more than 10 %. In
  ``--tiny`` mode only that the figures were measured (a shared 2-core CPU times tiny models as noise).

Every check runs even when an earlier one fails (its row says FAIL with the error's first line); the exit status is
1 if any check failed. ``--budget-s`` (default 480) skips the sections that would start after it, each marked
``skipped: budget``. The table is printed and written to ``$OUT/gpu_check.md`` when ``$OUT`` is set (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, table

PASS, FAIL = "pass", "FAIL"
MEMORY_TOLERANCE = 0.25  # |measured / predicted - 1| on CUDA (the CPU measurements were within 15 %, BENCHMARKS §7)
FLOOR_SLACK = 1.10  # on CUDA a LoRA step may not be faster than 1/1.10 of the floor's (nothing is cheaper)


# ---------------------------------------------------------------------------------------------- shapes
def shapes(tiny: bool) -> dict[str, Any]:
    """Every size the checks use: the real run's, or the rehearsal's (tiny shapes, a few steps)."""
    if tiny:
        return {"encoder": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
                "train": dict(steps=12, batch_size=16, max_train=16, max_eval=16, max_length=64), "full_lr": 1e-3,
                "decoder": (64, 2, 128, 4, 2),
                "qlora": dict(steps=4, batch_size=4, max_train=16, max_eval=4, max_length=64),
                "gen": dict(hidden=64, layers=2, n=4, max_new_tokens=8, batch_size=4),
                "step": dict(batch_size=8, max_length=64, steps=3, repeats=2)}
    return {"encoder": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
            "train": dict(steps=30, batch_size=32, max_train=32, max_eval=64, max_length=128), "full_lr": 1e-4,
            "decoder": (2048, 22, 5632, 32, 4),  # TinyLlama-1.1B's shape (memory_model.SIZES["1b"])
            "qlora": dict(steps=6, batch_size=16, max_train=96, max_eval=16, max_length=64),
            "gen": dict(hidden=384, layers=6, n=64, max_new_tokens=64, batch_size=32),
            "step": dict(batch_size=32, max_length=128, steps=20, repeats=3)}


def save_encoder(path: Path, sizes: dict) -> Path:
    """A RoBERTa-shaped sequence classifier, random weights, MiniLM's tokenizer (and so its vocabulary and pad 0)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from efficientft.models import bundled_minilm

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=30522, max_position_embeddings=514, pad_token_id=0, type_vocab_size=2, **sizes)
    RobertaForSequenceClassification(cfg).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(bundled_minilm())).save_pretrained(str(path))
    return path


def save_decoder(path: Path, shape: Any, device: str) -> Path:
    """A LLaMA-shaped sequence classifier, random weights (initialised on ``device``: seconds for 1 B on a GPU),
    saved in fp32 as the memory model assumes the non-quantized parameters load."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from efficientft.models import bundled_minilm

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForSequenceClassification(LlamaConfig(**shape.config_kwargs(), max_position_embeddings=512,
                                                           pad_token_id=0))
    model.save_pretrained(str(path))
    del model
    AutoTokenizer.from_pretrained(str(bundled_minilm())).save_pretrained(str(path))
    return path


# ---------------------------------------------------------------------------------------------- helpers
def free(device: str) -> float:
    """Collect garbage; the MB still allocated on a CUDA device (what a run's peak includes but did not cause)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated() / 2**20
    return 0.0


def eft_run(config: dict, store: Path) -> tuple[dict, list[float]]:
    """``eft run`` through the API (store, loop and record as the command has them); the record and train losses."""
    import efficientft.api as api
    from efficientft.store import Store

    record = api.run({"progress": False, "warmup_ratio": 0.0, **config}, store=store, force=True)
    losses = [v for split, _, name, v in Store(store).curves(record["run_key"]) if split == "train" and name == "loss"]
    return record, losses


def falls(losses: list[float], k: int = 3) -> bool:
    return len(losses) >= 2 * k and all(map(math.isfinite, losses)) and sum(losses[-k:]) < sum(losses[:k])


def loss_text(losses: list[float], k: int = 3) -> str:
    if not losses:
        return "no loss recorded"
    return f"loss {sum(losses[:k]) / len(losses[:k]):.3f} → {sum(losses[-k:]) / len(losses[-k:]):.3f}"


def mfu_text(record: dict) -> str:
    mfu = (record.get("cost") or {}).get("mfu")
    return f"MFU {100 * mfu:.1f} %" if isinstance(mfu, (int, float)) and math.isfinite(mfu) else "MFU n/a"


def fp16_unsupported(device: str) -> str:
    """Why fp16 with a GradScaler cannot run on ``device`` in this torch ('' when it can)."""
    try:
        torch.amp.GradScaler(device)
        with torch.autocast(device, dtype=torch.float16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except Exception as e:  # noqa: BLE001 - the reason is the row's figure
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return ""


# ---------------------------------------------------------------------------------------------- the checks
class Check:
    """The table under construction: one row per check; a section that raises fails its row, the rest still run."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.rows, self.t0 = a, [], time.perf_counter()
        self.device = a.device
        self.sizes = shapes(a.tiny)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.store = self.work / "runs.sqlite"
        self.records: dict[str, dict] = {}
        self._encoder: Path | None = None

    @property
    def where(self) -> str:
        return torch.cuda.get_device_name() if self.device == "cuda" else "CPU"

    def row(self, what: str, figure: str, ok: bool | str) -> None:
        status = ok if isinstance(ok, str) else PASS if ok else FAIL
        self.rows.append([what, self.where, figure, status])

    def section(self, name: str, fn: Any) -> None:
        if time.perf_counter() - self.t0 > self.a.budget_s:
            self.row(name, f"not started: {time.perf_counter() - self.t0:.0f} s > --budget-s {self.a.budget_s:g}",
                     "skipped: budget")
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failure does not hide the other checks
            first = (str(e).strip().splitlines() or [""])[0][:160]
            self.row(name, f"{type(e).__name__}: {first}", False)

    def encoder(self) -> Path:
        if self._encoder is None:
            self._encoder = save_encoder(self.work / "encoder", self.sizes["encoder"])
        return self._encoder

    # H100: 6 runs x (load ~3 s + 30 steps of 32 x <=128 tokens ~2 s + evaluation ~1 s) + CUDA start: ~60 s
    def training(self) -> None:
        for precision in ("bf16", "fp16"):
            why = fp16_unsupported(self.device) if precision == "fp16" else ""
            for label, method in (("LoRA Q,V λ=4", {"method": "lora", "targets": "qv", "lr_ratio": 4.0,
                                                    "method_args": {"rank": 8}, "lr": 1e-3}),
                                  ("DoRA Q,V", {"method": "dora", "targets": "qv", "method_args": {"rank": 8},
                                                "lr": 1e-3}),
                                  ("full fine-tuning", {"method": "full", "targets": "all",
                                                        "lr": self.sizes["full_lr"]})):
                what = f"eft run {label}, {precision}"
                if why:
                    self.row(what, f"fp16 with a GradScaler: {why}", f"skipped ({self.where})")
                    continue
                self.section(what, lambda m=method, p=precision, w=what: self._train(w, m, p))

    def _train(self, what: str, method: dict, precision: str) -> None:
        free(self.device)
        cfg = {"task": "sst2", "model": str(self.encoder()), "device": self.device, "precision": precision,
               "schedule": "constant", **self.sizes["train"], **method}
        record, losses = eft_run(cfg, self.store)
        self.records[what] = record
        cost = record.get("cost") or {}
        skipped = len((record.get("details") or {}).get("skipped_steps") or [])
        figure = (f"{loss_text(losses)} ({len(losses)} steps{f', {skipped} skipped by the GradScaler' if skipped else ''}); "
                  f"{cost.get('tokens_per_s', float('nan')):.0f} tokens/s; {mfu_text(record)}")
        if record["status"] != "done":
            figure = f"status {record['status']}: {((record.get('error') or '').splitlines() or [''])[0][:160]}"
        self.row(what, figure, record["status"] == "done" and falls(losses))

    # H100: build + save the 1.0 B decoder in fp32 (~20 s), 2 runs x (load + quantize ~20 s, 6 steps, eval): ~90 s
    def qlora(self) -> None:
        from efficientft.memory_model import LlamaShape

        shape = LlamaShape(*self.sizes["decoder"], vocab=30522)
        folder = save_decoder(self.work / "decoder", shape, self.device)
        peaks = {}
        for ckpt in (True, False):
            what = f"QLoRA NF4, LoRA Q,V r=16, {'with' if ckpt else 'without'} checkpointing: peak vs prediction"
            self.section(what, lambda c=ckpt, w=what: peaks.__setitem__(c, self._qlora(w, folder, shape, c)))
        if self.device == "cuda" and len(peaks) == 2 and None not in peaks.values():
            self.row("QLoRA: checkpointing lowers the peak", f"{peaks[True]:.0f} MB with, {peaks[False]:.0f} MB "
                     "without", peaks[True] < peaks[False])

    def _qlora(self, what: str, folder: Path, shape: Any, ckpt: bool) -> float | None:
        from efficientft.memory_model import predict

        before = free(self.device)
        s = self.sizes["qlora"]
        compute = "bf16" if self.device == "cuda" else "fp32"  # bitsandbytes on CPU: fp32 (tests/test_large.py)
        cfg = {"task": "rte", "model": str(folder), "device": self.device, "method": "lora", "targets": "qv",
               "method_args": {"rank": 16}, "lr": 1e-3, "quantize": "4bit", "quant_compute_dtype": compute,
               "precision": compute, "gradient_checkpointing": ckpt, "schedule": "constant", **s}
        record, losses = eft_run(cfg, self.store)
        cost = record.get("cost") or {}
        # RTE pairs are longer than 64 tokens, so every batch is padded to max_length: batch x max_length tokens
        pred = predict(shape, "nf4", ckpt, s["batch_size"], s["max_length"], rank=16, act_dtype=compute).total / 2**20
        ok = record["status"] == "done" and all(map(math.isfinite, losses)) and bool(losses)
        if self.device == "cuda":
            measured = cost.get("cuda_max_allocated_mb", float("nan")) - before
            error = measured / pred - 1
            figure = (f"measured {measured:.0f} MB (cuda max allocated) vs predicted {pred:.0f} MB: "
                      f"{100 * error:+.1f} % (tolerance ±{100 * MEMORY_TOLERANCE:.0f} %); {loss_text(losses)}")
            ok = ok and abs(error) <= MEMORY_TOLERANCE
        else:  # the whole process's RSS: the formula's runtime term is the RSS the run started from
            measured = cost.get("peak_rss_mb", float("nan"))
            pred += cost.get("rss_start_mb", float("nan"))
            error = measured / pred - 1
            figure = (f"peak RSS {measured:.0f} MB vs predicted {pred:.0f} MB (runtime = the RSS at the run's "
                      f"start): {100 * error:+.1f} %; {loss_text(losses)}")
            if cost.get("peak_rss_since_run_start"):  # else the high-water mark is an earlier run's
                ok = ok and abs(error) <= MEMORY_TOLERANCE
        self.records[what] = record
        self.row(what, figure if record["status"] == "done" else f"status {record['status']}", ok)
        return measured if record["status"] == "done" else None

    # H100: per-example 64 prompts x 64 tokens (~30 s) + batched (~3 s) on a random 384 x 6 LLaMA: ~40 s
    def generation(self) -> None:
        import generation as G
        from transformers import AutoTokenizer

        from efficientft.models import bundled_minilm
        from efficientft.tasks.templates import render_prompt

        g = self.sizes["gen"]
        tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm()))
        model = G.build(g["hidden"], g["layers"], len(tokenizer)).to(self.device)
        try:
            prompts, source = G.gsm8k_prompts(g["n"]), "GSM8K"
        except OSError:  # the machine has no GSM8K copy: arithmetic questions in the same template
            prompts = [render_prompt("alpaca", f"What is {i} plus {3 * i + 1}?") for i in range(g["n"])]
            source = "arithmetic"
        out = G.compare(model, tokenizer, prompts, g["max_new_tokens"], g["batch_size"])
        batched = next(v for k, v in out.items() if k.startswith("batched"))
        ok = out["same_texts"] == out["n"] and (self.device != "cuda" or out["ratio"] > 1)
        self.row("generation: batched greedy vs per-example generate",
                 f"{out['same_texts']}/{out['n']} identical texts ({source} prompts, {g['max_new_tokens']} new "
                 f"tokens); {out['ratio']:.1f}x faster ({batched['tokens_s']:.0f} vs "
                 f"{out['per-example']['tokens_s']:.0f} new tokens/s)", ok)

    # H100: 3 models prepared (~10 s) + 3 variants x 3 repeats x 20 steps of 32 x <=128 tokens (~10 s): ~25 s
    def step_time(self) -> None:
        import step_time as S

        free(self.device)
        a = argparse.Namespace(model=str(self.encoder()), precision="bf16", variants="floor,lora,full",
                               **self.sizes["step"])
        variants = S.VARIANTS
        S.VARIANTS = {k: {**v, "device": self.device} for k, v in variants.items()}  # this check's device
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its own table: the figures go into this one
                out = S.bench_task("rte", a)
        finally:
            S.VARIANTS = variants
        lora, floor, full = out["lora"], out["floor"], out["full"]
        finite = all(math.isfinite(o["median_s"]) and o["median_s"] > 0 for o in out.values())
        rec = next((r for w, r in self.records.items() if w.startswith("eft run LoRA") and "bf16" in w), {})
        self.row("step time: LoRA Q,V vs the frozen-backbone floor",
                 f"{lora['x_floor']:.2f}x floor ({1e3 * lora['median_s']:.1f} vs {1e3 * floor['median_s']:.1f} ms, "
                 f"bf16, batch {a.batch_size}); {lora['tokens_per_s']:.0f} tokens/s; {mfu_text(rec)}",
                 finite and (self.a.tiny or lora["x_floor"] * FLOOR_SLACK >= 1))
        self.row("step time: LoRA Q,V vs full fine-tuning",
                 f"{lora['median_s'] / full['median_s']:.2f}x full ({1e3 * full['median_s']:.1f} ms; "
                 f"{full['tokens_per_s']:.0f} tokens/s full)", finite)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and a few steps (the CPU rehearsal: seconds)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="sections that would start after this many seconds are skipped (marked skipped: budget)")
    ap.add_argument("--out", help="also write the table here (default: $OUT/gpu_check.md when $OUT is set)")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda was asked for but no CUDA GPU is available; use --device cpu --tiny "
              "for the rehearsal.", file=sys.stderr)
        return 2
    c = Check(a)
    try:
        c.training()
        c.section("QLoRA", c.qlora)
        c.section("generation: batched greedy vs per-example generate", c.generation)
        c.section("step time", c.step_time)
    finally:
        shutil.rmtree(c.work, ignore_errors=True)  # the models and the store (4.4 GB for the 1 B decoder)
    wall = time.perf_counter() - c.t0
    text = (f"machine: {machine()}\n\n{table(['check', 'device', 'figure', 'result'], c.rows)}\n\n"
            f"{sum(r[3] == PASS for r in c.rows)} passed, {sum(r[3] == FAIL for r in c.rows)} failed, "
            f"{sum(r[3].startswith('skipped') for r in c.rows)} skipped; {wall:.0f} s wall\n")
    print(text)
    out = a.out or (str(Path(os.environ["OUT"]) / "gpu_check.md") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
    return 1 if any(r[3] == FAIL for r in c.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
