"""The settings of a sweep, written once: :class:`SweepOptions`' fields carry their :class:`~efficientft.schema.Setting`
(type, default, help, validation, flag), as :class:`~efficientft.config.RunConfig`'s do.

``eft sweep``'s flags and :func:`efficientft.api.run_suite`'s keyword arguments are both derived from
:data:`SWEEP_SETTINGS`: how the sweep runs (these fields) and the run settings a suite leaves to the command line
(``sweep_flag``: the data folder, the device, ``--model``, ``--train-data``), which go on every run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import SETTINGS
from ..errors import did_you_mean
from ..schema import Rule, Setting, positive, setting

EXECUTORS = ("local", "ray")


@dataclass
class SweepOptions:
    """How a sweep runs (none of it enters a run key). Each value is checked by its setting's rule."""

    workers: int = setting(1, positive("int"),
                           help="local worker processes (1: in this process); they share the CPU or take one GPU each")
    executor: str = setting("local", Rule("choice", choices=EXECUTORS), help="local processes or a Ray cluster")
    retry_failed: bool = setting(False, Rule("bool"), help="run failed and diverged runs again")
    fresh_process: bool = setting(False, Rule("bool"),
                                  help="each run in a new process (a local pool, --workers 1 too): its peak memory is "
                                       "then its own, not raised by what earlier runs left in the process; costs an "
                                       "interpreter start per run (a search's trials, whose costs are not "
                                       "compared, reuse one per lane)")
    reclaim: bool = setting(False, Rule("bool"),
                            help="take over runs marked running by another host (a sweep that died elsewhere)")
    early_stopping: bool = setting(True, Rule("bool"), flag="--no-early-stopping",
                                   help="ignore the suite's early_stopping block: run the full grid")
    ray_address: str | None = setting(None, Rule("text", optional=True),
                                      help="join this Ray cluster (e.g. auto); default: start a local Ray")
    ray_num_cpus: int | None = setting(None, positive("int", optional=True),
                                       help="CPUs of the local Ray (default: all)")
    env: dict[str, Any] = field(default_factory=dict)  # data_dir, device: not part of any key

    def __post_init__(self) -> None:
        for f in fields(self):
            if "setting" in f.metadata:
                setattr(self, f.name, f.metadata["setting"].rule.check(f.name, getattr(self, f.name)))


# how the sweep runs, then the run settings it sets on every run: the one list the CLI and the API derive from
OPTION_SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(SweepOptions)
                                       if "setting" in f.metadata}
ENV_SETTINGS: dict[str, Setting] = {name: s for name, s in SETTINGS.items() if s.sweep_flag}
SWEEP_SETTINGS: dict[str, Setting] = {**OPTION_SETTINGS, **ENV_SETTINGS}
SWEEP_DEFAULTS: dict[str, Any] = {**{f.name: f.default for f in fields(SweepOptions) if f.name in OPTION_SETTINGS},
                                  **dict.fromkeys(ENV_SETTINGS)}  # an environment setting left out: the suite's


def environment(data_dir: str | None = None, device: str | None = None, model: str | None = None,
                train_data: str | None = None) -> dict[str, Any]:
    """Fields set on every run from the command line: the environment (the data directory is resolved here so
    remote workers get a path), and ``--model`` / ``--train-data``, which override the suite's (they are in every
    run's key)."""
    from ..tasks import ENV_DATA_DIR  # here: the tasks import torch, and the API reads this module's schema

    env: dict[str, Any] = {"progress": False}
    if model:
        env["model"] = model
    if train_data:
        env["train_data"] = train_data
    d = data_dir or os.environ.get(ENV_DATA_DIR)
    if d:
        env["data_dir"] = os.path.abspath(os.path.expanduser(d))
    if device:
        env["device"] = device
    return env


def sweep_options(**values: Any) -> SweepOptions:
    """:class:`SweepOptions` from settings of :data:`SWEEP_SETTINGS` (a value left out or None: its default).

    An unknown name is a TypeError naming the known ones; a value outside its rule is a :class:`ConfigError`."""
    for name in values:
        if name not in SWEEP_SETTINGS:
            raise TypeError(f"no sweep setting {name!r}.{did_you_mean(name, list(SWEEP_SETTINGS))} Settings: "
                            f"{', '.join(SWEEP_SETTINGS)}.")
    given = {k: v for k, v in values.items() if v is not None}
    env = {name: ENV_SETTINGS[name].rule.check(name, given[name]) for name in ENV_SETTINGS if name in given}
    return SweepOptions(**{k: v for k, v in given.items() if k in OPTION_SETTINGS}, env=environment(**env))

