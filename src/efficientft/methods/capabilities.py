"""What a method can do, declared once in its class body and read by ``prepare``, validation and the conformance tests.

Code never infers a capability from a method's name, its base class or the text of an error: it reads these fields.
Each registered method declares its own ``capabilities = Capabilities(...)`` (it is not inherited: a variant that
rewrites base weights must not pass for its parent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a target is for a method:
#   "linear"    nn.Linear (or Conv1D) modules chosen by role or name pattern (LoRA, (IA)³, full, BitFit ...)
#   "positions" sub-layer positions the method inserts modules at (bottleneck adapters after attention / FFN)
#   "none"      no module is targeted: the method changes the input sequence (prompt / prefix tuning) or a fixed
#               set of parameters (LayerNorm tuning); --targets is refused unless it is the default
TargetKind = Literal["linear", "positions", "none"]


@dataclass(frozen=True)
class Capabilities:
    targets: TargetKind = "linear"
    # May the method take the targets "all" (every parameter of the model)? Only full fine-tuning can.
    all_targets: bool = False
    # Can it adapt one role's rows of a fused projection (GPT-2 ``c_attn`` = [W_q | W_k | W_v])?
    fused_slices: bool = False
    # Does it train parameters that belong to W_v (so λ of the attention strategy has something to scale)? A method
    # without them refuses λ ≠ 1 with one line instead of silently ignoring it.
    v_role: bool = True
    # Has a rank (``method_args.rank``) that must fit every adapted module's shape.
    rank: bool = False
    # May the frozen base be quantized (--quantize 4bit|8bit)? With the reason when not.
    quantized_base: bool = False
    quantized_base_reason: str = "it has not been made to work with a quantized base"
    # Works with generation tasks (causal LMs judged by what they generate).
    generation: bool = True
    # Step checkpoints restore it exactly (its own state is in state_dict / load_state_dict).
    resume: bool = True
    # Defines merge(): the learned update folded into plain weights.
    merge: bool = False
    # How export() writes what was learned: "peft" (a PEFT adapter folder), "efficientft" (our safetensors),
    # "model" (a full transformers model folder).
    export: Literal["peft", "efficientft", "model"] = "efficientft"
    # Does the method perform its own parameter update (zeroth-order: forward passes only, no backward)?
    owns_update: bool = False
