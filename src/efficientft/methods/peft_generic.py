"""The generic ``peft`` method: any PEFT tuner by name, for experiments with tuners that have no method of their own.

``--method peft --method-arg tuner=vera --method-arg r=16`` (or ``method_args: {tuner: vera, r: 16}`` in YAML)
builds PEFT's ``VeraConfig(r=16, ...)`` on the run's targets. The tuner names are PEFT's own
(``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING``, lower case: ``vera``, ``loha``, ``boft``, ``prompt_tuning`` ...);
every other argument must be a field of that config dataclass and of its type (a command-line string is converted
to the field's int, float, bool or list), except the fields this benchmark sets itself (the task type, the targeted
modules, the trained head, Conv1D's layout; a tuner of norms or embeddings, such as ``ln_tuning``, takes its
``target_modules`` by name). Everything else (wrapping, λ, export, reload, merge) is
:class:`~efficientft.methods.peft_backed.PeftMethod`'s.

The capabilities are derived from the tuner, per instance, not claimed for all of them: a prompt-type tuner
(PEFT's ``PromptLearningConfig``: prompt, prefix, p-tuning) or one whose targets are not linear modules (LayerNorm
tuning, trainable tokens) has targets ``none`` and no W_v role, so λ ≠ 1 and non-default targets are refused;
``merge`` holds where the tuner's layers implement PEFT's ``merge``. A quantized base is refused (not checked for
every tuner); the named methods that support one say so.

What this method cannot do is refused in one line naming the method that can, never run silently as something
else: a tuner that needs a hook after every step (AdaLoRA's rank allocation: ``--method adalora``), an
``init_lora_weights`` that needs data or a conversion at export (EVA, CorDA, LoftQ, PiSSA, OLoRA: their own
methods), and the config fields of :data:`REFUSED_ARGS` given at other than their default (``use_dora``: DoRA,
``use_rslora``: rsLoRA, ``layer_replication``: a deeper model, ``target_parameters``: modules outside the targets
...). ``layers_to_transform`` and ``exclude_modules`` take effect here, not in PEFT (which skips the first for
targets named in full, as this benchmark names them): the targets are narrowed, and a narrowing that names no
target or leaves none is refused; ``layers_pattern`` is refused as unneeded. A key of ``rank_pattern`` (alpha,
n_frequency, block_size, lambda) that sets no target is refused (PEFT ignores it); the memory check counts it.
``bias`` (``all``, ``lora_only``) and ``lora_bias`` train biases: they are counted, and one inside a targeted
module has that module's role (W_v's bias learns at λ × the rate).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..errors import ConfigError, did_you_mean, unknown
from ..models.fused import is_conv1d
from ..models.roles import Target
from . import register
from .base import Context, Method, coerce_argument
from .capabilities import Capabilities
from .peft_backed import PeftMethod

# Config fields this benchmark sets (or PEFT fills in) itself: never method arguments.
RESERVED = ("task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
            "inference_mode", "target_modules", "modules_to_save", "fan_in_fan_out", "token_dim",
            "num_transformer_submodules", "num_attention_heads", "num_layers")
# Tuners whose targets are not the linear projections --targets names (norms, token embeddings, attention blocks).
NOT_LINEAR = ("ln_tuning", "trainable_tokens", "adaption_prompt")
# Tuners that need what the generic method does not do, and the named method that does it.
NAMED_ONLY = {"adalora": ("a hook after every step (AdaLoRA's update_and_allocate)", "adalora")}
# init_lora_weights values (by prefix) that need what the generic method does not do, and the method that does.
NAMED_INIT = {"eva": ("EVA's initialisation from data", "eva"), "corda": ("CorDA's initialisation from data", "corda"),
              "loftq": ("LoftQ's quantised initialisation", "loftq"),
              "pissa": ("PiSSA's export as a plain LoRA delta: it changes the base weights", "pissa"),
              "olora": ("OLoRA's export as a plain LoRA delta: it changes the base weights", "olora")}
# Arguments that choose which of the targets are adapted: applied to the targets here, so that what trains is what
# the run's targets say (PEFT skips layers_to_transform for targets named in full, as this benchmark names them).
NARROWING = ("layers_to_transform", "exclude_modules")
# Per-module values keyed by a pattern of the module's name (PEFT's get_pattern_key): each key must reach a target.
PATTERNS = ("rank_pattern", "alpha_pattern", "n_frequency_pattern", "block_size_pattern", "lambda_pattern")
# Config fields (of any tuner) that make another method or need what the generic method does not do, unless given
# at their default: why, and what to use instead.
REFUSED_ARGS = {
    "use_dora": "makes the tuner DoRA; use --method dora",
    "use_rslora": "makes the tuner rsLoRA (scale α/√r); use --method rslora",
    "loftq_config": "is LoftQ's (quantised initialisation); use --method loftq",
    "eva_config": "is EVA's (initialisation from data); use --method eva",
    "corda_config": "is CorDA's (initialisation from data); use --method corda",
    "kasa_config": "is KaSA's; use --method kasa",
    "lora_ga_config": "is LoRA-GA's, an initialisation from gradients on data that the generic method does not "
                      "compute; use init_lora_weights true or gaussian",
    "layer_replication": "changes the model's depth (it stacks copies of layers), which export and merge here do "
                         "not reproduce; adapt the model as it is",
    "target_parameters": "adapts parameters outside the run's targets; choose the modules with --targets",
    "trainable_token_indices": "trains token embeddings outside the run's targets; use --method-arg "
                               "tuner=trainable_tokens",
    "ensure_weight_tying": "ties trained embeddings, which the generic method does not train",
    "megatron_config": "is for Megatron-LM's parallel layers; efficientft loads transformers models",
    "megatron_core": "is for Megatron-LM's parallel layers; efficientft loads transformers models",
    "use_qalora": "is QA-LoRA's, for a GPTQ-quantised base, which the generic method refuses",
    "qalora_group_size": "is QA-LoRA's, for a GPTQ-quantised base, which the generic method refuses",
    "alora_invocation_tokens": "makes the tuner activated LoRA (adapting only after invocation tokens), which no "
                               "task here puts in its inputs; drop it",
    "velora_config": "makes the tuner VeLoRA (compressed activations in the backward pass), which is not checked "
                     "here; drop it",
    "monteclora_config": "makes the tuner MonteCLoRA (sampled LoRA factors), which is not checked here; drop it",
    "use_bdlora": "makes the tuner block-diagonal LoRA (BD-LoRA), which is not checked here; drop it",
    "arrow_config": "routes among several trained LoRA experts (Arrow); the generic method trains one adapter",
    "runtime_config": "is a runtime setting of PEFT's; efficientft's runtime sets device and precision",
}


def tuner_configs() -> dict[str, type]:
    """PEFT's config class of every tuner, by its lower-case name."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(k, "value", k)).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def tuner_capabilities(tuner: str) -> Capabilities:
    """What ``tuner`` can do here, read from PEFT: prompt-type or non-linear targets, and whether it merges."""
    from peft import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import BaseTunerLayer

    config_cls = tuner_configs()[tuner]
    if issubclass(config_cls, PromptLearningConfig) or tuner in NOT_LINEAR:
        return dataclasses.replace(GenericPeft.capabilities, targets="none", v_role=False, merge=False)
    tuner_cls = {str(getattr(k, "value", k)).lower(): v for k, v in PEFT_TYPE_TO_TUNER_MAPPING.items()}[tuner]
    layer = getattr(tuner_cls, "tuner_layer_cls", None)
    merges = layer is not None and any(
        isinstance(o, type) and issubclass(o, layer) and getattr(o, "merge", None) is not BaseTunerLayer.merge
        for o in vars(sys.modules[layer.__module__]).values()
    )
    return dataclasses.replace(GenericPeft.capabilities, merge=merges)


