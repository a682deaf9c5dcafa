"""What a method can do, declared once in its class body and read by ``prepare``, validation and the conformance tests.

Code never infers a capability from a method's name, its base class or the text of an error: it reads these fields.
Each registered method declares its own ``capabilities = Capabilities(...)`` (it is not inherited: a variant that
rewrites base weights must not pass for its parent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
    # Is W_v's bias one of those parameters (BitFit, whose only W_v parameter is the bias)? Then a targeted module's
    # bias carries that module's role (Method.param_roles). Elsewhere biases never get λ (DESIGN: the λ group is
    # W_v's weights' parameters, not every 1-D tensor).
    v_bias: bool = False
    # Has a rank (``method_args.rank``) that must fit every adapted module's shape.
    rank: bool = False
    # May the frozen base be quantized (--quantize 4bit|8bit)? With the reason when not.
    quantized_base: bool = False
    quantized_base_reason: str = "it has not been made to work with a quantized base"
    # Works with generation tasks (causal LMs judged by what they generate).
    generation: bool = True
    # Defines merge(): the learned update folded into plain weights.
    merge: bool = False
    # How export() writes what was learned: "peft" (a PEFT adapter folder), "efficientft" (our safetensors),
    # "model" (a full transformers model folder), "none" (export refuses with one line).
    export: Literal["peft", "efficientft", "model", "none"] = "efficientft"
    # Trains with --gradient-checkpointing (prefix tuning's key/value cache cannot be recomputed by it, in PEFT; a
    # zeroth-order method has no backward pass to save activations for).
    gradient_checkpointing: bool = True
    gradient_checkpointing_reason: str = "PEFT refuses it for this method"
    # Does the method perform its own parameter update (zeroth-order: forward passes only, no backward)?
    owns_update: bool = False
    # Does the run's gradient clipping (max_grad_norm) act on its update? A method that owns its update says so;
    # where it does not (MeZO: the paper's Algorithm 1 steps unclipped), the default norm resolves to none and a
    # norm the user gives is refused, so a default never changes the method's algorithm.
    clipping: bool = True
    # Does it train under FSDP (efficientft.sharding: parameters sharded, the optimizer built on the shards)? A hook
    # that reads or masks whole gradients or weights would see shards, so only methods tested sharded say yes.
    sharding: bool = False
    # Forward arguments the method feeds a sequence classifier by name (prefix tuning: its key/value prefixes as
    # ``past_key_values``). PEFT passes them only where the classifier's forward, or its backbone's, names them
    # (transformers 5.25 renamed BERT's to ``cache``), so a model that takes none is refused before training
    # (:func:`check_model`). A causal LM takes them as a keyword, under either name.
    classifier_inputs: tuple[str, ...] = ()
    # Does it add trainable parameters during training (IncreLoRA's rank growth)? Then the cost figures read the model
    # at the end (trainable and total count), its FLOPs count each step's trainable parameters, and a data-parallel
    # run (whose wrapper holds the parameters it started with) and compile (each growth changes the graph's
    # parameters) are refused.
    grows: bool = False
    # What one training step computes, for its model FLOPs (efficientft.flops): forward passes per batch, and whether
    # a backward pass follows. Backpropagation: 1 and True; MeZO's SPSA: 2 forwards (θ ± εz) and no backward.
    forward_passes: int = 1
    backward: bool = True


def check_run(method: Any, *, targets: str, quantize: str | None, role_ratios: Mapping[str, float],
              lr_ratio: float, default_targets: str, exporting: bool = False,
              gradient_checkpointing: bool = False, max_grad_norm: float | None = None,
              default_max_grad_norm: float | None = None) -> None:
    """Refuse, before any model loads, a run that asks a method for what its capabilities say it cannot do.

    One line each (a ConfigError): targets ``all`` for a method without ``all_targets``; targets other than the
    default for a method that targets nothing or sub-layer positions; a quantized base without ``quantized_base``;
    an export folder for a method whose export is ``"none"``; gradient checkpointing without
    ``gradient_checkpointing``; λ (or a ``role_lr`` for v) ≠ 1 for a method without ``v_role``, which would
    otherwise be stored as applied and never be; a clipping norm other than the default for a method whose update
    is not clipped (``clipping`` False: the default itself resolves to none, see ``efficientft.resolve.resolve``).
    """
    from ..errors import ConfigError

    caps: Capabilities = method.capabilities
    name = method.name
    if targets == "all" and not caps.all_targets:
        raise ConfigError(f"targets 'all' (every weight) is for full fine-tuning only, not {name!r}.")
    if caps.targets == "none" and targets != default_targets:
        raise ConfigError(f"method {name!r} adapts no modules (it changes the input sequence or a fixed set of "
                          f"parameters), so --targets means nothing for it; leave the default {default_targets!r}, "
                          f"got {targets!r}.")
    if caps.targets == "positions" and targets != default_targets:
        raise ConfigError(f"method {name!r} places its modules at sub-layer positions (its own method_args say "
                          f"which), not on --targets; leave the default {default_targets!r}, got {targets!r}.")
    check_quantized(method, quantize)
    if exporting and caps.export == "none":
        raise ConfigError(f"method {name!r} cannot export what it learned (its capabilities declare no export "
                          "format); drop --export-dir.")
    if gradient_checkpointing and not caps.gradient_checkpointing:
        if caps.owns_update:
            raise ConfigError(f"--gradient-checkpointing saves activations for the backward pass; method {name!r} "
                              "has none (it updates from forward passes only): drop the flag.")
        raise ConfigError(f"method {name!r} cannot train with gradient checkpointing "
                          f"({caps.gradient_checkpointing_reason}); drop --gradient-checkpointing.")
    if not caps.clipping and max_grad_norm is not None and max_grad_norm != default_max_grad_norm:
        raise ConfigError(f"method {name!r} owns its update and does not clip it (its paper's algorithm steps "
                          f"unclipped), so max_grad_norm {max_grad_norm:g} would not apply; drop --max-grad-norm "
                          "(or give 0).")
    ratio = float(role_ratios.get("v", 1.0))
    if not caps.v_role and ratio != 1.0:
        what = f"lr_ratio {ratio:g} (W_v's rate)" if lr_ratio != 1.0 else f"role_lr v={ratio:g}"
        raise ConfigError(f"{what} cannot apply to method {name!r}: it trains no parameter of W_v; drop the ratio "
                          "(it must be 1 for this method).")


def check_quantized(method: Any, quantize: str | None) -> None:
    """Refuse a method that cannot train on a quantized base, naming why and the methods that can."""
    if not quantize or method.capabilities.quantized_base:
        return
    from ..errors import ConfigError
    from ._registry import METHODS

    able = sorted(n for n, c in METHODS.items() if c.capabilities.quantized_base)
    raise ConfigError(f"method {method.name!r} cannot train on a {quantize} quantized base: "
                      f"{method.capabilities.quantized_base_reason}. Methods that can: {', '.join(able)}; or drop "
                      "--quantize.")


def check_model(method: Any, model: Any, classifier: bool) -> None:
    """Refuse, in one line before training, a model whose forward cannot take what the method feeds it by name
    (``capabilities.classifier_inputs``; ``classifier``: the model is a sequence classifier), read from the
    signatures of the model's forward and its backbone's, as PEFT reads them."""
    import inspect

    needed = method.capabilities.classifier_inputs
    if not classifier or not needed:
        return
    from ..errors import ConfigError

    backbone = getattr(model, "base_model", model)
    takes = {p for m in {model, backbone} for p in inspect.signature(m.forward).parameters}
    for arg in needed:
        if arg not in takes:
            import transformers

            raise ConfigError(f"method {method.name!r} cannot train {type(model).__name__}: it feeds the model "
                              f"{arg}, which neither its forward nor its backbone's ({type(backbone).__name__}) "
                              f"takes (transformers {transformers.__version__}); choose another method, e.g. "
                              "prompt_tuning or p_tuning, or a model that takes it.")


def describe(caps: Capabilities) -> dict[str, str]:
    """The compact capability columns of ``eft methods`` and the README table: what a target is, λ, a 4-bit base,
    merge, export."""
    targets = caps.targets + ("+slices" if caps.fused_slices else "") + ("+all" if caps.all_targets else "")
    yes = {True: "yes", False: "no"}
    return {"targets": targets, "λ": yes[caps.v_role], "4-bit": yes[caps.quantized_base], "merge": yes[caps.merge],
            "export": caps.export}
