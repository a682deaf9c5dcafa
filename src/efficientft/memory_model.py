"""Predict the training memory of LoRA on a LLaMA-architecture model before renting the hardware.

bytes = runtime baseline + weights + adapter (parameters, gradients, AdamW's two moments) + activations kept for
the backward pass + the backward pass's working set. Each term is counted from the architecture:

- **weights**: parameters × bytes per parameter of their storage: fp32 4, bf16 2; NF4 (QLoRA) stores the
  decoder's linear weights in 4 bits = 0.5 byte plus one 8-bit block scale per 64 weights and, with double
  quantisation, one fp32 scale per 256 of those (0.5 + 1/64 + 4/16384 ≈ 0.516 byte); embeddings, norms and the
  head stay in the load dtype. The largest linear weight is also held dequantized once at a time (working set).
- **adapter**: LoRA on W_q and W_v, r·(d_in + d_out) per module, fp32 parameter + gradient + 2 AdamW moments =
  16 bytes per trainable parameter (the classification head counts as trainable too).
- **activations**, per layer per token, for a frozen base with adapters (a frozen matmul keeps no input; autograd
  keeps what the gradient *with respect to the input* needs): the two RMSNorms keep their fp32 input and
  normalised output (4h values in fp32), attention keeps the rotated Q, K, V and its output (2h + 2·kv values),
  the SwiGLU MLP keeps the gate output, its SiLU and the up projection (3·I values), LoRA keeps its r-dim hidden
  (2r). With gradient checkpointing only each layer's input (h values) is kept, plus one layer's activations
  while it is recomputed.
- **backward working set**: a layer's activation gradients (2h + 3·I per token) live at once.
- **runtime baseline**: what the process holds before the model exists (the CPU: the RSS with torch and the
  libraries imported, measured by ``benchmarks/scale.py``; a GPU: the CUDA context, not in ``memory_allocated``).

The benchmark checks the formula against measurements (``benchmarks/scale.py``); ``--predict`` applies it to a
named model on a named GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values + 8-bit block scales + double-quantised fp32 scales
WEIGHT_MODES = ("fp32", "bf16", "nf4")


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a LLaMA-architecture model that set its memory."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int = 32000

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_params(self) -> int:
        """Parameters of the decoder's linear layers (what 4-bit quantisation stores in 4 bits)."""
        h, i = self.hidden, self.intermediate
        return self.layers * (2 * h * h + 2 * h * self.kv_dim + 3 * h * i)

    def other_params(self, num_labels: int = 2) -> int:
        """Embeddings, norms and the classification head (kept in the load dtype)."""
        return self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden + self.hidden * num_labels

    def params(self, num_labels: int = 2) -> int:
        return self.linear_params() + self.other_params(num_labels)

    def config_kwargs(self) -> dict[str, int]:
        """``transformers.LlamaConfig`` arguments."""
        return {"hidden_size": self.hidden, "num_hidden_layers": self.layers, "intermediate_size": self.intermediate,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab}


# randomly initialised sizes the benchmark measures, and public shapes to predict
SIZES = {
    "tiny": LlamaShape(64, 2, 128, 4, 2, vocab=1000),  # for the smoke test
    "0.3b": LlamaShape(1024, 24, 2816, 16, 16),
    "0.6b": LlamaShape(1536, 20, 4096, 16, 16),
    "1b": LlamaShape(2048, 22, 5632, 32, 4),  # TinyLlama-1.1B's shape
    "llama-7b": LlamaShape(4096, 32, 11008, 32, 32),
    "llama-8b": LlamaShape(4096, 32, 14336, 32, 8, vocab=128256),  # Llama-3-8B
    "llama-70b": LlamaShape(8192, 80, 28672, 64, 8, vocab=128256),
}


@dataclass
class Prediction:
    runtime: float
    weights: float
    adapter: float
    activations: float
    workspace: float

    @property
    def total(self) -> float:
        return self.runtime + self.weights + self.adapter + self.activations + self.workspace

    def as_mb(self) -> dict[str, float]:
        return {k: v / 2**20 for k, v in {**asdict(self), "total": self.total}.items()}


def lora_params(shape: LlamaShape, rank: int, num_labels: int = 2) -> int:
    """LoRA on W_q (h → h) and W_v (h → kv) of every layer, plus the trained head."""
    h = shape.hidden
    return shape.layers * rank * ((h + h) + (h + shape.kv_dim)) + h * num_labels