@dataclass
class PeftArgs:
    tuner: str = ""  # PEFT's tuner name (vera, loha, boft, prompt_tuning ...)
    options: dict[str, Any] = field(default_factory=dict)  # fields of the tuner's config dataclass


@register("peft")
class GenericPeft(PeftMethod):
    summary = "any PEFT tuner by name: --method-arg tuner=vera plus its config fields (capabilities from the tuner)"
    # The class-level declaration is what holds for every tuner; each instance derives its own from its tuner.
    capabilities = Capabilities(
        export="peft", quantized_base=False,
        quantized_base_reason="the generic method has not been checked on quantized bases for every tuner; use a "
                              "named method that declares it",
    )
    Args = PeftArgs

    def __init__(self, args: PeftArgs | None = None) -> None:
        super().__init__(args)
        if self.args.tuner:
            self.capabilities = tuner_capabilities(self.args.tuner)

    @classmethod
    def from_config(cls, raw: dict[str, Any] | None) -> Method:
        """``{tuner: name, <field>: value, ...}``: the tuner must be PEFT's, every field one of its config's."""
        raw = dict(raw or {})
        raw.update(raw.pop("options", None) or {})  # also the stored form of args_dict(), if nested
        tuner = str(raw.pop("tuner", "") or "").lower()
        configs = tuner_configs()
        if not tuner:
            raise ConfigError(f"method 'peft' needs tuner=<name> (--method-arg tuner=vera); tuners: "
                              f"{', '.join(sorted(configs))}.")
        if tuner not in configs:
            raise unknown("PEFT tuner", tuner, configs)
        if tuner in NAMED_ONLY:
            need, named = NAMED_ONLY[tuner]
            raise ConfigError(f"method 'peft': tuner {tuner!r} needs {need} that the generic method does not run; "
                              f"use --method {named}.")
        config_cls = configs[tuner]
        hints = typing.get_type_hints(config_cls)
        # a tuner of norms or embeddings is told its modules by name (--targets names linear projections)
        own = ("target_modules",) if tuner in NOT_LINEAR else ()
        names = [f.name for f in dataclasses.fields(config_cls) if f.name not in RESERVED or f.name in own]
        options: dict[str, Any] = {}
        for k, v in raw.items():
            if k in RESERVED and k not in own:
                raise ConfigError(f"method 'peft': {k} is set by efficientft (from --targets, the task and the "
                                  "model), not by a method argument.")
            if k not in names:
                raise ConfigError(f"method 'peft': tuner {tuner!r} takes no argument {k!r}.{did_you_mean(k, names)} "
                                  f"It accepts: {', '.join(n for n in names if n not in REFUSED_ARGS)}.")
            options[k] = _check_type(tuner, k, v, hints[k])
            if k in REFUSED_ARGS:
                if options.pop(k) != _default(config_cls, k):
                    raise ConfigError(f"method 'peft': {k} {REFUSED_ARGS[k]}.")  # at its default: as if not given
        init = options.get("init_lora_weights")
        for prefix, (need, named) in NAMED_INIT.items():
            if isinstance(init, str) and init.lower().startswith(prefix):
                raise ConfigError(f"method 'peft': init_lora_weights {init!r} needs what the generic method does not "
                                  f"do ({need}); use --method {named}.")
        if "layers_pattern" in options:
            raise ConfigError("method 'peft': layers_pattern is not needed: efficientft reads each target's layer "
                              "index from its name; give layers_to_transform alone.")
        return cls(PeftArgs(tuner, options))

    def args_dict(self) -> dict[str, Any]:
        return {"tuner": self.args.tuner, **self.args.options}  # flat, as given (from_config reads it back)

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return {"tuner": "vera", "r": 4}

    def config_class(self) -> type:
        return tuner_configs()[self.args.tuner]

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {k: v for k, v in self.args.options.items() if k not in self._narrowing()}  # applied to the targets

    def _narrowing(self) -> tuple[str, ...]:
        """The arguments applied to the targets; a tuner of modules named by ``target_modules`` (LayerNorm tuning)
        has no targets, and PEFT applies them to the modules it names."""
        return NARROWING if self.capabilities.targets != "none" else ()

    def adapted_targets(self, targets: list[Target]) -> list[Target]:
        if self._narrowing():
            if "layers_to_transform" in self.args.options:
                targets = in_layers(targets, self.args.options["layers_to_transform"])
            if self.args.options.get("exclude_modules"):
                targets = excluding(targets, self.args.options["exclude_modules"])
        return targets

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        targets = self.adapted_targets(targets)
        if self._narrowing():
            for k in PATTERNS:
                _check_pattern(self.args.tuner, k, self.args.options.get(k) or {}, targets)
        self.check_memory(model, targets, ctx)
        try:
            return super().prepare(model, targets, ctx)
        except (TypeError, ValueError, NotImplementedError, KeyError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"method 'peft': PEFT's tuner {self.args.tuner!r} cannot be applied to this model "
                              f"with these arguments: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def param_roles(self, model: nn.Module) -> dict[str, str | None]:
        """A bias the tuner trains inside a targeted module carries that module's role, so W_v's learns at λ × the
        rate with W_v's adapter, as in BitFit: the module's own bias under ``bias`` ``all`` or ``lora_only`` (PEFT's
        ``<module>.base_layer.bias``), the adapter's under ``lora_bias``. Other biases (``all``: LayerNorm's, W_k's
        when not targeted) have none, at the base rate."""
        inside = {f".{t.name}.": t.role for t in self.targets}
        return {n: next((r for m, r in inside.items() if m in f".{n}"), role) if n.endswith(".bias") else role
                for n, role in super().param_roles(model).items()}

    def check_memory(self, model: nn.Module, targets: list[Target], ctx: Context) -> None:
        """Refuse adapters that cannot fit in memory, before PEFT allocates them.

        Any tuner's arguments are free here, so a typo (``r=1000000``) would otherwise allocate tens of gigabytes
        and die in an allocation traceback, or be killed by the kernel with no message at all. The adapters'
        size is counted exactly by building the tuner on meta-device copies of the targeted modules (PEFT's own
        code, so its own size rules; nothing is allocated); training needs 16 bytes per trainable value (fp32
        weight, gradient, two AdamW moments) and 4 per frozen one. A tuner that cannot be built on the meta
        device is not estimated (a failed allocation is then one line, as for every method: ``train.prepare``).
        """
        need = _adapter_bytes(self.peft_config(model, targets, ctx), model, targets)
        if need is None:
            return
        where, free = _free_memory(next(model.parameters()).device)
        if free is not None and need > free:
            raise ConfigError(f"method 'peft': tuner {self.args.tuner!r} with {self._sizes()} on {len(targets)} "
                              f"module(s) needs about {need / 2**30:,.1f} GiB to train its adapters, more than the "
                              f"{free / 2**30:,.1f} GiB of {where} memory available; choose smaller sizes.")

    def _sizes(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.args.options.items() if isinstance(v, int)) or "its defaults"


def _adapter_bytes(config: Any, model: nn.Module, targets: list[Target]) -> int | None:
    """Bytes that training the adapters of ``config`` on ``targets`` needs (see :meth:`GenericPeft.check_memory`),
    or None when they cannot be counted without allocating them."""
    import torch
    from peft import get_peft_model
    from transformers.pytorch_utils import Conv1D

    if not targets:
        return None
    box = nn.ModuleDict()
    with torch.device("meta"):
        for i, t in enumerate(targets):
            m = model.get_submodule(t.name)
            if type(m) is nn.Linear:
                box[f"t{i}"] = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            elif is_conv1d(m):
                box[f"t{i}"] = Conv1D(m.nf, m.weight.shape[0])
            else:
                return None
    base = {id(p) for p in box.parameters()}
    try:
        tuner = str(getattr(config.peft_type, "value", config.peft_type)).lower()
        patterns = {k: _per_target(tuner, getattr(config, k), targets, list(box)) for k in PATTERNS
                    if getattr(config, k, None)}
        probe = dataclasses.replace(config, target_modules=list(box), modules_to_save=None, task_type=None, **patterns)
        with torch.device("meta"):
            wrapped = get_peft_model(box, probe)
    except Exception:  # noqa: BLE001 - a tuner that needs real data to initialise: no estimate
        return None
    added = [p for p in wrapped.parameters() if id(p) not in base]
    buffers = list(wrapped.buffers())
    return sum(16 * p.numel() if p.requires_grad else 4 * p.numel() for p in added) + 4 * sum(b.numel() for b in buffers)


def _free_memory(device: Any) -> tuple[str, int | None]:
    """(which, bytes available) where the adapters will be allocated: the GPU's free memory, or the machine's
    available memory (``MemAvailable`` of /proc/meminfo: free plus what the kernel can reclaim); None if unknown."""
    import torch

    if device.type == "cuda":
        return "GPU", torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return "CPU", int(line.split()[1]) * 1024
    except OSError:  # not Linux: no estimate of what is free
        pass
    return "CPU", None


def in_layers(targets: list[Target], layers: int | list[int]) -> list[Target]:
    """The targets in the given transformer layers (each target's layer: the first index in its name)."""
    wanted = [layers] if isinstance(layers, int) else list(layers)
    index = {t.name: int(m.group(1)) for t in targets if (m := re.search(r"\.(\d+)\.", f".{t.name}."))}
    have = sorted(set(index.values()))
    missing = [i for i in wanted if i not in have]
    if missing or not have:
        span = f"layers {have[0]}-{have[-1]}" if have else "no numbered layers"
        raise ConfigError(f"method 'peft': layers_to_transform {', '.join(map(str, missing or wanted))} names no "
                          f"layer of this model's targets ({span}).")
    return [t for t in targets if index.get(t.name) in wanted]


def excluding(targets: list[Target], exclude: str | list[str]) -> list[Target]:
    """The targets ``exclude_modules`` does not name, by PEFT's rule (``check_target_module_exists``): a string is a
    regular expression the whole module name must match; a list names modules by their name or its last parts."""
    def named(name: str) -> bool:
        if isinstance(exclude, str):
            return re.fullmatch(exclude, name) is not None
        return any(name == e or name.endswith(f".{e}") for e in exclude)

    kept = [t for t in targets if not named(t.name)]
    if len(kept) == len(targets) or not kept:
        what = "none" if kept else "all"
        raise ConfigError(f"method 'peft': exclude_modules {exclude!r} excludes {what} of this run's targets "
                          f"({', '.join(t.name for t in targets[:2])}{' ...' if len(targets) > 2 else ''}); a "
                          "string is a regular expression the whole module name must match, a list names modules "
                          "by their last dotted parts (query), and --targets chooses the targets.")
    return kept


def pattern_key(tuner: str, keys: list[str], name: str) -> str | None:
    """The key of a ``rank_pattern`` (or another of :data:`PATTERNS`) that sets module ``name``, by the tuner's own
    rule: PEFT's ``get_pattern_key`` (the end of the name, after a dot), FourierFT's and C3A's (a dot before the key
    required), OSF's (anywhere in the name); the first key that matches, None if none does."""
    dotted = lambda k: re.match(rf".*\.{k}$", name)  # noqa: E731
    rules = {"fourierft": dotted, "c3a": dotted, "osf": lambda k: re.search(k, name)}
    rule = rules.get(tuner, lambda k: re.match(rf"(.*\.)?({k})$", name))
    return next((k for k in keys if rule(k)), None)


def _check_pattern(tuner: str, name: str, pattern: dict[str, Any], targets: list[Target]) -> None:
    """Refuse a key of ``rank_pattern`` (or another of :data:`PATTERNS`) that sets no target: PEFT would ignore it."""
    used = {pattern_key(tuner, list(pattern), t.name) for t in targets}
    idle = [k for k in pattern if k not in used]
    if idle:
        raise ConfigError(f"method 'peft': {name} key {idle[0]!r} sets none of this run's targets (a key is a "
                          f"regular expression matching the end of a module name after a dot, such as query or "
                          f"layer\\.0\\..*value; targets: {', '.join(t.name for t in targets[:2])} ...).")


def _per_target(tuner: str, pattern: dict[str, Any], targets: list[Target], names: list[str]) -> dict[str, Any]:
    """``pattern`` re-keyed by ``names`` (the targets' names in the memory probe), each with its target's value."""
    keys = [pattern_key(tuner, list(pattern), t.name) for t in targets]
    return {n: pattern[k] for n, k in zip(names, keys, strict=True) if k is not None}


def _default(config_cls: type, name: str) -> Any:
    """The default of a config field (its default factory's value)."""
    f = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_type(tuner: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to (or checked against) the config field's type; one line naming the type otherwise."""
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
        else [hint]
    if typing.get_origin(hint) is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"method 'peft': {name} of tuner {tuner!r} must be one of "
                              f"{', '.join(map(repr, typing.get_args(hint)))}, got {value!r}.")
        return value
    plain = [typing.get_origin(a) or a for a in allowed]
    if isinstance(value, str) and str not in plain:
        scalars = [t for t in (bool, int, float) if t in plain]
        if list in plain and ("," in value or not scalars):  # "0,1": a list, its items of the list's type
            items = [v.strip() for v in value.split(",") if v.strip()]
            inner = [typing.get_args(a) for a in allowed if typing.get_origin(a) is list]
            kind = inner[0][0] if inner and inner[0] and inner[0][0] in (int, float) else None
            return [coerce_argument("peft", name, v, kind) for v in items] if kind else items
        if scalars:
            return coerce_argument("peft", name, value, scalars[0])
    if any(isinstance(t, type) and isinstance(value, t) and not (isinstance(value, bool) and t in (int, float))
           for t in plain) or (float in plain and isinstance(value, int) and not isinstance(value, bool)):
        return value
    if not all(isinstance(t, type) for t in plain):  # a type this check does not know: PEFT's config judges it
        return value
    kinds = " or ".join(t.__name__ for t in plain)
    raise ConfigError(f"method 'peft': {name} of tuner {tuner!r} must be {kinds}, got {value!r}.")
