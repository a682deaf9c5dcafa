"""The role map: which module of each architecture is W_q, W_k, W_v, W_o or a feed-forward projection.

The attention strategy of arXiv 2410.02247 speaks of W_q, W_k, W_v; models name them differently (BERT/RoBERTa
``attention.self.query``, LLaMA ``self_attn.q_proj``, GPT-2 one fused ``attn.c_attn``). Targets are resolved here
once, into :class:`Target` records that every method consumes; a fused projection yields one target per role, each
with the rows (output features) that belong to it, so "adapt only Q and V" works there too.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from ..errors import ConfigError, did_you_mean
from ..vocab import (  # noqa: F401 - the role vocabulary lives in the core; importable here as before
    ALL,
    ATTENTION_ROLES,
    PRESETS,
    ROLES,
    canonical_targets,
    parse_roles,
)
from .fused import is_conv1d
from .heads import trained_pooler


@dataclass(frozen=True)
class Target:
    """One module to adapt. ``out_slice`` is set for a fused projection: the output rows of this role."""

    name: str
    role: str | None
    out_slice: tuple[int, int] | None = None


@dataclass(frozen=True)
class Family:
    """How one architecture family names its projections (regexes matched against the end of module names)."""

    name: str
    roles: dict[str, str]
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pattern -> roles in output order
    fused_sizes: Callable[[object], tuple[int, ...]] | None = None  # config -> output size of each fused role


def _gpt2_sizes(config) -> tuple[int, ...]:
    return (config.n_embd,) * 3


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", {
        "q": r"attention\.self\.query", "k": r"attention\.self\.key", "v": r"attention\.self\.value",
        "o": r"attention\.output\.dense", "ffn_up": r"intermediate\.dense", "ffn_down": r"layer\.\d+\.output\.dense",
    }),
    "distilbert": Family("distilbert", {
        "q": r"attention\.q_lin", "k": r"attention\.k_lin", "v": r"attention\.v_lin", "o": r"attention\.out_lin",
        "ffn_up": r"ffn\.lin1", "ffn_down": r"ffn\.lin2",
    }),
    "llama": Family("llama", {
        "q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj", "o": r"self_attn\.o_proj",
        "ffn_up": r"mlp\.up_proj", "ffn_gate": r"mlp\.gate_proj", "ffn_down": r"mlp\.down_proj",
    }),
    "gpt2": Family("gpt2", {
        "o": r"attn\.c_proj", "ffn_up": r"mlp\.c_fc", "ffn_down": r"mlp\.c_proj",
    }, fused={r"attn\.c_attn": ("q", "k", "v")}, fused_sizes=_gpt2_sizes),
}

MODEL_TYPES = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert",
    "ernie": "bert", "data2vec-text": "bert", "xmod": "bert", "roberta-prelayernorm": "bert",
    "distilbert": "distilbert",
    "llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "olmo": "llama", "olmo2": "llama", "granite": "llama",
    "gpt2": "gpt2",
}


def family_of(model: nn.Module) -> Family | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return FAMILIES.get(MODEL_TYPES.get(model_type or "", ""))


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_modules(model: nn.Module) -> list[str]:
    """Names of the linear (and GPT-2 Conv1D) layers of the backbone, the head excluded."""
    heads = tuple(head_modules(model))
    return [n for n, m in model.named_modules()
            if _is_projection(m) and not any(n == h or n.startswith(h + ".") for h in heads)]


def head_modules(model: nn.Module) -> list[str]:
    """Modules outside the backbone that hold parameters: the task head (``classifier``, ``score``...), and the
    pooler when the run's head trains it (``cls-pooler-trained``, :mod:`efficientft.models.heads`)."""
    prefix = getattr(model, "base_model_prefix", "")
    out = [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]
    pooler = trained_pooler(model)
    return out + [pooler] if pooler else out


