"""Suite files: shared defaults, a grid, per-method entries — expanded into validated :class:`RunConfig` runs.

A suite is YAML::

    name: quick
    defaults: {model: minilm, max_length: 64, batch_size: 16, steps: 250}   # single values, every run
    grid: {task: [sst2], seed: [0, 1, 2]}                                  # lists: the cartesian product
    methods:                                                               # one entry per method configuration
      - {label: "LoRA QV", method: lora, targets: qv, lr_ratio: [2, 4, 8], lr: [5.0e-4, 1.0e-3],
         method_args: {rank: [8, 16]}}
    per_task: {mnli: {epochs: 1}}                                          # per-task overrides, applied last
    selection: {selection_size: 0.1, select_by: main, over: [lr]}          # fair model selection (optional)
    early_stopping: {rungs: [50, 100], reduction_factor: 3}                # successive halving (optional)
    estimate: {step_s: 0.25, overhead_s: 15}                               # --dry-run time hint (optional;
                                                                           # step_s: also {task: seconds})

A list in ``grid`` or in a method entry (also inside ``method_args`` / ``role_lr``) is an axis; an entry's value
replaces the grid's for that entry (so each method can have its own learning-rate grid). Precedence, last wins:
defaults → grid → method entry → per_task. Every expanded run is validated (:class:`RunConfig` and the method's
arguments via :func:`~efficientft.resolve.resolve`) before anything runs; errors name the file, the line and the field.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    DEFAULT_TASK,
    ENVIRONMENT_FIELDS,
    FILE_ONLY_FLAGS,
    SETTINGS,
    RunConfig,
    _coerce,
)
from ..errors import ConfigError, did_you_mean
from ..suites import resolve_suite
from .marked_yaml import MarkedMap, load_marked

SUITE_KEYS = ("name", "description", "defaults", "grid", "methods", "per_task", "selection", "early_stopping",
              "estimate", "max_runs", "requires")
DEFAULT_MAX_RUNS = 100_000  # a grid past this is a typo far more often than a plan; max_runs: or $EFT_MAX_RUNS
ENV_MAX_RUNS = "EFT_MAX_RUNS"
NESTED = tuple(n for n, s in SETTINGS.items() if s.nested_axes)  # mappings whose values may themselves be axes
ENTRY_KEYS = ("label",)  # keys of a method entry that are not RunConfig fields
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
            return _coerce(path[0], value, "")
        except ConfigError as e:
            raise ConfigError(f"{file}, line {line}: {where}: {str(e).lstrip(': ')}") from None
    return value


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


# ---------------------------------------------------------------------------------------------- blocks
@dataclass
class Selection:
    """Fair model selection: choose ``over`` (the learning rate) on a selection split carved from train."""

    selection_size: float = 0.1
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


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    defaults: Spec
    grid: Spec
    entries: list[tuple[str | None, Spec]]
    per_task: dict[str, Spec]
    selection: Selection | None = None
    early_stopping: EarlyStopping | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    max_runs: int = DEFAULT_MAX_RUNS
    # settings the suite leaves to the command line (``requires: [model]``: no model it could name is on every
    # machine, e.g. a LLaMA for GSM8K); expanding without them is one clear error
    requires: tuple[str, ...] = ()

    def size(self) -> int:
        """How many runs the grid expands to (before duplicates are dropped), counted without expanding it."""
        total = 0
        for _, entry in self.entries:
            axes = {p: v for p, v in self.grid.axes.items() if p not in entry.fixed and p not in entry.axes}
            axes.update(entry.axes)
            total += math.prod(len(v) for v in axes.values())
        return total

    # ------------------------------------------------------------------ expansion
    def expand(self, env: dict[str, Any] | None = None, validate: bool = True) -> list[PlannedRun]:
        """Every run of the suite, in file order, each validated; a duplicate key is kept once.

        ``env``: environment fields (data_dir, device, progress) set on every run; they do not change keys.
        All errors are collected and raised together as one :class:`ConfigError`.
        """
        from ..resolve import canonical_task, run_key

        env = dict(env or {})
        missing = [k for k in self.requires if k not in env]
        if missing:
            flags = " ".join(f"--{k.replace('_', '-')} VALUE" for k in missing)
            raise ConfigError(f"{self.path}: suite {self.name!r} leaves {', '.join(missing)} to the command line (it "
                              f"names none that is on every machine); run eft sweep {self.name} {flags}.")
        n = self.size()
        if n > self.max_runs:
            raise ConfigError(f"{self.path}: the suite expands to {n:,} runs, more than the limit of "
                              f"{self.max_runs:,}; shrink the grid, or raise the limit with max_runs: in the suite "
                              f"or ${ENV_MAX_RUNS}.")
        runs: list[PlannedRun] = []
        seen: set[str] = set()
        errors: list[str] = []
        for index, (label, entry) in enumerate(self.entries):
            where = f"{self.path}, line {entry.line} (methods[{index}])"
            axes = {p: v for p, v in self.grid.axes.items() if p not in entry.fixed and p not in entry.axes}
            axes.update(entry.axes)
            names = list(axes)
            for combo in itertools.product(*(axes[n] for n in names)):
                values = dict(self.defaults.fixed)
                origin = {p: self.defaults.lines[p] for p in self.defaults.fixed}
                if self.selection is not None:
                    values[("selection_size",)] = self.selection.selection_size
                    origin[("selection_size",)] = self.selection.line
                for p, v in self.grid.fixed.items():
                    values[p], origin[p] = v, self.grid.lines[p]
                for p, v in entry.fixed.items():
                    values[p], origin[p] = v, entry.lines[p]
                for p, v in zip(names, combo, strict=True):
                    values[p] = v
                    origin[p] = entry.lines[p] if p in entry.axes else self.grid.lines[p]
                task = values.get(("task",), DEFAULT_TASK)
                task_spec = self.per_task.get(canonical_task(task) if isinstance(task, str) else str(task))
                if task_spec is not None:
                    for p, v in task_spec.fixed.items():
                        values[p], origin[p] = v, task_spec.lines[p]
                cell = {".".join(p): v for p, v in zip(names, combo, strict=True)}
                try:
                    cfg = self._config(values, origin, env, validate, entry.line)
                except ConfigError as e:
                    if str(e) not in errors:
                        errors.append(str(e))
                    continue
                key = run_key(cfg)
                if key in seen:
                    continue
                seen.add(key)
                tags = {"suite": self.name, "label": label or _default_label(cfg), "entry": index, "cell": cell,
                        "group": group_key(cfg, self.selection.over if self.selection else ("lr",))}
                runs.append(PlannedRun(cfg, key, tags, where))
        if errors:
            more = f"\n(and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise ConfigError("\n".join(errors[:10]) + more)
        if validate:
            self._check_blocks(runs)
        return runs

    def _config(self, values: dict[Path_, Any], origin: dict[Path_, int], env: dict, validate: bool,
                fallback: int) -> RunConfig:
        from ..methods import METHODS
        from ..resolve import resolve
        from ..tasks import get_task

        d = _to_config_dict(values)
        cfg_where = lambda p: f"{self.path}, line {origin.get(p, 0)}"  # noqa: E731
        method = d.get("method", RunConfig.method)
        if method not in METHODS:
            raise ConfigError(f"{cfg_where(('method',))}: unknown method {method!r}."
                              f"{did_you_mean(method, METHODS.names())} "
                              f"Known methods: {', '.join(sorted(METHODS.names()))}.")
        if validate and not d.get("custom"):
            try:
                get_task(str(d.get("task", DEFAULT_TASK)))
            except ConfigError as e:
                raise ConfigError(f"{cfg_where(('task',))}: {e}") from None
        try:
            cfg = RunConfig.from_dict({**d, **env, "progress": env.get("progress", False)})
            return resolve(cfg)
        except ConfigError as e:
            raise ConfigError(f"{self.path}, line {_locate(str(e), origin, fallback)}: {e}") from None

    def _check_blocks(self, runs: list[PlannedRun]) -> None:
        es = self.early_stopping
        if es is None:
            return
        for r in runs:
            if r.cfg.steps is None:
                raise ConfigError(f"{self.path}, line {es.line}: early_stopping needs runs measured in steps, but "
                                  f"{r.describe()} ({r.where}) trains for epochs; give steps: instead.")
            if es.rungs[-1] >= r.cfg.steps:
                raise ConfigError(f"{self.path}, line {es.line}: early_stopping rungs {list(es.rungs)} must stay "
                                  f"below the full budget of {r.cfg.steps} steps ({r.describe()}).")

    @property
    def rung_budgets(self) -> tuple[int, ...]:
        return self.early_stopping.rungs if self.early_stopping else ()


def _locate(message: str, origin: dict[Path_, int], fallback: int) -> int:
    """The line of the field an error message names (the first one it mentions), else ``fallback``.

    A method's own errors ("method 'full' takes no argument 'rank'") point at its arguments, not at ``method:``.
    """
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


def _default_label(cfg: RunConfig) -> str:
    return f"{cfg.method} {cfg.targets}"


def group_key(cfg: RunConfig, over: tuple[str, ...] | list[str]) -> str:
    """The selection group of a run: its identity without the selected fields and the seed."""
    from .selection import group_of

    return group_of(cfg.to_dict(), over)


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


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite's structure (expanding it with :meth:`Suite.expand` validates every run).

    ``path`` is a suite file or the name of a shipped suite (``quick``, ``paper-table2``; see ``eft suites``)."""
    from ..resolve import canonical_task

    p = resolve_suite(path)
    raw = load_marked(p)
    f = str(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{f}: a suite is a mapping with keys {', '.join(SUITE_KEYS)}.")
    for k in raw:
        if k not in SUITE_KEYS:
            raise ConfigError(f"{f}, line {_line(raw, k)}: unknown suite key {k!r}.{did_you_mean(k, SUITE_KEYS)} "
                              f"Suite keys: {', '.join(SUITE_KEYS)}.")
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{f}, line {_line(raw, 'methods') or 1}: methods: must be a non-empty list of method "
                          f"entries (each a mapping with at least method:).")
    entries = []
    for i, e in enumerate(methods):
        where = f"methods[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{f}, line {_line(methods)}: {where} must be a mapping (method: lora, ...).")
        spec = _parse_spec(e, where, f, "allowed")
        label = e.get("label")
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"{f}, line {_line(e, 'label')}: {where}.label must be text, got {label!r}.")
        entries.append((label, spec))
    per_task_raw = raw.get("per_task") or {}
    if not isinstance(per_task_raw, dict):
        raise ConfigError(f"{f}, line {_line(raw, 'per_task')}: per_task: maps a task name to field: value.")
    per_task = {canonical_task(str(t)): _parse_spec(v, f"per_task.{t}", f, "never") for t, v in per_task_raw.items()}
    for t, spec in per_task.items():
        if ("task",) in spec.fixed:
            raise ConfigError(f"{f}, line {spec.lines[('task',)]}: per_task.{t} cannot change the task.")
    for k in ("name", "description"):
        if raw.get(k) is not None and not isinstance(raw[k], str):
            raise ConfigError(f"{f}, line {_line(raw, k)}: {k} must be text, got {raw[k]!r}.")
    name = raw.get("name") or p.stem
    suite = Suite(
        name=str(name), path=p, description=str(raw.get("description") or ""),
        defaults=_parse_spec(raw.get("defaults"), "defaults", f, "never"),
        grid=_parse_spec(raw.get("grid"), "grid", f, "required"),
        entries=entries, per_task=per_task,
        selection=_parse_selection(raw, f), early_stopping=_parse_early_stopping(raw, f),
        estimate=_parse_estimate(raw, f), max_runs=_parse_max_runs(raw, f), requires=_parse_requires(raw, f),
    )
    if suite.early_stopping is not None and suite.selection is None:
        raise ConfigError(f"{f}, line {suite.early_stopping.line}: early_stopping ranks trials by their selection "
                          f"score; add a selection: block.")
    known_tasks = {str(v) for v in suite.grid.axes.get(("task",), [])} | {str(suite.defaults.fixed.get(("task",)))}
    for _, spec in entries:
        known_tasks |= {str(v) for v in spec.axes.get(("task",), [])} | {str(spec.fixed.get(("task",)))}
    known_tasks = {canonical_task(t) for t in known_tasks}
    for t in per_task:
        if t not in known_tasks:
            raise ConfigError(f"{f}, line {_line(per_task_raw, t)}: per_task names {t!r}, which no run of the suite "
                              f"trains on.{did_you_mean(t, known_tasks)}")
    return suite


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
        raise ConfigError(f"{f}, line {line}: selection: is a mapping (selection_size, select_by, over).")
    _keys(s, ("selection_size", "select_by", "over"), "selection", f)
    size = _coerce("selection_size", s.get("selection_size", 0.1), f"{f}, line {line}: selection")
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
    return Selection(float(size), by, tuple(str(o) for o in over), line)


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
