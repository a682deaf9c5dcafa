"""A run's resolution: a :class:`~efficientft.config.RunConfig` joined with its method, task, data and hardware.

A config is a typed value that knows only the core vocabulary. Resolving it checks what needs the upper layers
(a task's one spelling, the user's data spec, λ against the targets' roles, the method's declared capabilities)
and makes every default explicit (the method's arguments, the training length, the precision that runs, the
user's data named by its content), so two configs that mean the same experiment resolve to the same thing and
get the same :func:`run_key`. The API, the command line, suite expansion and the loop resolve before doing
anything, so a bad config is refused in one line before any training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import hardware
from .config import DEFAULT_EPOCHS, DEFAULT_TARGETS, DEFAULTS, RunConfig
from .content import file_sha256
from .errors import ConfigError, not_a_file
from .methods import get_method
from .methods.capabilities import check_run
from .strategy import unapplied_ratio
from .tasks import ALIASES, TASKS, get_task
from .tasks.custom import check_spec
from .tasks.kinds import kind_of
from .vocab import DATA_LABEL_HASH as _LABEL_HASH
from .vocab import parse_roles

_RESOLVED_AS = "_resolved_as"  # set on a resolved config: its fields when resolved (a later change unsets it)


def resolve(cfg: RunConfig, where: str = "") -> RunConfig:
    """The config with every default made explicit (the method's arguments, the training length, ...).

    Two configs that mean the same experiment resolve to the same thing, and so get the same key. Refuses, in one
    line, what the upper layers rule out (see :func:`checked`; ``where`` starts those messages as it starts the
    config's own: the file it was read from, or ``run config``)."""
    cfg = checked(cfg, where)
    method = get_method(cfg.method).from_config(cfg.method_args)
    check_method(cfg, method)  # a suite that asks what a method cannot do fails at expansion, before any run
    changes: dict[str, Any] = {"method": method.name, "method_args": method.args_dict()}
    if cfg.epochs is None and cfg.steps is None:
        changes["epochs"] = DEFAULT_EPOCHS
    if cfg.precision == "auto":  # resolved before hashing: the key names the precision that ran
        changes["precision"] = hardware.best_precision(cfg.device)
    if cfg.custom is not None:  # the user's data is named by what it holds (file hashes, columns)
        changes.update(resolve_custom(cfg.task, cfg.custom))
    task = _known_task(cfg.task, cfg.custom)
    if task is not None:  # what the task kind fills in or refuses (a generation task's template)
        changes.update(task.kind.resolve(cfg, task))
    # the classifier's head for this model (the user's classification files are not read to know their kind)
    changes.update(kind_of(task).resolve_head(cfg))
    if cfg.quantize == "4bit" and cfg.quant_compute_dtype is None:  # the key names the dtype that ran
        changes["quant_compute_dtype"] = hardware.best_precision(cfg.device)
    if not method.capabilities.clipping:  # the key and the record say what ran: no clipping
        changes["max_grad_norm"] = None
    out = cfg.replace(**changes)
    setattr(out, _RESOLVED_AS, out.to_dict())
    return out


def run_key(cfg: RunConfig) -> str:
    """The run's key in the results store: a stable hash of the resolved config's
    :meth:`~efficientft.config.RunConfig.identity` (and the method's revision). A config that :func:`resolve`
    returned, unchanged since, is hashed as it is, without resolving it again."""
    resolved = cfg if getattr(cfg, _RESOLVED_AS, None) == cfg.to_dict() else resolve(cfg)
    identity = resolved.identity()
    revision = get_method(resolved.method).revision  # a corrected method is another experiment
    if revision > 1:
        identity["method_revision"] = revision
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checked(cfg: RunConfig, where: str = "") -> RunConfig:
    """The rules of a config that need tasks, the user's data or the strategy, in one line each: the task's one
    spelling (``RTE`` → ``rte``), the user's data spec (keys, types, labels, metrics; before any key) and name,
    and a λ for a role the targets leave out. Returns the config with its task's one spelling."""
    task = canonical_task(cfg.task)
    try:
        if cfg.custom is not None:
            check_spec({k: v for k, v in cfg.custom.items() if k != "sha256"})  # sha256: set by resolve_custom
            _check_custom(task, cfg.custom)
        _check_ratios_have_roles(cfg)
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None
    return cfg if task == cfg.task else cfg.replace(task=task)


def check_method(cfg: RunConfig, method: Any) -> None:
    """Refuse what the method's declared capabilities rule out (targets, quantized base, λ), in one line."""
    check_run(method, targets=cfg.targets, quantize=cfg.quantize, role_ratios=cfg.role_ratios,
              lr_ratio=cfg.lr_ratio, default_targets=DEFAULT_TARGETS, exporting=bool(cfg.export_dir),
              gradient_checkpointing=bool(cfg.gradient_checkpointing), max_grad_norm=cfg.max_grad_norm,
              default_max_grad_norm=DEFAULTS["max_grad_norm"])


def _check_ratios_have_roles(cfg: RunConfig) -> None:
    """Role targets say which roles train before any model loads, so a λ for a role they leave out is refused
    here (a suite finds it before its first run); patterns and ``all`` are judged on the optimizer groups."""
    roles = parse_roles(cfg.targets) if cfg.targets != "all" else None
    for role, ratio in sorted(cfg.role_ratios.items()):
        if roles is not None and ratio != 1.0 and role not in roles:
            raise unapplied_ratio(role, ratio, cfg.method, cfg.targets, cfg.lr_ratio != 1.0)


def canonical_task(name: str) -> str:
    """A registered task's one spelling (``RTE``, ``SST-2`` → ``rte``, ``sst2``); other names (the user's data)
    as given."""
    low = ALIASES.get(name.lower(), name.lower())
    return low if low in TASKS else name


def _known_task(name: str, custom: dict | None) -> Any:
    """The task a config names, when it is known without reading data files (None: not known here, the run
    reports it); the user's classification files are not read for this."""
    if custom is not None:
        return get_task(name, custom) if custom.get("type") == "generation" else None
    return get_task(name) if name in TASKS else None


def _check_custom(task: str, custom: dict) -> None:
    """The user's data may not borrow a GLUE task's name: its runs would fill that task's cells in a table."""
    base = _LABEL_HASH.sub("", task)
    if canonical_task(base) in TASKS:
        raise ConfigError(f"task {task!r} is a GLUE task, so it cannot name your own data (--train-file / "
                          f"custom:); name it otherwise (e.g. --task my-{canonical_task(base)}) or leave --task out.")
    for split in ("train", "dev"):
        if custom.get(split) is not None and not isinstance(custom[split], str):
            raise ConfigError(f"custom.{split} must be a file path (text), got {custom[split]!r}.")


def resolve_custom(task: str, custom: dict) -> dict[str, Any]:
    """The user's data named by what it is: the column spec made explicit, the SHA-256 of each file, and the task
    label ``<name>@<hash8>`` (a hash of both), so runs on different files never share a key or a table cell."""
    spec = {k: v for k, v in custom.items() if k != "sha256"}
    if spec.get("type") == "generation":  # instruction rows have fixed keys; the answer type is their protocol
        spec.setdefault("answer", "text")
    else:
        text = spec.get("text_columns") or ["text"]
        spec["text_columns"] = [c.strip() for c in text.split(",")] if isinstance(text, str) else list(text)
        spec.setdefault("label_column", "label")
        spec.setdefault("type", "classification")
    hashes = {}
    for split in ("train", "dev"):
        if spec.get(split):
            if not Path(spec[split]).is_file():
                raise not_a_file("data file", spec[split])
            hashes[split] = file_sha256(spec[split])
    spec["sha256"] = hashes
    blob = json.dumps({k: v for k, v in spec.items() if k not in ("train", "dev")}, sort_keys=True, default=str)
    label = f"{_LABEL_HASH.sub('', task)}@{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
    return {"task": label, "custom": spec}
