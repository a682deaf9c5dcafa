"""Executors: run a list of planned runs in this process, or on a local pool of worker processes.

Every run goes through :func:`execute_one`: claim the key in the store (atomic; skip-if-done, never two workers
on one key), train it with :func:`efficientft.train.run` (which stores the record), and report an outcome. A
failing run is stored ``failed`` and the sweep goes on. The Ray executor lives in :mod:`.ray_executor`.

The pool uses ``spawn`` processes (no CUDA or thread state inherited), each running many runs. On the CPU each
worker gets ``cores // workers`` torch threads; with GPUs each worker sees one device (``CUDA_VISIBLE_DEVICES``),
round-robin. On Linux a worker dies with the sweep that started it (``PR_SET_PDEATHSIG``), so a killed sweep
leaves no orphan training; its claimed rows are then ``running`` under a dead ``host:pid`` and the next sweep
takes them over.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ClaimLost
from ..store import Store

Outcome = dict[str, Any]
Item = dict[str, Any]  # {"key", "config" (resolved RunConfig as a dict), "tags", "describe"}


def steps_trained(record: dict) -> int | None:
    """The optimizer steps this attempt trained: a resumed run's steps before its checkpoint were trained (and
    counted) by the attempt that saved it, and a diverged run stopped at the step it diverged at."""
    total = (record.get("cost") or {}).get("total_steps")
    if total is None:
        return None
    details = record.get("details") or {}
    end = details.get("diverged_at_step") or total if record.get("status") == "diverged" else total
    return max(0, end - (details.get("resumed_from_step") or 0))


def execute_one(item: Item, store_path: str, retry_failed: bool = False, reclaim: bool = False) -> Outcome:
    """Claim, train and store one run; never raises for a failed run (only for Ctrl-C)."""
    from ..config import RunConfig
    from ..train import run

    store = Store(store_path)
    key, tags = item["key"], item.get("tags") or {}
    cfg = RunConfig.from_dict(item["config"])
    claimed, previous = store.claim(key, cfg.to_dict(), tags, retry_failed, reclaim)
    out: Outcome = {"key": key, "describe": item.get("describe", key), "previous": previous, "worker": os.getpid()}
    if not claimed:
        return {**out, "status": "skipped", "reason": previous}
    t0 = time.perf_counter()
    try:
        rec = run(cfg, store, progress=False, tags=tags)
        out.update(status=rec["status"], error=rec.get("error"), main_score=rec.get("main_score"),
                   main_metric=rec.get("main_metric"), steps=steps_trained(rec))
    except ClaimLost as e:  # another run (--reclaim) owns the key now: its record stands, ours is not a failure
        out.update(status="skipped", reason="taken over", error=str(e))
    except Exception as e:  # noqa: BLE001 - a failing run must not stop the sweep
        error = f"{type(e).__name__}: {e}"
        if store.holds(key):  # failed before training started (train.run stores later failures, or says why not)
            store.finish(key, "failed", error=f"{error}\n{traceback.format_exc(limit=6)}")
        out.update(status="failed", error=error)
    out["wall_s"] = time.perf_counter() - t0
    return out


def _pool_execute(item: Item, store_path: str, retry_failed: bool = False, reclaim: bool = False) -> Outcome:
    """:func:`execute_one` in a pool worker. A run stopped by SIGTERM or Ctrl-C (checkpointed, stored
    ``cancelled``) ends its worker too: a ProcessPoolExecutor worker catches the KeyboardInterrupt like any
    exception and takes the next queued run, so a cancelled sweep's workers went on training."""
    try:
        return execute_one(item, store_path, retry_failed, reclaim)
    except KeyboardInterrupt:
        sys.stdout.flush()
        os._exit(128 + signal.SIGTERM)


