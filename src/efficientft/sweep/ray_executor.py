"""The Ray executor: one Ray task per run, one GPU each when the cluster has GPUs, results into the one store.

**The driver writes the store.** Each task trains into a throw-away SQLite file on its own node and returns the
record and its curves; the driver (the ``eft sweep`` process) writes them into the store with
:meth:`~efficientft.store.Store.import_run`. So a cluster needs no shared filesystem for results, and SQLite is
never written over a network filesystem (where its locking is unreliable). The driver claims every run before
submitting it, so two sweeps of one suite never train the same key; if the driver dies, its claims are
``running`` under a dead ``host:pid`` and the next sweep takes them over. (A run finished on a worker while the
driver was dead is lost and re-run: results only count once they are in the store.)

A cluster needs: efficientft installed on every node (the same version), and the data and model reachable under
the same paths (``--data-dir``; the driver passes its resolved data directory with every run) or the hub.
``ray.init(address=...)`` joins a running cluster (``--ray-address auto`` on a head node); without an address a
local Ray is started (``--ray-num-cpus``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..store import Store
from .executors import Item, Outcome, steps_trained


def ray_or_error(tune: bool = False) -> None:
    """Refuse ``--executor ray`` in one line when Ray (or Ray Tune, for a search) is not installed."""
    try:
        import ray  # noqa: F401

        if tune:
            import ray.tune  # noqa: F401
    except ImportError as e:
        what = "a search: block with --executor ray needs Ray Tune" if tune else "--executor ray needs Ray"
        raise ConfigError(f"{what} ({e}): pip install 'efficientft[ray]'.") from None


def _ray_trial(item: Item) -> tuple[dict, list, float]:
    """Runs on a Ray worker: train into a local temporary store and hand back what it recorded."""
    import tempfile
    from pathlib import Path

    from ..config import RunConfig
    from ..quiet import quiet_libraries
    from ..train import run

    quiet_libraries()
    t0 = time.perf_counter()
    cfg = RunConfig.from_dict(item["config"])
    with tempfile.TemporaryDirectory(prefix="eft-ray-") as d:
        store = Store(Path(d) / "run.sqlite")
        error = None
        try:
            run(cfg, store, progress=False, tags=item.get("tags"))
        except Exception as e:  # noqa: BLE001 - stored as failed; the driver records it
            error = f"{type(e).__name__}: {e}"
        record = store.get(item["key"])
        curves = store.curves(item["key"]) if record is not None else []
    if record is None:  # it failed before training started (a set-up error on this node)
        from ..store import now, worker_id

        record = {"run_key": item["key"], "status": "failed", "config": cfg.to_dict(), "error": error,
                  "tags": item.get("tags") or {}, "worker": worker_id(), "started_at": now(), "finished_at": now(),
                  **{k: cfg.to_dict().get(k) for k in ("task", "method", "targets", "lr_ratio", "lr", "seed",
                                                       "model")}}
    return record, curves, time.perf_counter() - t0


class RayExecutor:
    name = "ray"

    def __init__(self, store_path: str, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_run: float = 1.0, gpus_per_run: float | None = None, retry_failed: bool = False,
                 reclaim: bool = False) -> None:
        self.store_path, self.address, self.num_cpus = store_path, address, num_cpus
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.retry_failed, self.reclaim = retry_failed, reclaim
        self._started = False

    def start(self) -> None:
        """Join the Ray cluster, or start a local Ray (once; a Ray already initialised is used as it is)."""
        import ray

        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = self.num_cpus
            # local workers import efficientft from where this process does (a source checkout, too): the folder
            # above the package (this file is efficientft/sweep/ray_executor.py)
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.environ.get("PYTHONPATH", "")
            if src not in path.split(os.pathsep):
                os.environ["PYTHONPATH"] = src + (os.pathsep + path if path else "")
        ray.init(**kwargs)
        self._started = True

    def close(self, abort: bool = False) -> None:
        """Shut down the Ray this executor started (a Ray the caller started is left running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def run(self, items: Sequence[Item], on_result: Callable[[Outcome], None]) -> list[Outcome]:
        import ray

        if not items:
            return []
        self.start()
        gpus = self.gpus_per_run
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        remote = ray.remote(_ray_trial).options(num_cpus=self.cpus_per_run, num_gpus=gpus, max_retries=0)
        store = Store(self.store_path)
        outs: list[Outcome] = []
        pending: dict[Any, tuple[Item, float]] = {}
        for item in items:
            claimed, previous = store.claim(item["key"], item["config"], item.get("tags"), self.retry_failed,
                                            self.reclaim)
            if not claimed:
                out = {"key": item["key"], "describe": item.get("describe"), "status": "skipped",
                       "reason": previous}
                on_result(out)
                outs.append(out)
                continue
            pending[remote.remote(item)] = (item, time.perf_counter())
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            item, t0 = pending.pop(ready[0])
            out = {"key": item["key"], "describe": item.get("describe"), "previous": "claimed"}
            try:
                record, curves, _ = ray.get(ready[0])
                store.import_run(record, curves)
                out.update(status=record["status"], error=record.get("error"), worker=record.get("worker"),
                           main_score=record.get("main_score"), main_metric=record.get("main_metric"),
                           steps=steps_trained(record))
            except Exception as e:  # noqa: BLE001 - the task or its node died
                error = f"Ray task failed: {type(e).__name__}: {e}"
                if store.holds(item["key"]):  # not when the claim was taken over (the record says so in error)
                    store.finish(item["key"], "failed", error=error)
                out.update(status="failed", error=error)
            out["wall_s"] = time.perf_counter() - t0
            on_result(out)
            outs.append(out)
        return outs
