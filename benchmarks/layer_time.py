"""One adapted projection at large-model size: LoRA and DoRA (ours and stock PEFT) against the frozen layer.

    python benchmarks/layer_time.py                          # 4096 x 4096 (a LLaMA-7B projection), 1024 tokens, r=16
    python benchmarks/layer_time.py --size 1024 --tokens 512 --repeats 5

MiniLM's 384 × 384 projections hide what DoRA costs: PEFT's DoRA forms BA (an identity matrix pushed through both
factors) and W + s·BA, an (out × in) matrix, and takes its row norms on every forward; at 4096 × 4096 that is 16 M
elements per layer per step. Here one ``nn.Linear`` with bias, in a module PEFT can adapt, steps forward and
backward (gradients for the input and the adapter's parameters) on a (tokens × in) activation, variants
interleaved, medians reported:

- ``frozen``: the layer alone, frozen, input gradient only (the floor of any adapter);
- ``lora``: PEFT's LoRA layer with our low-rank product (``efficientft.lowrank``); ``lora-peft``: stock PEFT;
- ``dora``: our ``DoraLinear``; ``dora-peft``: PEFT's ``use_dora=True``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, median, table
from peft import LoraConfig, get_peft_model

from efficientft.lowrank import use_fast_lora
from efficientft.methods.dora import DoraLinear


class One(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def variants(d: int, r: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base = One(d)
    out: dict[str, torch.nn.Module] = {}
    frozen = One(d)
    frozen.load_state_dict(base.state_dict())
    frozen.requires_grad_(False)
    out["frozen"] = frozen
    for name, fast, dora in [("lora", True, False), ("lora-peft", False, False), ("dora-peft", False, True)]:
        m = One(d)
        m.load_state_dict(base.state_dict())
        cfg = LoraConfig(r=r, lora_alpha=r, target_modules=["proj"], use_dora=dora)
        if fast:
            use_fast_lora(cfg)
        out[name] = get_peft_model(m, cfg)
    m = One(d)
    m.load_state_dict(base.state_dict())
    m.proj = DoraLinear(m.proj, r, 1.0, 0.0)
    out["dora"] = m
    for name, model in out.items():
        if name.endswith("-peft") or name == "lora":
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.01)  # B = 0 at init would let some kernels skip work
        elif name == "dora":
            torch.nn.init.normal_(model.proj.lora_B.weight, std=0.01)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per block (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {machine()}")
    models = variants(a.size, a.rank)
    x = torch.randn(a.tokens, a.size)
    times: dict[str, list[float]] = {n: [] for n in models}
    for r in range(a.repeats):
        names = list(models)
        for n in names[r % len(names):] + names[: r % len(names)]:
            for i in range(a.iters + 1):
                xi = x.clone().requires_grad_(True)
                t0 = time.perf_counter()
                models[n](xi).sum().backward()
                if i:
                    times[n].append(time.perf_counter() - t0)
                models[n].zero_grad(set_to_none=True)
    ref, lora = median(times["frozen"]), median(times["lora"])
    rows = [[n, 1e3 * median(t), median(t) / ref, median(t) / lora] for n, t in times.items()]
    print(f"\n### one {a.size} x {a.size} projection, {a.tokens} tokens, rank {a.rank}, forward + backward\n")
    print(table(["variant", "median ms", "x frozen", "x LoRA (ours)"], rows))


if __name__ == "__main__":
    main()
