"""The attention strategy of arXiv 2410.02247 ("Theoretical Insights into Fine-Tuning Attention Mechanism").

Two findings become options of every method here:

1. *Which projections to adapt*: adapting W_q and W_v only matches or beats W_q, W_k, W_v at the same rank
   (the ``targets`` option, resolved by :mod:`efficientft.models.roles`).
2. *How fast each learns*: W_v should learn λ times faster than W_q and W_k (the paper's Theorem on learning
   efficiency). ``lr_ratio`` = λ multiplies the learning rate of W_v's trainable parameters only: its adapter
   factors, or W_v itself in full fine-tuning. Biases and normalisation weights stay at the base rate, unlike the
   reference implementation, which put every 1-D parameter in the λ group (DESIGN.md, pitfalls).

``role_lr`` generalises λ to any role (``{"v": 4, "o": 2}``), and methods with their own ratios (LoRA+ for B/A)
compose with it by multiplying.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch.nn as nn

from .errors import ConfigError
from .models.roles import Target

HEAD = "head"


@dataclass(frozen=True)
class Strategy:
    """Per-role learning-rate multipliers (``{"v": λ}``); every role not named learns at the base rate."""

    ratios: Mapping[str, float] = field(default_factory=dict)

    def multiplier(self, role: str | None) -> float:
        return float(self.ratios.get(role, 1.0)) if role else 1.0


# torch's normalisation layers; nn.RMSNorm exists from torch 2.4
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer, recognised by type: torch's (:data:`NORM_TYPES`), or a leaf module whose only
    parameters are a 1-D gain (and a 1-D bias) and which keeps an epsilon. The second form is transformers'
    per-model RMSNorm classes (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``T5LayerNorm`` ...), which share no base class
    to test with ``isinstance``; a class name is never read."""
    if isinstance(module, NORM_TYPES):
        return True
    params = dict(module.named_parameters(recurse=False))
    return (not any(True for _ in module.children()) and "weight" in params and set(params) <= {"weight", "bias"}
            and all(p.dim() == 1 for p in params.values())
            and isinstance(getattr(module, "variance_epsilon", getattr(module, "eps", None)), float))


def is_bias(param_name: str) -> bool:
    """A module's ``bias`` parameter (its attribute name, as torch registers it; not any name ending in "bias")."""
    return param_name.rpartition(".")[2] == "bias"


def no_decay(param_name: str, owner: nn.Module | None) -> bool:
    """Biases and normalisation weights get no weight decay (the usual convention, as in BERT's optimiser)."""
    return is_bias(param_name) or (owner is not None and is_norm(owner))