class InProcess:
    """Runs one after another in this process (``--workers 1``)."""

    name = "in-process"

    def __init__(self, store_path: str, retry_failed: bool = False, reclaim: bool = False) -> None:
        self.store_path, self.retry_failed, self.reclaim = store_path, retry_failed, reclaim

    def run(self, items: Sequence[Item], on_result: Callable[[Outcome], None]) -> list[Outcome]:
        outs = []
        for item in items:
            out = execute_one(item, self.store_path, self.retry_failed, self.reclaim)
            on_result(out)
            outs.append(out)
        return outs

    def close(self, abort: bool = False) -> None:
        pass


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned worker finishes its current run, then exits with the pool


def _init_worker(threads: int, devices: Any) -> None:
    """Runs first in each spawned worker, before torch is imported."""
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if devices is not None:
        from multiprocessing.util import Finalize

        gpu = devices.get()
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        Finalize(None, devices.put, args=(gpu,), exitpriority=10)  # back for the next worker (--fresh-process)
    import torch

    torch.set_num_threads(threads)
    from ..quiet import quiet_libraries

    quiet_libraries()


class SpawnRecorder:
    """The ``spawn`` multiprocessing context, keeping the processes started through it.

    ``ProcessPoolExecutor`` launches its workers with the context it is given (``mp_context``: documented), but
    keeps them only in a private attribute; the pool's workers are read here instead (:meth:`LocalPool.close`
    signals them). Everything else is the spawn context's own.
    """

    def __init__(self) -> None:
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self.processes: list = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the context's own name
        self.processes = [p for p in self.processes if p.exitcode is None]  # finished ones are forgotten
        process = self._ctx.Process(*args, **kwargs)
        self.processes.append(process)
        return process


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


STOP_WAIT_S = 60.0  # how long a stopped pool waits for its workers to store their runs ``cancelled``


