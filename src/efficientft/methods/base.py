"""The method contract: what every fine-tuning method answers, so that one loop can train them all.

A method is one file with one ``@METHODS.register`` line. The loop calls, in order::

    method.prepare(model, targets, ctx)          # inject adapters / choose trainable weights
    method.init_from_data(model, batches)        # optional (EVA), before the optimizer exists
    groups = method.param_groups(model, strategy, lr, weight_decay)
    opt = method.optimizer(groups, cfg)          # AdamW unless the method needs its own (GaLore)
    for each step:  loss.backward(); method.after_backward(model, step); clip; opt.step(); method.after_step(model, step)
                    # or, where capabilities.owns_update (zeroth-order): method.update(model, opt, loss_fn, step, clip)
    method.state_dict(model) / load_state_dict   # its own state in step checkpoints (resume skips init_from_data)
    method.optimizer_state(opt)                  # the tensors the optimizer keeps (its size is a cost figure)
    method.export(model, out_dir, overwrite)     # checks / empties the folder, then the method's write_export()

and never branches on a method's name.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import ConfigError, did_you_mean
from ..models.heads import export_note
from ..models.roles import Target
from ..strategy import Strategy, build_param_groups, roles_by_name
from .args import MethodArgs, arg_of
from .capabilities import Capabilities

TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class NoArgs(MethodArgs):
    """A method without hyper-parameters of its own."""


@dataclass
class Context:
    """What a method may need to know while preparing a model."""

    heads: list[str]
    total_steps: int = 0
    num_labels: int = 2
    seed: int = 0
    base_model: str = ""
    # PEFT's task type for this task kind ("SEQ_CLS" for classification, "CAUSAL_LM" for generation): the task kind
    # decides it, methods pass it on and never choose it.
    peft_task_type: str = "SEQ_CLS"
    # The run's max_length (input tokens per example; 0 where unknown): DePT's embedding update has one row per
    # position.
    max_length: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: subclasses set ``name``, ``summary``, ``Args`` and implement :meth:`prepare`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Args: ClassVar[type] = NoArgs
    # What the method can do: declared in each registered method's own class body (``register`` refuses a class
    # that inherits it, so a variant never passes for its parent); read by prepare, validation and the tests.
    capabilities: ClassVar[Capabilities] = Capabilities()
    # What the method computes, under the same arguments: raise it when a correction changes that (SoRA's
    # threshold, an initialisation that now follows the paper). Above 1 it enters the run key, so a result stored
    # by an earlier revision is never taken as this one's ("already done"); at 1 keys stay as they always were.
    revision: ClassVar[int] = 1
    # Where a tuned learning rate is searched (log-uniform, low..high) when a suite's ``search:`` block does not
    # say: each method ships the range its paper and practice use (adapters: 1e-5..1e-2 unless they say more).
    lr_prior: ClassVar[tuple[float, float]] = (1e-5, 1e-2)
    # The factor the step's backward multiplied the loss by (fp16's GradScaler; 1 otherwise), set by the step before
    # after_backward: the parameters' gradients are unscaled by then, a gradient the method kept itself is not.
    loss_scale: float = 1.0

    def __init__(self, args: Any = None) -> None:
        self.args = args if args is not None else self.Args()
        self.targets: list[Target] = []
        self.ctx: Context | None = None

    # ------------------------------------------------------------------ construction from config
    @classmethod
    def from_config(cls, raw: dict[str, Any] | None) -> Method:
        """Build the method from ``method_args``; unknown names and wrong types are errors naming what is accepted."""
        raw = dict(raw or {})
        names = [f.name for f in dataclasses.fields(cls.Args)]
        for k in raw:
            if k not in names:
                accepted = ", ".join(names) if names else "none"
                raise ConfigError(
                    f"method {cls.name!r} takes no argument {k!r}.{did_you_mean(k, names)} It accepts: {accepted}."
                )
        hints = typing.get_type_hints(cls.Args)
        # A field declared with arg() is converted by its rule (MethodArgs.__post_init__); others by type here.
        ruled = {f.name for f in dataclasses.fields(cls.Args) if arg_of(f) is not None}
        values = {k: v if k in ruled else coerce_argument(cls.name, k, v, hints.get(k)) for k, v in raw.items()}
        try:
            return cls(cls.Args(**values))
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"method {cls.name!r}: {e}") from None

    def args_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.args)

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        """The conformance matrix's hook: small ``method_args`` for its tiny ``arch`` model ("bert", "llama",
        "gpt2"; hidden size 32), rank 4 where the method has a rank. A method whose defaults do not fit a tiny model
        overrides this; one that refuses an architecture by design (BitFit on LLaMA, which has no Q/V biases) returns
        None for it, and the matrix then asserts a one-line ConfigError instead of training."""
        names = {f.name for f in dataclasses.fields(cls.Args)}
        return {"rank": 4} if "rank" in names else {}

    # ------------------------------------------------------------------ target checks (read from capabilities)
    @property
    def max_rank(self) -> int:
        """The largest rank any adapted module may get (AdaLoRA starts above its target rank, EVA redistributes)."""
        return int(self.args.rank)

    def rank_note(self) -> str:
        """A sentence appended to the "rank is larger than" error, for methods whose largest rank is not ``rank``."""
        return ""

    def extra_positions(self) -> int:
        """Sequence positions the method puts before the input (prompt-type methods' virtual tokens): the loop
        checks ``max_length`` plus these against the model's positions."""
        return 0

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        """Refuse, from the declared capabilities, targets the method cannot adapt: slices of a fused projection
        (unless ``fused_slices``) and modules smaller than the method's rank (where ``rank``)."""
        from ..models.fused import weight_shape

        caps = self.capabilities
        sliced = [t for t in targets if t.out_slice is not None]
        if sliced and not caps.fused_slices:
            t = sliced[0]
            from . import METHODS

            able = sorted(n for n, c in METHODS.items() if c.capabilities.fused_slices)
            raise ConfigError(
                f"method {self.name!r} cannot adapt part of a fused projection ({t.name}, role {t.role!r}), and has "
                f"no fused implementation here; use one of {', '.join(able)}, or module-name patterns that select "
                "whole modules."
            )
        if not caps.rank:
            return
        for t in targets:
            out_f, in_f = weight_shape(model.get_submodule(t.name))
            rows = (t.out_slice[1] - t.out_slice[0]) if t.out_slice else out_f
            if self.max_rank > min(rows, in_f):
                what = f"the {t.role!r} rows of {t.name}" if t.out_slice else t.name
                shape = (rows, in_f)
                note = self.rank_note()
                raise ConfigError(f"rank {self.max_rank} is larger than {what} allows ({shape}: at most {min(shape)})."
                                  + (f" {note}" if note else ""))

    # ------------------------------------------------------------------ the contract
    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        raise NotImplementedError

    def adapted_targets(self, targets: list[Target]) -> list[Target]:
        """The targets :meth:`prepare` adapts, of those the run names (a method's argument may narrow them: the
        generic PEFT method's ``layers_to_transform``); what a run records as its targets."""
        return targets

    def param_roles(self, model: nn.Module) -> dict[str, str | None]:
        """Role of every trainable parameter (``"v"`` for W_v's, ``"head"`` for the head, None otherwise). Biases
        have none, unless the capabilities declare ``v_bias`` (BitFit): then a targeted module's bias carries that
        module's role, so W_v's bias learns at λ × the rate (it is all of W_v that trains)."""
        assert self.ctx is not None, "prepare() must run first"
        roles = roles_by_name(model, self.targets, self.ctx.heads)
        if self.capabilities.v_bias:
            of_bias = {f"{t.name}.bias": t.role for t in self.targets}
            roles = {n: of_bias.get(n, r) for n, r in roles.items()}
        return roles

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """Per-parameter learning-rate factors of the method's own (LoRA+); multiplied with the strategy's."""
        return {}

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        return build_param_groups(model, self.param_roles(model), strategy, lr, weight_decay, self.lr_scales(model))

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The tensors the optimizer keeps between steps (Adam: two moments per parameter), for the cost record."""
        return [t for state in optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0]

    # ------------------------------------------------------------------ optional hooks
    def init_from_data(self, model: nn.Module, batches: typing.Iterable[dict]) -> None:
        """Data-driven initialisation (EVA), run once before the optimizer is built."""

    def estimate_cost(self) -> dict[str, float] | None:
        """The training :meth:`init_from_data` did on the run's data before the run's own steps (Light-PEFT's
        estimation), or None where it trains none: ``steps``, ``tokens`` (non-padding), ``token_pairs`` (Σ of each
        example's length squared, for the attention FLOPs) and ``s`` (seconds). Method state, so a resumed run
        records it too; the loop records it beside the run's own training (``estimate_*`` cost figures)."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """After gradients exist, before clipping and the optimizer step (SIFT masks gradients here)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After the optimizer step, before gradients are zeroed (AdaLoRA reallocates rank here)."""

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: typing.Callable[[], float],
               step: int, max_grad_norm: float | None = None) -> tuple[float, float | None]:
        """The whole parameter update of a method that declares ``capabilities.owns_update`` (MeZO: forward
        passes only), called instead of backward + clipping + ``optimizer.step``. ``loss_fn()`` is the step's
        mean loss at the current weights, without gradients; the learning rate of each parameter is its
        optimizer group's (λ and the schedule act there). Returns (the step's loss, the norm of the gradient it
        used before clipping to ``max_grad_norm``, or None)."""
        raise NotImplementedError(f"method {self.name!r} declares owns_update but defines no update()")

    # ------------------------------------------------------------------ checkpoints (exact resume)
    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The method's own state that is not a trainable weight (tensors, dicts, lists, JSON scalars), saved in
        every step checkpoint: what :meth:`init_from_data` chose, or what :meth:`after_step` accumulates."""
        return {}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on a resumed run, in place of :meth:`init_from_data` (which does not run
        again) and before the optimizer is built; the trainable weights are restored after it."""

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state as tensors and JSON values (a method whose optimizer keeps objects converts them)."""
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    # ------------------------------------------------------------------ cost and export
    def trainable_parameters(self, model: nn.Module) -> int:
        """The number of parameters the method trains, as its paper counts them: the free values
        (:meth:`free_values`) of every trainable tensor. The cost record and every table read this."""
        return sum(self.free_values(n, p).numel() for n, p in model.named_parameters() if p.requires_grad)

    def free_values(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The values of the trainable tensor ``name`` that act independently: the tensor itself, unless the method
        stores a redundant form (BOFT's b×b blocks act only through their skew-symmetric part)."""
        return param

    def merge(self, model: nn.Module) -> nn.Module:
        """The model with what was learned folded into plain weights (same outputs, no adapter modules)."""
        raise ConfigError(f"method {self.name!r} defines no merge; export its trained parameters instead.")

    def export(self, model: nn.Module, out_dir: Path, overwrite: bool = False, tokenizer: Any = None
               ) -> dict[str, Any]:
        """Save what was learned into ``out_dir`` so it can be used later; returns a description of the files.

        The one entry point of every method's export: the folder must be new or empty (``overwrite``: emptied
        first), so that it holds this export and nothing else. A stale adapter file left beside a new one is
        loaded by stock PEFT as if it were the new one. Methods write their files in :meth:`write_export`.
        An export that is a whole model folder (``capabilities.export == "model"``) gets the run's ``tokenizer``
        beside it, so that it is a model folder ``--model`` takes (one without tokenizer files is refused).
        """
        if self.capabilities.export == "none":
            raise ConfigError(f"method {self.name!r} cannot export what it learned (its capabilities declare no "
                              "export format); drop --export-dir.")
        out_dir = Path(out_dir)
        clear_export_dir(out_dir, overwrite)
        info = self.write_export(model, out_dir)
        info.update(export_note(model, out_dir))  # a head plain transformers does not build: said in README.md
        if tokenizer is not None and self.capabilities.export == "model":
            tokenizer.save_pretrained(str(out_dir))
        info["files"] = sorted(f.name for f in out_dir.iterdir())
        return info

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """Write the export into the empty folder ``out_dir``; returns its ``format`` (and any other facts).

        The default is our own format: the trained tensors in ``trainable.safetensors`` (no pickle), reloaded by
        :meth:`reload` on top of the same base model prepared the same way.
        """
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata={"method": self.name})
        return {"format": "efficientft-trainable"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        """Rebuild the trained model from :meth:`export`'s files on top of a freshly loaded base model."""
        return load_trainable(self.prepare(base, targets, ctx), out_dir)


def load_trainable(model: nn.Module, out_dir: Path) -> nn.Module:
    """Copy :meth:`Method.export`'s tensors into ``model``, prepared (and rebuilt to the exported shape) to hold
    them; a tensor the model lacks is a :class:`ConfigError`."""
    from safetensors.torch import load_file

    tensors = load_file(str(out_dir / TRAINABLE_FILE))
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise ConfigError(f"{out_dir}: the export has tensors this model lacks: {missing[:3]}.")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return model


def check_export_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Raise a ConfigError unless an export may be written into ``out_dir`` (run before training, so a run never
    trains for hours to fail at its export): it must not exist, be an empty folder, or, with ``overwrite``, a
    folder that may be emptied (not one that holds the working or home directory)."""
    from ..outputs import check_output_dir

    path = check_output_dir(out_dir, "export folder")  # a file, or a folder that cannot be created or written
    if not path.exists():
        return
    entries = sorted(f.name for f in path.iterdir())
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        raise ConfigError(f"export folder {path} is not empty ({count}: {shown}); choose a new folder, empty it, "
                          "or pass --overwrite to replace its contents.")
    real = path.resolve()
    for what, inside in (("the current working directory", Path.cwd()), ("your home directory", Path.home())):
        if inside.resolve().is_relative_to(real):
            raise ConfigError(f"export folder {path} holds {what}; --overwrite would delete it. Give a folder "
                              "of its own.")


def clear_export_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Make ``out_dir`` an empty folder after :func:`check_export_dir` allows it (emptying it only if
    ``overwrite``)."""
    import shutil

    check_export_dir(out_dir, overwrite)
    if out_dir.is_dir():
        for entry in out_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def coerce_argument(method: str, name: str, value: Any, hint: Any) -> Any:
    """Method arguments from the command line arrive as strings; convert to the declared type."""
    if value is None or hint is None:
        return value
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    target = base[0] if isinstance(base[0], type) else None
    if target is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
    try:
        if target in (int, float) and not isinstance(value, bool):
            f = float(value)
            if target is int and not f.is_integer() or not math.isfinite(f):
                raise ValueError  # nan and inf mean nothing as a rank, an alpha or a dropout rate
            return target(f)
    except (TypeError, ValueError):
        raise ConfigError(f"method {method!r}: {name} must be {target.__name__}, got {value!r}.") from None
    return value


def set_trainable(model: nn.Module, names: typing.Iterable[str]) -> None:
    """Freeze everything, then unfreeze every parameter under the given module names."""
    wanted = list(names)
    for n, p in model.named_parameters():
        p.requires_grad = any(n == w or n.startswith(w + ".") for w in wanted)

