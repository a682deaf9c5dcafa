"""PiSSA's initialisation: exact SVD against randomized SVD (``init_lora_weights="pissa_niter_N"``) on a large matrix.

    python benchmarks/svd_time.py                       # 4096 x 4096 (a LLaMA-7B attention projection), r = 16
    python benchmarks/svd_time.py --size 1024 --repeats 1

PiSSA (Meng et al. 2024, arXiv 2404.02948) initialises A and B from the top-r singular triplets of W. PEFT's
``init_lora_weights="pissa"`` takes a full SVD of every adapted matrix (``torch.linalg.svd``); ``pissa_niter_N``
takes ``torch.svd_lowrank(W, q=r, niter=N)`` (Halko et al.'s randomized range finder with N power iterations).
The matrix has a power-law spectrum (σ_i ∝ i^-0.5, as trained weights roughly do; a Gaussian matrix's flat
spectrum is the worst case for randomized SVD). Reported: median time of each, and the error of the rank-r
reconstruction relative to ||W||_F, for the exact top-r (the optimum) and the randomized one.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, median, table


def matrix(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    s = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    return (u * s) @ v.t()


def rel_error(w: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.linalg.norm(w - (u * s) @ v.t()) / torch.linalg.norm(w))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--niter", default="4,16", help="power iterations of the randomized SVD (comma list)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--matrices", type=int, default=64, help="adapted matrices in the model (LLaMA-7B Q,V: 64)")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {machine()}")
    w, r = matrix(a.size), a.rank
    times: dict[str, list[float]] = {"exact (torch.linalg.svd)": []}
    times.update({f"randomized, niter={n}": [] for n in a.niter.split(",")})
    errors: dict[str, float] = {}
    for _ in range(a.repeats):
        for name in times:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            if name.startswith("exact"):
                u, s, vh = torch.linalg.svd(w, full_matrices=False)
                u, s, v = u[:, :r], s[:r], vh[:r].t()
            else:
                u, s, v = torch.svd_lowrank(w, q=r, niter=int(name.split("=")[1]))
            times[name].append(time.perf_counter() - t0)
            errors[name] = rel_error(w, u, s, v)
    ref = median(times["exact (torch.linalg.svd)"])
    rows = [[n, median(t), ref / median(t), errors[n], median(t) * a.matrices / 60] for n, t in times.items()]
    print(f"\n### {a.size} x {a.size}, rank {r}, {a.repeats} repeats\n")
    print(table(["SVD", "median s", "speed-up", "rank-r relative error", f"minutes for {a.matrices} matrices"],
                rows))


if __name__ == "__main__":
    main()
