"""Expanding a suite: the runs it plans, their values merged in precedence order, and where an error came from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError
from .selection import group_of
from .suite_parse import NESTED, Path_


def _to_config_dict(values: dict[Path_, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in values.items():  # whole values first, then the nested ones merge into them
        if len(path) == 1:
            out[path[0]] = dict(v) if isinstance(v, dict) and path[0] in NESTED else v
    for path, v in values.items():
        if len(path) == 2:
            if not isinstance(out.get(path[0]), dict):
                out[path[0]] = {}
            out[path[0]][path[1]] = v
    return out


@dataclass
class PlannedRun:
    cfg: RunConfig  # resolved
    key: str
    tags: dict[str, Any]
    where: str  # "file, line N" of the method entry

    def describe(self) -> str:
        c = self.cfg
        bits = [c.task, c.method, c.targets]
        if c.lr_ratio != 1:
            bits.append(f"λ={c.lr_ratio:g}")
        if "rank" in c.method_args:
            bits.append(f"r={c.method_args['rank']}")
        bits += [f"lr={c.lr:g}", f"seed={c.seed}"]
        if c.steps is not None:
            bits.append(f"steps={c.steps}")
        return " ".join(str(b) for b in bits)


def item(run: PlannedRun) -> dict[str, Any]:
    """What an executor takes: the key, the resolved config as a dict, the tags, a description."""
    return {"key": run.key, "config": run.cfg.to_dict(), "tags": run.tags, "describe": run.describe()}


def _locate(error: ConfigError, origin: dict[Path_, int], fallback: int) -> int:
    """The line that set the field whose rule failed (the error's ``field``); for an error that names no field
    (a rule tying fields together, a method's own arguments), the field its message mentions first, else
    ``fallback``.

    A method's own errors ("method 'full' takes no argument 'rank'") point at its arguments, not at ``method:``.
    """
    if error.field is not None:
        path = tuple(error.field.split("."))
        if path in origin:
            return origin[path]
    message = str(error)
    found = []
    for path, line in origin.items():
        for name in {".".join(path), path[-1]}:
            m = re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", message)
            if m:
                found.append((m.start(), -len(path), line, path))
    if message.startswith("method "):
        args = [f for f in found if f[3][0] == "method_args"]
        if args:
            return min(args)[2]
        if ("method_args",) in origin:
            return origin[("method_args",)]
    return min(found)[2] if found else fallback


def takes(cfg: RunConfig, name: str) -> bool:
    """Whether a searched field (``lr``, ``method_args.rank``) applies to this run: a method argument applies to
    the methods that take it."""
    import dataclasses

    from ..methods import METHODS

    top, _, sub = name.partition(".")
    if top != "method_args" or not sub:
        return True
    return sub in {f.name for f in dataclasses.fields(METHODS.get(cfg.method).Args)}


def apply_params(cfg: RunConfig, params: dict[str, Any], **fields: Any) -> RunConfig:
    """``cfg`` with the sampled ``params`` (``{"lr": 1e-3, "method_args.rank": 8}``; those its method does not
    take are left out) and ``fields`` set, resolved again (a value out of a rule's range is a ConfigError)."""
    from ..resolve import resolve

    d = {**cfg.to_dict(), **fields}
    for name, v in params.items():
        top, _, sub = name.partition(".")
        if not takes(cfg, name):
            continue
        if sub:
            d[top] = {**(d.get(top) or {}), sub: v}
        else:
            d[top] = v
    return resolve(RunConfig.from_dict(d))


def _default_label(cfg: RunConfig) -> str:
    return f"{cfg.method} {cfg.targets}"


def group_key(cfg: RunConfig, over: tuple[str, ...] | list[str]) -> str:
    """The selection group of a run: its identity without the selected fields and the seed."""
    return group_of(cfg.to_dict(), over)