def predict(shape: LlamaShape, weights: str, checkpointing: bool, batch: int, seq: int, rank: int = 16,
            runtime_bytes: float = 0.0, act_dtype: str | None = None, num_labels: int = 2) -> Prediction:
    """Predicted peak training memory (bytes, by component) of LoRA q,v at ``rank``; see the module docstring.

    ``weights``: fp32, bf16 or nf4 (non-linear parameters then stay fp32, as bitsandbytes loads them by default).
    ``act_dtype``: the dtype activations are computed in (default: bf16 for bf16 weights, else fp32).
    """
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    h, i, kv, n_layers = shape.hidden, shape.intermediate, shape.kv_dim, shape.layers
    act = BYTES[act_dtype or ("bf16" if weights == "bf16" else "fp32")]
    tokens = batch * seq
    if weights == "nf4":
        w = shape.linear_params() * NF4_BYTES + shape.other_params(num_labels) * BYTES["fp32"]
        dequant = h * i * act  # the largest weight, dequantized for its matmul
    else:
        w = shape.params(num_labels) * BYTES[weights]
        dequant = 0.0
    adapter = lora_params(shape, rank, num_labels) * 16.0
    per_layer_token = 4 * h * BYTES["fp32"] + (2 * h + 2 * kv + 3 * i + 2 * rank) * act
    if checkpointing:
        acts = n_layers * tokens * h * act + tokens * per_layer_token
    else:
        acts = n_layers * tokens * per_layer_token
    workspace = tokens * (2 * h + 3 * i) * act + dequant
    return Prediction(runtime_bytes, w, adapter, acts, workspace)


# What :func:`predict_run` describes: the runs the formula was built for and checked against (BENCHMARKS.md §7)
LLAMA_TYPES = ("llama", "mistral")
SCOPE = "LoRA on targets qv of a LLaMA/Mistral-architecture classifier, fp32/bf16/NF4 weights, one process"


def shape_of(config: object) -> LlamaShape | None:
    """The :class:`LlamaShape` of a transformers config of a LLaMA-architecture model; None for any other."""
    if getattr(config, "model_type", None) not in LLAMA_TYPES:
        return None
    try:
        heads = int(config.num_attention_heads)  # type: ignore[attr-defined]
        return LlamaShape(int(config.hidden_size), int(config.num_hidden_layers),  # type: ignore[attr-defined]
                          int(config.intermediate_size), heads,  # type: ignore[attr-defined]
                          int(getattr(config, "num_key_value_heads", None) or heads),
                          int(config.vocab_size))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None


def predict_run(config: object, *, method: str, targets: str, rank: object, classifier: bool, weights: str | None,
                act_dtype: str, checkpointing: bool, tokens: int, num_labels: int, runtime_bytes: float,
                sharded: bool = False, feature_cache: bool = False) -> tuple[Prediction | None, str]:
    """The prediction for one run, or (None, why not) when the run is outside :data:`SCOPE`.

    ``tokens``: the most tokens (padding included) of one micro-batch (activations scale with batch × length);
    ``runtime_bytes``: what the process held before the model loaded (the CPU's RSS at the run's start; 0 on a GPU,
    whose ``memory_allocated`` has no CUDA context).
    """
    shape = shape_of(config)
    if shape is None:
        why = f"model type {getattr(config, 'model_type', None)!r} is not LLaMA-architecture"
    elif method != "lora" or targets != "qv" or not isinstance(rank, int):
        why = f"method {method!r} on targets {targets!r} (the formula counts LoRA q,v's activations)"
    elif not classifier:
        why = "not a classifier (a language-model head's logits are not counted)"
    elif weights not in WEIGHT_MODES or act_dtype not in BYTES:
        why = f"weights {weights} computed in {act_dtype}"
    elif sharded or feature_cache:
        why = "sharded across processes" if sharded else "trained from a feature cache"
    elif tokens <= 0:
        why = "no training step"
    else:
        return predict(shape, weights, checkpointing, 1, tokens, rank, runtime_bytes, act_dtype, num_labels), ""
    return None, f"outside the memory model ({SCOPE}): {why}"


def compare(predicted_mb: float | None, measured_mb: object) -> dict[str, float | None]:
    """The residual (measured − predicted, MB) and relative error ((predicted − measured) / measured) of a run."""
    if predicted_mb is None or not isinstance(measured_mb, (int, float)) or measured_mb <= 0:
        return {"predicted_peak_residual_mb": None, "predicted_peak_error": None}
    return {"predicted_peak_residual_mb": measured_mb - predicted_mb,
            "predicted_peak_error": (predicted_mb - measured_mb) / measured_mb}


__all__ = ["LlamaShape", "SIZES", "Prediction", "predict", "lora_params", "NF4_BYTES", "WEIGHT_MODES",
           "predict_run", "compare", "shape_of", "SCOPE"]
