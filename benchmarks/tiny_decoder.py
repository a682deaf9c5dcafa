"""Save a tiny randomly initialised causal LM (LLaMA or GPT-2 architecture) with the bundled MiniLM vocabulary.

No pretrained decoder is on these machines, so the generation track's mechanics and the synthetic task are shown
on such a model (README, "Generative tasks"):

    python benchmarks/tiny_decoder.py --arch llama --out models/tiny-llama
    eft run --task synthetic-reverse --model models/tiny-llama --method full --targets all ...

MiniLM's WordPiece vocabulary has no EOS token; the generation kind uses its [SEP] as EOS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gen_fixtures import save_causal  # noqa: E402 - one definition of the tiny models, shared with the tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("llama", "gpt2"), default="llama")
    ap.add_argument("--out", required=True, help="the model folder to write")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    from efficientft.models import bundled_minilm

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_causal(out, a.arch, bundled_minilm(), a.hidden, a.layers)
    print(f"saved a random {a.arch} (hidden {a.hidden}, {a.layers} layers) to {out}")


if __name__ == "__main__":
    main()
