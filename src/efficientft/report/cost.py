"""What each configuration cost, and what the whole store cost: the other half of "best score for the price".

Per configuration (a table row): its runs in the table (under ``--select-lr``, the selected learning rate's), their
trainable parameters, the median over runs of each run's median optimizer step, the largest peak memory, the
median wall time per run and the wall time summed, the median tokens per second and the median model FLOPs
utilisation (MFU, :mod:`efficientft.flops`; NaN where no run knows its device's peak), and the median share of
their cores the runs had (:class:`efficientft.meters.CpuShare`: times measured while sharing the CPU are marked).
For the store: every run it holds, whatever its status and
whether or not a table shows it (the learning rates not selected, failed and cancelled runs), so the compute a
study spent is never under-reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .collect import Collection
from .values import number


@dataclass
class CostRow:
    label: str
    runs: int
    params_min: float
    params_max: float
    median_step_s: float
    peak_memory_mb: float
    wall_per_run_s: float
    wall_s: float
    tokens_per_s: float = math.nan
    mfu: float = math.nan
    mixed_processes: bool = False  # some runs ran first in a fresh process, others after earlier runs in theirs
    cpu_share: float = math.nan  # median over runs of the share of their cores they had (meters.CpuShare)

    @property
    def shared_cpu(self) -> bool:
        return shared(self.cpu_share)


SHARED_BELOW = 0.8  # a one-thread run beside one other busy thread per core has about 0.5


def cpu_share(runs: Iterable[dict]) -> float:
    """The median over ``runs`` of the share of their cores they had (:class:`efficientft.meters.CpuShare`); NaN
    where no run recorded one."""
    return _median(_values(runs, "cpu_share"))


def shared(share: float) -> bool:
    """Runs with this median CPU share had under :data:`SHARED_BELOW` of their cores: their times are not an idle
    machine's (NaN, nothing recorded: not marked)."""
    return share < SHARED_BELOW


@dataclass
class Spent:
    runs: int
    by_status: dict[str, int]
    wall_s: float  # summed over runs (a run on one core of a shared CPU counts its own wall time)
    train_s: float
    steps: int
    first: str | None
    last: str | None


def _values(runs: Iterable[dict], name: str) -> list[float]:
    vals = [number((r.get("cost") or {}).get(name)) for r in runs]
    return [v for v in vals if math.isfinite(v)]


def _median(vals: list[float]) -> float:
    return statistics.median(vals) if vals else math.nan


def cost_rows(col: Collection) -> list[CostRow]:
    out = []
    for row in col.rows:
        runs = [r for c in row.cells.values() for r in c.runs]
        params = _values(runs, "trainable_params")
        wall = _values(runs, "wall_s")
        out.append(CostRow(row.label, len(runs), min(params, default=math.nan), max(params, default=math.nan),
                           _median(_values(runs, "median_step_s")), max(_values(runs, "peak_memory_mb"),
                                                                         default=math.nan),
                           _median(wall), sum(wall), _median(_values(runs, "tokens_per_s")),
                           _median(_values(runs, "mfu")), _mixes_processes(runs), cpu_share(runs)))
    return out


def _mixes_processes(runs: list[dict]) -> bool:
    """Whether some runs were the first in their process and others were not (``details.fresh_process``): a
    process's peak memory only grows, so their peak-memory figures measure different things. Records from before
    the field existed say nothing and are left out."""
    seen = {(r.get("details") or {}).get("fresh_process") for r in runs}
    return {True, False} <= seen


def spent(records: Iterable[dict]) -> Spent:
    records = list(records)
    by_status: dict[str, int] = {}
    for r in records:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    steps = sum(int(v) for v in _values(records, "total_steps"))
    times = sorted(str(t) for r in records for t in (r.get("started_at"), r.get("finished_at")) if t)
    return Spent(len(records), by_status, sum(_values(records, "wall_s")), sum(_values(records, "train_s")), steps,
                 times[0] if times else None, times[-1] if times else None)