def summarise_names(names: list[str], limit: int = 12) -> str:
    """Module names with layer numbers folded (``encoder.layer.*.attention.self.query``), for error messages."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    more = f" (and {len(folded) - limit} more)" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def _ends_with(name: str, pattern: str) -> bool:
    return re.search(rf"(^|\.){pattern}$", name) is not None


def role_of(family: Family | None, name: str) -> str | None:
    if family is None:
        return None
    for role, pat in family.roles.items():
        if _ends_with(name, pat):
            return role
    return None


def role_targets(model: nn.Module) -> list[Target]:
    """Every linear module of the backbone that the role map names, with its role (fused projections excluded:
    their roles share one weight tensor, so no role of theirs can learn at a rate of its own)."""
    family = family_of(model)
    out = [Target(n, role_of(family, n)) for n in linear_modules(model)]
    return [t for t in out if t.role is not None]


def resolve_targets(model: nn.Module, spec: str) -> list[Target]:
    """Turn ``--targets`` into the modules to adapt.

    ``spec`` is a role preset (``qv``, ``qkv``, ``qkvo``, ``ffn``, ``all-linear``), role letters or a comma list of
    roles (``q,v,ffn_up``), or module-name patterns: a glob (``*.query``), a dotted suffix (``attention.self.value``)
    or a regex with the prefix ``re:``. Every pattern must match at least one linear module.
    """
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("targets is empty; give roles (qv, qkv, qkvo, all-linear) or module-name patterns.")
    family = family_of(model)
    linear = linear_modules(model)
    roles = parse_roles(spec)
    if roles is not None:
        return _by_roles(model, family, linear, roles, spec)
    return _by_patterns(model, family, linear, [s.strip() for s in spec.split(",") if s.strip()])


def _by_roles(model, family, linear, roles, spec) -> list[Target]:
    if family is None:
        model_type = getattr(model.config, "model_type", "?")
        raise ConfigError(
            f"model type {model_type!r} has no role map, so targets {spec!r} cannot be resolved by role; pass "
            f"module-name patterns instead (e.g. --targets '*.q_proj,*.v_proj'). Its linear modules are: "
            f"{summarise_names(linear)}."
        )
    out: list[Target] = []
    for name in linear:
        role = role_of(family, name)
        if role in roles:
            out.append(Target(name, role))
            continue
        for pat, fused_roles in family.fused.items():
            if _ends_with(name, pat):
                out.extend(_fused_targets(model, family, name, fused_roles, roles))
    missing = [r for r in roles if not any(t.role == r for t in out)]
    # Presets name every role some family has ("ffn" includes LLaMA's gate); a family lacking one is fine.
    if missing and not (spec.strip().lower() in ("ffn", "all-linear") and out):
        raise ConfigError(
            f"targets {spec!r}: no module of this {family.name}-family model plays role(s) {missing}. "
            f"Its linear modules are: {summarise_names(linear)}."
        )
    return sorted(out, key=lambda t: (t.name, t.out_slice or (0, 0)))


def _fused_targets(model, family, name, fused_roles, wanted) -> list[Target]:
    assert family.fused_sizes is not None
    sizes = family.fused_sizes(model.config)
    out, start = [], 0
    for role, size in zip(fused_roles, sizes, strict=True):
        if role in wanted:
            out.append(Target(name, role, (start, start + size)))
        start += size
    return out


def _by_patterns(model, family, linear, patterns) -> list[Target]:
    chosen: dict[str, Target] = {}
    for pat in patterns:
        if pat.startswith("re:"):
            rx = re.compile(pat[3:])
            hits = [n for n in linear if rx.fullmatch(n)]
        elif any(c in pat for c in "*?["):
            hits = [n for n in linear if fnmatch.fnmatchcase(n, pat)]
        else:
            hits = [n for n in linear if n == pat or n.endswith("." + pat)]
        if not hits:
            hint = did_you_mean(pat, list(ROLES) + list(PRESETS))
            raise ConfigError(
                f"target {pat!r} matches no linear module.{hint} Roles: {', '.join(ROLES)}; presets: "
                f"{', '.join(PRESETS)}. This model's linear modules are: {summarise_names(linear)}."
            )
        for n in hits:
            chosen[n] = Target(n, role_of(family, n))
    return sorted(chosen.values(), key=lambda t: t.name)
