"""Parsing a suite's parts: a spec of fixed values and axes (defaults, grid, a method entry, per_task), the
``selection`` / ``early_stopping`` / ``estimate`` / ``max_runs`` / ``requires`` blocks, each value checked where it
is written and each error naming the file and the line (:func:`efficientft.sweep.suite.load_suite` puts them
together)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import ENVIRONMENT_FIELDS, FILE_ONLY_FLAGS, SETTINGS, RunConfig, coerce_setting
from ..errors import ConfigError, did_you_mean
from .marked_yaml import MarkedMap

SUITE_KEYS = ("name", "description", "defaults", "grid", "methods", "per_task", "selection", "early_stopping",
              "estimate", "max_runs", "requires", "search")
DEFAULT_MAX_RUNS = 100_000  # a grid past this is a typo far more often than a plan; max_runs: or $EFT_MAX_RUNS
ENV_MAX_RUNS = "EFT_MAX_RUNS"
NESTED = tuple(n for n, s in SETTINGS.items() if s.nested_axes)  # mappings whose values may themselves be axes
ENTRY_KEYS = ("label", "search")  # keys of a method entry that are not RunConfig fields (search: its own searched
# fields, added to the suite's search.space for that entry's configurations only)
Path_ = tuple[str, ...]  # a field path: ("lr",) or ("method_args", "rank")


def _field_hint(name: str, fields: list[str]) -> str:
    """" Did you mean ...?" for an unknown field, knowing that method arguments belong under ``method_args``."""
    import dataclasses
    import difflib

    from ..methods import METHODS

    args = sorted({f.name for m in METHODS.names() for f in dataclasses.fields(METHODS.get(m).Args)} - set(fields))
    if name in args:
        return f" {name!r} is a method argument: it goes under method_args (method_args: {{{name}: ...}})."
    close = difflib.get_close_matches(str(name), fields + args, n=1, cutoff=0.5)
    if not close:
        return ""
    if close[0] in args:
        return (f" Did you mean the method argument {close[0]!r}? Method arguments go under method_args "
                f"(method_args: {{{close[0]}: ...}}).")
    return f" Did you mean {close[0]!r}?"


def _where_instead(name: str) -> str:
    """Where a setting a suite may not make is given instead: ``eft sweep``'s flag if it has one (the schema says),
    else ``eft run``'s (a single run's setting)."""
    s = SETTINGS[name]
    if s.sweep_flag:
        return f"give it on the command line (eft sweep {s.flag_name(name)})"
    flag = s.flag_name(name)
    return f"eft sweep cannot set it; {'eft run ' + flag + ' sets it' if flag else 'eft run sets it'} for one run"


def _is_list_value(name: str, value: list) -> bool:
    """A list of names is the value of a list setting (``tracker: [wandb]``), not an axis of it (a list of lists
    is)."""
    return SETTINGS[name].rule.kind == "names" and all(isinstance(x, str) for x in value)


def _line(m: Any, key: Any = None) -> int:
    if key is not None and isinstance(m, MarkedMap):
        return m.lines.get(key, m.line)
    return getattr(m, "line", 0)


# ---------------------------------------------------------------------------------------------- specs
@dataclass
class Spec:
    """Fixed values and axes of one part of a suite (defaults, grid, a method entry), each with its line."""

    fixed: dict[Path_, Any] = field(default_factory=dict)
    axes: dict[Path_, list] = field(default_factory=dict)
    lines: dict[Path_, int] = field(default_factory=dict)
    line: int = 0


FIELDS = RunConfig.field_names()


def _parse_spec(raw: Any, where: str, file: str, axes: str) -> Spec:
    """``axes``: "never" (defaults, per_task), "allowed" (method entries) or "required" (grid)."""
    if raw is None:
        return Spec()
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}, line {_line(raw)}: {where} must be a mapping of field: value.")
    spec = Spec(line=_line(raw))
    for k, v in raw.items():
        line = _line(raw, k)
        if where.startswith("methods[") and k in ENTRY_KEYS:
            continue
        if k not in FIELDS:
            extra = list(ENTRY_KEYS) if where.startswith("methods[") else []
            raise ConfigError(f"{file}, line {line}: {where}: unknown field {k!r}.{_field_hint(k, FIELDS + extra)} "
                              f"Known fields: {', '.join(FIELDS + extra)}.")
        if k in FILE_ONLY_FLAGS:  # eft sweep has no such flag: a suite never runs a model's own code
            raise ConfigError(f"{file}, line {line}: {where}: {k} cannot be set in a file (it lets a model's own "
                              f"code run on this machine); run such a model with eft run {FILE_ONLY_FLAGS[k]}.")
        if not SETTINGS[k].in_suite:
            raise ConfigError(f"{file}, line {line}: {where}: {k!r} says where things are, not what is run; "
                              f"{_where_instead(k)}.")
        items = [((k, sk), sv, _line(v, sk)) for sk, sv in v.items()] if k in NESTED and isinstance(v, dict) \
            else [((k,), v, line)]
        for path, value, ln in items:
            name = ".".join(path)
            is_axis = isinstance(value, list) and k != "custom" and not _is_list_value(k, value)
            if is_axis and axes == "never":
                raise ConfigError(f"{file}, line {ln}: {where}: {name} is a list; {where} takes single values "
                                  f"(put lists under grid: or in a method entry).")
            if not is_axis and axes == "required":
                raise ConfigError(f"{file}, line {ln}: grid: {name} must be a list of values, got {value!r} "
                                  f"(single values go under defaults:).")
            if is_axis:
                if not value:
                    raise ConfigError(f"{file}, line {ln}: {where}: {name} is an empty list.")
                if len({json.dumps(x, sort_keys=True, default=str) for x in value}) != len(value):
                    raise ConfigError(f"{file}, line {ln}: {where}: {name} lists a value twice: {value}.")
                values = [_field_value(path, x, file, ln, where) for x in value]
                spec.axes[path] = values
            else:
                spec.fixed[path] = _field_value(path, value, file, ln, where)
            spec.lines[path] = ln
    return spec


def _field_value(path: Path_, value: Any, file: str, line: int, where: str) -> Any:
    if len(path) == 1:
        try:
            return coerce_setting(path[0], value, "")
        except ConfigError as e:
            raise ConfigError(f"{file}, line {line}: {where}: {str(e).lstrip(': ')}") from None
    return value


# ---------------------------------------------------------------------------------------------- blocks
@dataclass
class Selection:
    """Fair model selection: choose ``over`` (the learning rate) on a selection split carved from train."""

    selection_size: float = 0.1
    selection_max: int | None = None  # the largest selection split, in examples (None: as large as selection_size)
    select_by: str = "main"  # "main": selection/<the task's main metric>; or e.g. "selection/accuracy"
    over: tuple[str, ...] = ("lr",)
    line: int = 0


@dataclass
class EarlyStopping:
    """Successive halving: every candidate trains ``rungs[0]`` steps, the best 1/η go on to the next rung, …"""

    rungs: tuple[int, ...] = ()
    reduction_factor: float = 3.0
    line: int = 0


@dataclass
class Search:
    """Equal-budget tuning (:mod:`.search`): per configuration, ``trials`` sampled from ``space`` (the learning
    rate always: the method's ``lr_prior`` unless the space gives ``lr``), pruned by successive halving at the
    rungs ``min_steps * reduction_factor**k`` below the full budget, the best re-run with ``final_seeds`` seeds."""

    trials: int = 8
    seed: int = 0
    # the first rung; None: ⌈full budget / reduction_factor²⌉; a mapping: per task (a task not named: the default),
    # for a task whose scores sit at the trivial baseline early on (MRPC's majority class up to step ~100)
    min_steps: int | dict[str, int] | None = None
    reduction_factor: int = 3
    final_seeds: int = 3
    halving: str = "asynchronous"  # or "synchronous": every trial's rung before any promotion (:mod:`.search`)
    sampler: str = "tpe"  # or "halton": the trials are the points of a scrambled Halton sequence (:func:`.search.design`)
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # "method_args.rank" -> {"int": [4, 16], ...}
    line: int = 0
    space_lines: dict[str, int] = field(default_factory=dict)

    def first_rung(self, task: str) -> int | None:
        """The first rung's steps for ``task`` (None: the default, ⌈budget / η²⌉)."""
        return self.min_steps.get(task) if isinstance(self.min_steps, dict) else self.min_steps


SEARCH_KEYS = ("trials", "seed", "min_steps", "reduction_factor", "final_seeds", "halving", "sampler", "space")
HALVING = ("asynchronous", "synchronous")
SAMPLERS = ("tpe", "halton")
DISTRIBUTIONS = ("float", "int", "choice")
# what a configuration is (method x targets x lambda x task) and what the search itself decides stay out of a space
NOT_SEARCHED = ("seed", "task", "method", "targets", "steps", "epochs", "selection_size", "model", "custom")


def _count_value(s: dict, k: str, default: Any, low: int, f: str, what: str) -> Any:
    v = s.get(k, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{f}, line {_line(s, k)}: search.{k} must be a whole number >= {low} ({what}), got {v!r}.")
    return v


def _min_steps(s: dict, f: str) -> int | dict[str, int] | None:
    """``min_steps: 100`` or per task, ``min_steps: {mrpc: 200}`` (the tasks are checked against the suite's)."""
    v = s.get("min_steps")
    if not isinstance(v, dict):
        return _count_value(s, "min_steps", None, 1, f, "the first rung's optimizer steps, or a mapping task: steps")
    for task, n in v.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{f}, line {_line(s, 'min_steps')}: search.min_steps.{task} must be a whole number "
                              f">= 1 (the first rung's optimizer steps on that task), got {n!r}.")
    return {str(t): n for t, n in v.items()}


def _bound(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        return None


def _parse_space_entry(name: str, d: Any, f: str, line: int, where: str = "search.space") -> dict[str, Any]:
    how = ("{float: [low, high]}, {int: [low, high]} (either with log: true) or {choice: [a, b, ...]}")
    if not isinstance(d, dict):
        raise ConfigError(f"{f}, line {line}: {where}.{name} must be a distribution: {how}, got {d!r}.")
    kinds = [k for k in d if k in DISTRIBUTIONS]
    extra = [k for k in d if k not in DISTRIBUTIONS and k != "log"]
    if extra or len(kinds) != 1:
        bad = extra[0] if extra else ", ".join(map(str, kinds)) or "none"
        raise ConfigError(f"{f}, line {line}: {where}.{name}: unknown distribution {bad!r}."
                          f"{did_you_mean(str(bad), DISTRIBUTIONS)} Accepted: {how}.")
    kind, log = kinds[0], d.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{f}, line {line}: {where}.{name}.log must be true or false, got {log!r}.")
    values = d[kind]
    if kind == "choice":
        if not isinstance(values, list) or not values or log:
            raise ConfigError(f"{f}, line {line}: {where}.{name}: choice takes a non-empty list (and no log), "
                              f"got {d!r}.")
        return {"choice": list(values)}
    bounds = [_bound(x) for x in values] if isinstance(values, list) and len(values) == 2 else [None]
    if None in bounds or not all(math.isfinite(b) for b in bounds):
        raise ConfigError(f"{f}, line {line}: {where}.{name}: {kind} takes [low, high] (two numbers), "
                          f"got {values!r}.")
    low, high = bounds
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        raise ConfigError(f"{f}, line {line}: {where}.{name}: int bounds must be whole numbers, got {values!r}.")
    if low >= high:
        raise ConfigError(f"{f}, line {line}: {where}.{name}: low must be below high, got [{low:g}, {high:g}].")
    if log and low <= 0:
        raise ConfigError(f"{f}, line {line}: {where}.{name}: a log distribution needs low > 0, got "
                          f"[{low:g}, {high:g}].")
    if kind == "int":
        low, high = int(low), int(high)
    return {kind: [low, high], "log": log}


def parse_space(space: Any, line: int, f: str, where: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """A search space (``search.space``, or a method entry's ``search:``): field -> distribution, with lines."""
    if not isinstance(space, dict):
        raise ConfigError(f"{f}, line {line}: {where} maps a field (lr, method_args.rank, ...) to a distribution.")
    out: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    for name, d in space.items():
        ln = _line(space, name)
        name = str(name)
        top, _, sub = name.partition(".")
        ok = top in FIELDS and top not in NOT_SEARCHED and top not in ENVIRONMENT_FIELDS and \
            (not sub if top not in NESTED else bool(sub) and "." not in sub)
        if not ok:
            raise ConfigError(f"{f}, line {ln}: {where}: unknown key {name!r}.{did_you_mean(top, FIELDS)} "
                              f"Accepted: a run setting (lr, lr_ratio, weight_decay, ...) or a method argument "
                              f"(method_args.rank); not {', '.join(NOT_SEARCHED)}.")
        out[name] = _parse_space_entry(name, d, f, ln, where)
        lines[name] = ln
    return out, lines


def _one_of(s: dict, key: str, accepted: tuple[str, ...], f: str) -> str:
    v = s.get(key, accepted[0])
    if v not in accepted:
        raise ConfigError(f"{f}, line {_line(s, key)}: search.{key} must be {' or '.join(accepted)}, got {v!r}.")
    return v


def _parse_search(raw: dict, f: str) -> Search | None:
    s = raw.get("search")
    if s is None:
        return None
    line = _line(raw, "search")
    if not isinstance(s, dict):
        raise ConfigError(f"{f}, line {line}: search: is a mapping ({', '.join(SEARCH_KEYS)}).")
    _keys(s, SEARCH_KEYS, "search", f)
    out = Search(trials=_count_value(s, "trials", 8, 1, f, "trials per configuration"),
                 seed=_count_value(s, "seed", 0, 0, f, "the sampler's seed"),
                 min_steps=_min_steps(s, f),
                 reduction_factor=_count_value(s, "reduction_factor", 3, 2, f, "eta: 1/eta of the trials go on"),
                 final_seeds=_count_value(s, "final_seeds", 3, 0, f, "seeds of the chosen configuration's re-runs"),
                 halving=_one_of(s, "halving", HALVING, f), sampler=_one_of(s, "sampler", SAMPLERS, f), line=line)
    out.space, out.space_lines = parse_space(s.get("space") or {}, _line(s, "space"), f, "search.space")
    return out


# ---------------------------------------------------------------------------------------------- loading
def _parse_requires(raw: dict, f: str) -> tuple[str, ...]:
    """``requires: [model]``: settings given on the ``eft sweep`` command line (only those it has a flag for)."""
    from ..config import SETTINGS

    req = raw.get("requires") or []
    if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
        raise ConfigError(f"{f}, line {_line(raw, 'requires')}: requires lists setting names, e.g. [model].")
    flagged = sorted(n for n, s in SETTINGS.items() if s.sweep_flag)
    for x in req:
        if x not in flagged:
            raise ConfigError(f"{f}, line {_line(raw, 'requires')}: requires names {x!r}, which eft sweep has no flag "
                              f"for; accepted: {', '.join(flagged)}.")
    return tuple(req)

def _keys(raw: dict, allowed: tuple[str, ...], where: str, f: str) -> None:
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{f}, line {_line(raw, k)}: {where}: unknown key {k!r}.{did_you_mean(k, allowed)} "
                              f"Accepted: {', '.join(allowed)}.")


def _parse_selection(raw: dict, f: str) -> Selection | None:
    s = raw.get("selection")
    if s is None:
        return None
    line = _line(raw, "selection")
    if not isinstance(s, dict):
        raise ConfigError(f"{f}, line {line}: selection: is a mapping (selection_size, selection_max, select_by, "
                          f"over).")
    _keys(s, ("selection_size", "selection_max", "select_by", "over"), "selection", f)
    size = coerce_setting("selection_size", s.get("selection_size", 0.1), f"{f}, line {line}: selection")
    cap = coerce_setting("selection_max", s.get("selection_max"), f"{f}, line {_line(s, 'selection_max')}: selection")
    if not size > 0 or not math.isfinite(size):
        raise ConfigError(f"{f}, line {_line(s, 'selection_size')}: selection.selection_size must be > 0 "
                          f"(a fraction of train in (0, 1), or a count), got {size!r}.")
    by = str(s.get("select_by", "main"))
    if by != "main" and not by.startswith("selection/"):
        raise ConfigError(f"{f}, line {_line(s, 'select_by')}: selection.select_by must be 'main' or a "
                          f"selection-split score such as 'selection/accuracy' (never a dev score), got {by!r}.")
    over = s.get("over", ["lr"])
    over = [over] if isinstance(over, str) else over
    if not isinstance(over, list) or not over:
        raise ConfigError(f"{f}, line {_line(s, 'over')}: selection.over is a list of fields, e.g. [lr].")
    for name in over:
        top = str(name).split(".")[0]
        if top not in FIELDS or top == "seed" or top in ENVIRONMENT_FIELDS:
            raise ConfigError(f"{f}, line {_line(s, 'over')}: selection.over names {name!r}, which is not a "
                              f"selectable field.{did_you_mean(top, FIELDS)}")
    return Selection(float(size), None if cap is None else int(cap), by, tuple(str(o) for o in over), line)


def _parse_early_stopping(raw: dict, f: str) -> EarlyStopping | None:
    s = raw.get("early_stopping")
    if s is None:
        return None
    line = _line(raw, "early_stopping")
    if not isinstance(s, dict):
        raise ConfigError(f"{f}, line {line}: early_stopping: is a mapping (rungs, reduction_factor).")
    _keys(s, ("rungs", "reduction_factor"), "early_stopping", f)
    rungs = s.get("rungs")
    ok = isinstance(rungs, list) and rungs and all(isinstance(r, int) and not isinstance(r, bool) and r > 0
                                                   for r in rungs)
    if not ok or list(rungs) != sorted(set(rungs)):
        raise ConfigError(f"{f}, line {_line(s, 'rungs')}: early_stopping.rungs must be increasing positive step "
                          f"counts, e.g. [50, 100], got {rungs!r}.")
    eta = s.get("reduction_factor", 3)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 1 or not math.isfinite(eta):
        raise ConfigError(f"{f}, line {_line(s, 'reduction_factor')}: early_stopping.reduction_factor must be a "
                          f"number > 1, got {eta!r}.")
    return EarlyStopping(tuple(rungs), float(eta), line)


def _parse_estimate(raw: dict, f: str) -> dict[str, Any]:
    s = raw.get("estimate")
    if s is None:
        return {}
    if not isinstance(s, dict):
        raise ConfigError(f"{f}, line {_line(raw, 'estimate')}: estimate: is a mapping (step_s, overhead_s, note).")
    _keys(s, ("step_s", "overhead_s", "note"), "estimate", f)
    out: dict[str, Any] = {"note": str(s.get("note", ""))}
    def seconds(v: Any, k: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
            raise ConfigError(f"{f}, line {_line(s, k)}: estimate.{k} must be a number of seconds >= 0 (step_s: "
                              f"also a mapping task -> seconds), got {v!r}.")
        return float(v)

    for k in ("step_s", "overhead_s"):
        v = s.get(k, 0.0)
        if k == "step_s" and isinstance(v, dict):  # per task: a step's cost is its tokens
            out[k] = {str(t): seconds(x, k) for t, x in v.items()}
        else:
            out[k] = seconds(v, k)
    return out


def _parse_max_runs(raw: dict, f: str) -> int:
    """The most runs the suite may expand to: its ``max_runs:``, else ``$EFT_MAX_RUNS``, else 100,000."""
    import os

    if raw.get("max_runs") is not None:
        value, where = raw["max_runs"], f"{f}, line {_line(raw, 'max_runs')}: max_runs"
    elif os.environ.get(ENV_MAX_RUNS):
        value, where = os.environ[ENV_MAX_RUNS], f"${ENV_MAX_RUNS}"
    else:
        return DEFAULT_MAX_RUNS
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
            or int(value) < 1:
        raise ConfigError(f"{where} must be a positive whole number of runs, got {value!r}.")
    return int(value)