def roles_by_name(model: nn.Module, targets: list[Target], heads: list[str]) -> dict[str, str | None]:
    """The role of every trainable parameter, from the targeted module that owns it.

    A parameter belongs to a role when the name of a targeted module appears in its name at dot boundaries (PEFT
    wraps modules as ``<module>.lora_A.default.weight``, and prefixes ``base_model.model.``); the parameters of
    one role's slice of a fused projection live under a submodule named by the role (``c_attn.slices.v.weight``,
    ``c_attn.lora.v.A``). Biases and normalisation weights get no role, so λ never reaches them; the task head
    gets ``"head"`` (base rate).

    A parameter registered in several modules (VB-LoRA's vector bank, in every adapted module) has a role only when
    every module that holds it has that role; otherwise its role is the roles joined by ``+`` (``"q+v"``), which no
    ratio reaches and which :func:`build_param_groups` refuses a ratio for.
    """
    modules = dict(model.named_modules())
    plain = [t for t in targets if t.out_slice is None]
    sliced = [t for t in targets if t.out_slice is not None]
    every: dict[int, list[str | None]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        dotted = "." + name
        if p.requires_grad and (_inside_target(dotted, targets) or any(f".{h}." in dotted for h in heads)):
            every.setdefault(id(p), []).append(_role_of(name, modules, plain, sliced, heads))
    out: dict[str, str | None] = {}
    for name, p in model.named_parameters():  # holders outside every target and head (PEFT's model-level copy of
        if p.requires_grad:                   # a shared bank) use it through those that are inside: no vote
            roles = set(every.get(id(p)) or [_role_of(name, modules, plain, sliced, heads)])
            out[name] = roles.pop() if len(roles) == 1 else SHARED.join(sorted(r or "none" for r in roles))
    return out


SHARED = "+"  # joins the roles of a parameter shared by modules of different roles


def _role_of(name: str, modules: dict[str, nn.Module], plain: list[Target], sliced: list[Target],
             heads: list[str]) -> str | None:
    """The role a parameter has by this one of its names (see :func:`roles_by_name`)."""
    owner = modules.get(name.rpartition(".")[0])
    dotted = "." + name
    role: str | None = None
    if any(dotted.startswith(f".{h}.") or f".model.{h}." in dotted for h in heads) and not _inside_target(
        dotted, plain
    ):
        role = HEAD
    elif not no_decay(name, owner):
        for t in plain:
            if f".{t.name}." in dotted:
                role = t.role
                break
        for t in sliced:  # a slice's parameters live under a submodule named by its role
            at = dotted.find(f".{t.name}.")
            if at >= 0 and t.role in dotted[at + len(t.name) + 2 :].split(".")[:-1]:
                role = t.role
                break
    return role


def _inside_target(dotted: str, targets: list[Target]) -> bool:
    return any(f".{t.name}." in dotted for t in targets)


def build_param_groups(
    model: nn.Module, roles: Mapping[str, str | None], strategy: Strategy, lr: float, weight_decay: float,
    extra_scale: Mapping[str, float] | None = None,
) -> list[dict]:
    """Optimizer groups: one per (learning-rate multiplier, weight decay) pair, each listing its parameter names.

    ``extra_scale`` multiplies the rate of single parameters further (LoRA+ gives B ``ratio`` × A's rate).
    Groups carry ``names``, ``roles`` and ``lr_scale`` for inspection; torch keeps extra keys in param groups.
    """
    modules = dict(model.named_modules())
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = roles.get(name)
        if role and SHARED in role and any(strategy.multiplier(r) != 1.0 for r in role.split(SHARED)):
            raise ConfigError(f"a learning-rate ratio cannot apply to {name}: it is one parameter shared by modules "
                              f"of roles {', '.join(role.split(SHARED))}, so it has no single role; drop the ratio "
                              "or target only modules of one role.")
        scale = strategy.multiplier(role) * float((extra_scale or {}).get(name, 1.0))
        decay = 0.0 if no_decay(name, modules.get(name.rpartition(".")[0])) else weight_decay
        g = groups.setdefault((scale, decay), {"params": [], "names": [], "roles": set(), "lr_scale": scale,
                                               "lr": lr * scale, "weight_decay": decay})
        g["params"].append(p)
        g["names"].append(name)
        g["roles"].add(role or "-")
    out = []
    for key in sorted(groups):
        g = groups[key]
        g["roles"] = sorted(g["roles"])
        out.append(g)
    return out


def describe_groups(groups: list[dict]) -> list[dict]:
    """A JSON-friendly summary of optimizer groups (stored with every run)."""
    return [
        {"lr": g["lr"], "lr_scale": g["lr_scale"], "weight_decay": g["weight_decay"], "roles": g["roles"],
         "params": len(g["names"]), "numel": sum(p.numel() for p in g["params"])}
        for g in groups
    ]


def check_ratios_applied(groups: list[dict], ratios: Mapping[str, float], method: str, targets: str,
                         from_lr_ratio: bool = False) -> None:
    """Refuse a learning-rate ratio that no parameter would get: a run stored with λ = 4 must have trained W_v
    at 4 × lr. Checked on the optimizer groups themselves (after ``prepare``), so that whatever a method makes
    trainable is what is judged."""
    carried = {role for g in groups for role in g["roles"]}
    for role, ratio in sorted(ratios.items()):
        if ratio != 1.0 and role not in carried:
            raise unapplied_ratio(role, ratio, method, targets, from_lr_ratio)


def unapplied_ratio(role: str, ratio: float, method: str, targets: str, from_lr_ratio: bool) -> ConfigError:
    """The error for a ratio that would be stored but never applied (one wording, wherever it is found)."""
    what = f"lr_ratio {ratio:g} (W_v's rate)" if role == "v" and from_lr_ratio else f"role_lr {role}={ratio:g}"
    return ConfigError(f"{what} would change nothing: no trainable parameter of method {method!r} with targets "
                       f"{targets!r} has role {role!r}; add {role} to --targets or drop the ratio.")