class LocalPool:
    """``workers`` spawned processes sharing the CPU (threads split evenly) or one GPU each."""

    name = "local-pool"

    def __init__(self, store_path: str, workers: int, retry_failed: bool = False, reclaim: bool = False,
                 fresh_process: bool = False, slots: int | None = None) -> None:
        self.store_path, self.workers, self.retry_failed, self.reclaim = store_path, workers, retry_failed, reclaim
        self.slots = slots or workers  # processes in this pool; the CPU's threads are split over ``workers``
        # one run per worker process: a long-lived process keeps what earlier runs allocated (caches, heap it cannot
        # return), so a later run's peak RSS measures the process's history, not the run (in a 44-run in-process
        # sweep the starting RSS rose from 432 to 632 MB, and small methods' peaks read above full fine-tuning's)
        self.fresh_process = fresh_process
        self._pool = None
        self._spawn = SpawnRecorder()  # the pools' worker processes
        self._aborted = False

    def lanes(self) -> list[LocalPool]:
        """One single-process pool per worker, the CPU's threads split as in this pool: a search's runs each take a
        free lane (:class:`~efficientft.sweep.search.Trainer`), and a lane's dead worker is recovered without
        touching the others (:meth:`run`'s rule, per lane)."""
        return [LocalPool(self.store_path, self.workers, self.retry_failed, self.reclaim, self.fresh_process, slots=1)
                for _ in range(self.workers)]

    def reusing(self) -> LocalPool:
        """This pool for runs whose cost is not compared (a search's trials): with ``--fresh-process``, the same
        pool whose worker runs one run after another (no interpreter start and imports per run, some 5-10 s on a
        CPU core); otherwise this pool itself. The run records which it was (``details.fresh_process``)."""
        if not self.fresh_process:
            return self
        return LocalPool(self.store_path, self.workers, self.retry_failed, self.reclaim, False, slots=self.slots)

    def _new_pool(self, workers: int):
        from concurrent.futures import ProcessPoolExecutor

        ctx = self._spawn
        threads = max(1, (os.cpu_count() or 1) // self.workers)  # as many as a worker of the full pool
        gpus = gpu_count()
        devices = None
        if gpus:
            devices = ctx.Queue()
            for i in range(workers):
                devices.put(i % gpus)
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, devices), max_tasks_per_child=1 if self.fresh_process else None)

    def _start(self):
        self._pool = self._new_pool(self.slots)
        return self._pool

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a broken pool's workers are gone after this
            self._pool = None

    def run(self, items: Sequence[Item], on_result: Callable[[Outcome], None]) -> list[Outcome]:
        """Run ``items`` on the pool.

        A worker that dies (killed, out of memory) breaks the whole pool, and every worker's current run with it.
        Runs that had not started go on in a fresh pool as if nothing happened. The runs that were in flight are
        the suspects: each is tried again alone, in a one-worker pool, so that a second death names its culprit,
        which is stored ``failed``; the others finish normally (a run that kills its worker would otherwise take
        every pool down with it, and its neighbours, forever).
        """
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        outs: list[Outcome] = []
        pending = list(items)
        while pending:
            self._check_aborted()
            pool = self._pool or self._start()
            futures = {pool.submit(_pool_execute, item, self.store_path, self.retry_failed, self.reclaim): item
                       for item in pending}
            broken, error = [], ""
            for fut in as_completed(futures):
                try:
                    out = fut.result()
                except BrokenProcessPool as e:
                    broken.append(futures[fut])
                    error = str(e)
                    continue
                on_result(out)
                outs.append(out)
            if not broken:
                break
            self._check_aborted()  # its workers were stopped on purpose: nothing to recover
            self._discard()
            suspects = [item for item in broken if _in_flight(item, self.store_path)]
            pending = [item for item in broken if item not in suspects]
            print(f"a worker process died ({error}); {len(suspects)} run(s) that were running start again, one at "
                  f"a time; {len(pending)} go on in a fresh pool", file=sys.stderr, flush=True)
            for item in suspects:
                self._pool = self._new_pool(1)
                try:
                    out = self._pool.submit(_pool_execute, item, self.store_path, self.retry_failed,
                                            self.reclaim).result()
                except BrokenProcessPool as e:
                    self._discard()  # joins the dead worker: until then it may still look alive to _in_flight
                    out = _lost(item, self.store_path, f"its worker process died twice, the second time running "
                                                       f"alone (killed, or out of memory?): {e}")
                finally:
                    self._discard()
                on_result(out)
                outs.append(out)
        self._check_aborted()  # a run stopped by the abort is no result to build on (a search would score it)
        return outs

    def _check_aborted(self) -> None:
        """After :meth:`close` with ``abort`` (called from another thread), a caller of :meth:`run` stops as if it
        had been interrupted itself: its runs were stopped and stored ``cancelled``, for the next sweep."""
        if self._aborted:
            raise KeyboardInterrupt("the sweep was stopped")

    def close(self, abort: bool = False) -> None:
        """Wait for the workers to exit; on ``abort`` (Ctrl-C, SIGTERM) do not wait for their runs: queued runs
        are dropped and each worker is sent SIGTERM, so its run saves a checkpoint at the end of the step under
        way and is stored ``cancelled`` (the next sweep continues it); the workers are given up to
        :data:`STOP_WAIT_S` to do so before this returns (the sweep's exit would otherwise race their writes and
        leave the run ``running`` under a dead worker, to be reclaimed). The signal is sent, not assumed: a SIGINT
        or SIGTERM sent to this process alone (``kill PID``, a scheduler) never reaches the workers, and the
        pool's exit handler would wait for their whole runs."""
        self._aborted = self._aborted or abort
        if self._pool is not None:
            workers = list(self._spawn.processes) if abort else []
            self._pool.shutdown(wait=not abort, cancel_futures=True)
            for p in workers:
                if p.is_alive():
                    p.terminate()
            deadline = time.monotonic() + STOP_WAIT_S  # until each has stored its run (a step, then the write)
            for p in workers:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
            self._pool = None


def _in_flight(item: Item, store_path: str) -> bool:
    """The run had started on a worker that is now dead (its row is ``running`` under a dead process)."""
    from ..store import worker_alive

    row = Store(store_path).get(item["key"])
    return row is not None and row["status"] == "running" and worker_alive(row["worker"]) is False


def _lost(item: Item, store_path: str, error: str) -> Outcome:
    if _in_flight(item, store_path):
        Store(store_path).finish(item["key"], "failed", error=error)
    return {"key": item["key"], "describe": item.get("describe", item["key"]), "status": "failed", "error": error}
