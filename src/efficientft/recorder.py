"""A run's record: the store's claim, provenance, cost figures and details, the status each outcome maps to, the
checkpoints kept beside the store, and the experiment trackers' run; the record :func:`efficientft.train.run`
returns.

Outcomes (:meth:`Recorder.__exit__`): training and evaluation done -> ``done``; a non-finite loss (:class:`Diverged`)
-> ``diverged`` (not raised further); Ctrl-C or SIGTERM -> ``cancelled``; a failed final evaluation
(:class:`EvaluationFailed`) -> ``failed``, its trained checkpoint named; any other exception -> ``failed``. All but
``diverged`` are raised again once the record is written.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import checkpoint, memory_model, provenance
from .checkpoint import TrainState
from .config import RunConfig
from .errors import AlreadyDone
from .meters import CpuShare, PeakMemory
from .models import fingerprint
from .runtime import Runtime
from .step import Diverged
from .store import Store
from .strategy import describe_groups
from .trackers import Trackers


def total_params(model: Any) -> int:
    """Every parameter of ``model``, each shared tensor once (the cost record's ``total_params``)."""
    return sum(q.numel() for q in {id(q): q for q in model.parameters()}.values())


class EvaluationFailed(RuntimeError):
    """Training ended, the final evaluation raised. ``checkpoint``: the trained state, saved (None: checkpoints
    are off); ``curve``: the curve rows not yet in the store."""

    def __init__(self, steps: int, checkpoint: Path | None, curve: list, cause: BaseException) -> None:
        kept = (f"the trained state is kept in {checkpoint}: run it again to evaluate it without training"
                if checkpoint is not None else "this run keeps no checkpoint (checkpoint_every 0, or data-parallel), "
                "so the trained state is lost")
        super().__init__(f"training finished ({steps} steps) and the final evaluation failed "
                         f"({type(cause).__name__}: {cause}); {kept}.")
        self.checkpoint, self.curve = checkpoint, curve


class Recorder:
    """One run's record, from before its set-up (peak memory and wall time count from here) to its end.

    ``store`` None: nothing is stored (no store given, or not the main process of a data-parallel run); the record
    is then built here. With a store the run checkpoints into ``<store>.checkpoints/<key>/`` (not data-parallel).
    """

    def __init__(self, cfg: RunConfig, key: str, store: Store | None, runtime: Runtime, fresh_process: bool) -> None:
        self.cfg, self.key, self.store, self.runtime, self.fresh_process = cfg, key, store, runtime, fresh_process
        self.memory = PeakMemory(runtime.device)
        self.memory.reset()
        self.t0 = time.perf_counter()
        self.cpu = CpuShare(runtime.device)
        self.folder = None  # data-parallel runs are not checkpointed
        if store is not None and runtime.accelerator is None:
            self.folder = checkpoint.folder_for(store.path, key)
        self.checkpoints: checkpoint.Checkpoints | None = None
        self.trackers: Trackers | None = None
        self.status, self.error, self.scores = "done", None, {}
        self.cost: dict[str, Any] = {}
        self.details: dict[str, Any] = {}
        self.prov: dict[str, Any] = {}
        self.main_metric = ""
        self.total_steps = 0

    def resume_point(self) -> TrainState | None:
        """The latest checkpoint of this key, unless the key is done (an earlier attempt was killed, cancelled or
        failed; a done run redone by ``--force`` starts over)."""
        if self.folder is None or self.store.status(self.key) == "done":
            return None
        checkpoint.adopt_legacy(self.store.path, self.key)
        return checkpoint.Checkpoints(self.folder, 0).latest()

    def claim(self, p: Any, tags: dict | None, force: bool) -> bool:
        """Start the record of the prepared run ``p`` (provenance, the store's claim, the trackers' run); False
        when the store says the key is done already (a sweep finished it while this run was set up)."""
        cfg, store, resume = self.cfg, self.store, p.resume  # None when the checkpoint was saved from other inputs
        self.total_steps = p.total_steps
        if self.folder is not None and cfg.checkpoint_every != 0:  # 0: off, not even on SIGTERM
            every = cfg.checkpoint_every if cfg.checkpoint_every is not None else checkpoint.default_every(p.total_steps)
            self.checkpoints = checkpoint.Checkpoints(self.folder, every)
        device = self.runtime.device
        self.prov = {
            "code": provenance.code_version(), "packages": provenance.package_versions(),
            "hardware": provenance.hardware(device), "command": provenance.command_line(), "seed": cfg.seed,
            "data_seed": cfg.data_seed, "data_files": {f: provenance.file_sha256(f) for f in p.info["data_files"]},
            "model": {"name": cfg.model, "path": p.info["model_path"], "sha256": fingerprint(p.info["model_path"])},
            "comparable": p.task.comparable,
        }
        # the split a run is judged on: dev, or the selection split where the official ones are not scored
        self.main_metric = f"{'dev' if cfg.score_official else 'selection'}/{p.task.main_metric}"
        if store is not None:
            try:
                store.start(self.key, cfg.to_dict(), self.prov, tags, self.main_metric, redo_done=force)
            except AlreadyDone as e:
                print(f"note: {e}", file=sys.stderr)
                return False
        try:  # after the claim: a run that is not trained opens no tracker run
            self.trackers = Trackers(cfg.tracker if self.runtime.is_main else [], self.key, cfg.to_dict(),
                                     store.path.parent if store is not None else Path("."),
                                     resume.step if resume else 0, resume.trackers if resume else None)
        except BaseException:
            if store is not None:  # a tracker that cannot start leaves the store as it was
                store.unclaim(self.key)
            raise
        if resume is None and self.folder is not None:  # a fresh start (--force): an earlier attempt's checkpoints go
            checkpoint.remove(self.folder)
        self._begin(p)
        return True

    def _begin(self, p: Any) -> None:
        """The cost figures and details known before the first step; say where a resumed run continues."""
        cost = self.cost
        cost.update({
            "trainable_params": p.method.trainable_parameters(p.model), "base_params": p.base_params,
            "total_params": total_params(p.model),
            "setup_s": p.info["setup_s"], "total_steps": p.total_steps, "epochs": p.info["epochs"],
            "processes": self.runtime.num_processes, **p.estimate_cost,
        })
        cost["trainable_fraction"] = cost["trainable_params"] / max(1, p.base_params)
        self.details.update({"groups": describe_groups(p.groups), "info": p.info, "method_args": p.method.args_dict(),
                             "fresh_process": self.fresh_process})
        if p.resume is not None:
            self.details["resumed_from_step"] = p.resume.step
            print(f"run {self.key}: resuming from step {p.resume.step} of {p.total_steps} ({p.resume.path})"
                  + ("; training had finished: evaluating it" if p.resume.step >= p.total_steps else ""),
                  file=sys.stderr)

    def trained(self, scores: dict[str, float], cost: dict[str, Any], details: dict[str, Any], curve: list,
                predictions: dict[str, list[dict]]) -> None:
        """What training and the final evaluation measured; the curve rows and predictions go to the store."""
        self.scores = scores
        self.cost.update(cost)
        self.details.update(details)
        if self.store is not None:
            self.store.add_curves(self.key, curve)
            if predictions:  # every prediction of the final evaluation, for reports and audits
                self.store.add_predictions(self.key, predictions)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: type | None, e: BaseException | None, tb: Any) -> bool:
        """Map the outcome to a status, write the record, and raise again all but a divergence."""
        if isinstance(e, Diverged):
            self.status, self.error = "diverged", str(e)
            self.details["diverged_at_step"] = e.step
            self.details["skipped_steps"] = e.skipped
            if self.store is not None:
                self.store.add_curves(self.key, e.curve)
        elif isinstance(e, KeyboardInterrupt):
            self.status, self.error = "cancelled", "interrupted (Ctrl-C or SIGTERM)"
        elif isinstance(e, EvaluationFailed):  # trained: the record says so, the curves and the checkpoint stay
            self.status, self.error = "failed", f"{e}\n{traceback.format_exc(limit=8)}"
            self.details["failed_in"] = "final evaluation"
            self.details["trained_checkpoint"] = str(e.checkpoint) if e.checkpoint is not None else None
            if self.store is not None:
                self.store.add_curves(self.key, e.curve)
        elif e is not None:  # recorded, then raised again (SystemExit too: never stored as done)
            self.status, self.error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        self._finish()
        return isinstance(e, Diverged)

    def _finish(self) -> None:
        cost = self.cost
        cost.update(self.memory.read())
        if "predicted_peak_mb" in cost:
            cost.update(memory_model.compare(cost["predicted_peak_mb"], cost.get("peak_memory_mb")))
        cost["wall_s"] = time.perf_counter() - self.t0
        cost.update(self.cpu.read(cost["wall_s"]))
        main = self.scores.get(self.main_metric)
        try:
            if self.store is not None:
                self.store.finish(self.key, self.status, self.scores, cost, self.details, self.error, main)
            if self.status == "done" and self.folder is not None and not self.cfg.keep_checkpoints:
                checkpoint.remove(self.folder)
        finally:
            self.trackers.log(self.total_steps, {f"cost/{k}": v for k, v in cost.items()})
            self.trackers.finish(self.status)

    def stored(self) -> dict[str, Any]:
        """The record as stored (the run was not trained: its key was done already)."""
        return self.store.get(self.key) or {}

    def record(self) -> dict[str, Any]:
        """The stored record (or, with no store, the same record built here)."""
        record = self.store.get(self.key) if self.store is not None else None
        if record is None:
            record = {"run_key": self.key, "status": self.status, "config": self.cfg.to_dict(), "scores": self.scores,
                      "cost": self.cost, "provenance": self.prov, "details": self.details, "error": self.error,
                      "main_metric": self.main_metric, "main_score": self.scores.get(self.main_metric)}
        return record
