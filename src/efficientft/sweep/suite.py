"""Suite files: shared defaults, a grid, per-method entries — expanded into validated :class:`RunConfig` runs.

A suite is YAML::

    name: quick
    defaults: {model: minilm, max_length: 64, batch_size: 16, steps: 250}   # single values, every run
    grid: {task: [sst2], seed: [0, 1, 2]}                                  # lists: the cartesian product
    methods:                                                               # one entry per method configuration
      - {label: "LoRA QV", method: lora, targets: qv, lr_ratio: [2, 4, 8], lr: [5.0e-4, 1.0e-3],
         method_args: {rank: [8, 16]}}
    per_task: {mnli: {epochs: 1}}                                          # per-task overrides, applied last
    selection: {selection_size: 0.1, select_by: main, over: [lr]}          # fair model selection (optional;
                                                                           # selection_max: N caps it at N examples)
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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_TASK, RunConfig
from ..errors import ConfigError, did_you_mean
from ..suites import resolve_suite
from .expand import PlannedRun, _default_label, _locate, _to_config_dict, group_key
from .marked_yaml import load_marked
from .suite_parse import (
    DEFAULT_MAX_RUNS,
    ENTRY_KEYS,
    ENV_MAX_RUNS,
    FIELDS,
    NESTED,
    SUITE_KEYS,
    EarlyStopping,
    Path_,
    Search,
    Selection,
    Spec,
    _line,
    _parse_early_stopping,
    _parse_estimate,
    _parse_max_runs,
    _parse_requires,
    _parse_search,
    _parse_selection,
    _parse_spec,
    parse_space,
)

__all__ = ["DEFAULT_MAX_RUNS", "ENTRY_KEYS", "ENV_MAX_RUNS", "FIELDS", "NESTED", "SUITE_KEYS", "EarlyStopping",
           "PlannedRun", "Search", "Selection", "Spec", "Suite", "group_key", "load_marked", "load_suite"]


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
    search: Search | None = None  # equal-budget tuning (sweep/search.py) instead of running the grid
    # a method entry's own searched fields (its ``search:``), by entry index: (space, lines), added to search.space
    # for that entry's configurations only (e.g. lambda searched for one "Q,V, lambda tuned" entry)
    entry_spaces: dict[int, tuple[dict[str, dict[str, Any]], dict[str, int]]] = field(default_factory=dict)

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
        seen: set[tuple[str, str]] = set()
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
                    if self.selection.selection_max is not None:  # in the key only when given
                        values[("selection_max",)] = self.selection.selection_max
                        origin[("selection_max",)] = self.selection.line
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
                group = group_key(cfg, self.over_for(index))
                if (key, group) in seen:  # one run once; an entry that searches other fields is its own group
                    continue
                seen.add((key, group))
                tags = {"suite": self.name, "label": label or _default_label(cfg), "entry": index, "cell": cell,
                        "group": group}
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
            raise ConfigError(f"{self.path}, line {_locate(e, origin, fallback)}: {e}") from None

    def _check_blocks(self, runs: list[PlannedRun]) -> None:
        if self.search is not None:
            self._check_search(runs)
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

    def _check_search(self, runs: list[PlannedRun]) -> None:
        """Every searched value at its bounds (each choice) valid for every configuration, before anything trains."""
        from .expand import apply_params, takes

        se = self.search
        for name in se.space:
            if not any(takes(r.cfg, name) for r in runs):
                arg = name.partition(".")[2]
                raise ConfigError(f"{self.path}, line {se.space_lines[name]}: search.space: unknown key {name!r}: "
                                  f"no method of the suite takes the argument {arg!r} (methods: "
                                  f"{', '.join(sorted({r.cfg.method for r in runs}))}).")
        for index, (space, lines) in self.entry_spaces.items():
            mine = [r for r in runs if r.tags["entry"] == index]
            for name in space:
                if mine and not any(takes(r.cfg, name) for r in mine):
                    raise ConfigError(f"{self.path}, line {lines[name]}: methods[{index}].search: unknown key "
                                      f"{name!r}: method {mine[0].cfg.method!r} takes no argument "
                                      f"{name.partition('.')[2]!r}.")
        if isinstance(se.min_steps, dict):
            tasks = {r.cfg.task for r in runs}
            for task in se.min_steps:
                if task not in tasks:
                    raise ConfigError(f"{self.path}, line {se.line}: search.min_steps names task {task!r}, which the "
                                      f"suite does not run (its tasks: {', '.join(sorted(tasks))}).")
        seen: set[str] = set()
        for r in runs:
            if r.cfg.steps is None:
                raise ConfigError(f"{self.path}, line {se.line}: search needs runs measured in steps (its rungs are "
                                  f"steps), but {r.describe()} ({r.where}) trains for epochs; give steps: instead.")
            if r.tags["group"] in seen:
                continue
            seen.add(r.tags["group"])
            space, lines = dict(se.space), dict(se.space_lines)
            where = {name: "search.space" for name in space}
            extra, extra_lines = self.entry_spaces.get(r.tags["entry"], ({}, {}))
            space.update(extra)
            lines.update(extra_lines)
            where.update({name: f"methods[{r.tags['entry']}].search" for name in extra})
            for name, d in space.items():
                if not takes(r.cfg, name):
                    continue
                for v in d.get("choice") or d.get("float") or d.get("int"):
                    try:
                        apply_params(r.cfg, {name: v})
                    except ConfigError as e:
                        raise ConfigError(f"{self.path}, line {lines[name]}: {where[name]}.{name}: the value "
                                          f"{v!r} is not valid for {r.describe()}: {e}") from None

    @property
    def over(self) -> tuple[str, ...]:
        """What varies inside a selection group: the selected fields, or everything a search samples."""
        if self.search is not None:
            return ("lr", *(k for k in self.search.space if k != "lr"))
        return self.selection.over if self.selection else ("lr",)

    def over_for(self, entry: int) -> tuple[str, ...]:
        """:attr:`over` for one method entry: with a search, the entry's own searched fields too."""
        own = self.entry_spaces.get(entry, ({}, {}))[0]
        return (*self.over, *(k for k in own if k not in self.over))

    def space_for(self, entry: int) -> dict[str, dict[str, Any]]:
        """The fields a search samples for one entry's configurations: the suite's space, then the entry's own."""
        return {**(self.search.space if self.search else {}), **self.entry_spaces.get(entry, ({}, {}))[0]}

    @property
    def rung_budgets(self) -> tuple[int, ...]:
        return self.early_stopping.rungs if self.early_stopping else ()


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
    entry_spaces = {}
    for i, e in enumerate(methods):
        where = f"methods[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{f}, line {_line(methods)}: {where} must be a mapping (method: lora, ...).")
        spec = _parse_spec(e, where, f, "allowed")
        label = e.get("label")
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"{f}, line {_line(e, 'label')}: {where}.label must be text, got {label!r}.")
        entries.append((label, spec))
        if e.get("search") is not None:
            entry_spaces[i] = parse_space(e["search"], _line(e, "search"), f, f"{where}.search")
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
        search=_parse_search(raw, f), entry_spaces=entry_spaces,
    )
    if entry_spaces and suite.search is None:
        i = min(entry_spaces)
        raise ConfigError(f"{f}, line {_line(methods[i], 'search')}: methods[{i}].search: an entry's searched fields "
                          f"are part of a search; add a search: block (trials, min_steps, ...).")
    for i, (space, _lines) in entry_spaces.items():
        fixed = [".".join(p) for p in (*entries[i][1].fixed, *entries[i][1].axes) if ".".join(p) in space]
        if fixed:
            raise ConfigError(f"{f}, line {_line(methods[i], 'search')}: methods[{i}] both sets and searches "
                              f"{fixed[0]}; keep one.")
    if suite.search is not None and suite.selection is None:
        raise ConfigError(f"{f}, line {suite.search.line}: search scores its trials on a selection split carved "
                          f"from train (never dev); add a selection: block.")
    if suite.search is not None and suite.early_stopping is not None:
        raise ConfigError(f"{f}, line {suite.early_stopping.line}: a search prunes its trials itself (successive "
                          f"halving at its rungs); drop early_stopping: or search:.")
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


