"""Experiment trackers: live loss, learning rate, gradient norm, evaluation scores and cost figures of a run.

``--tracker tensorboard|mlflow|wandb`` (several allowed) sends each run to the libraries' own clients: the run's
name is its run key, its parameters are the resolved config (flattened, ``method_args.rank``). The loop knows none
of them: it calls :meth:`Trackers.log` on one composite. Each tracker is an optional extra
(``pip install efficientft[tensorboard]``); naming one that is not installed is refused before training.

Where they write: TensorBoard event files in ``<store folder>/tensorboard/<run key>/``; MLflow to
``$MLFLOW_TRACKING_URI`` or else a local file store ``<store folder>/mlruns``; W&B to its project
``$WANDB_PROJECT`` (default ``efficientft``) under its own settings (``WANDB_MODE=offline`` writes locally).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .vocab import TRACKERS
from .vocab import check_tracker_names as check_names  # noqa: F401 - its old home


def check_installed(names: list[str]) -> None:
    """Refuse (before training) a tracker whose library is not installed, saying which extra installs it."""
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"tracker {name!r} needs the {TRACKERS[name]} package, which is not installed: "
                              f"pip install 'efficientft[{name}]'.")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method_args": {"rank": 8}}`` -> ``{"method_args.rank": 8}``; lists and None as text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[name] = v
        else:
            out[name] = json.dumps(v, default=str)
    return out


class TensorBoard:
    def __init__(self, key: str, params: dict[str, Any], folder: Path, start: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run continues the same log: what an earlier attempt logged after its checkpoint is purged
        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard" / key), purge_step=start + 1 if start else None)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(params.items())))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class MLflow:
    def __init__(self, key: str, params: dict[str, Any], folder: Path, start: int = 0, run_id: str | None = None
                 ) -> None:
        import os

        import mlflow

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # a local file store (MLflow 3 wants it allowed)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((folder / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "efficientft")
        if run_id is not None and not self._exists(run_id):  # deleted in MLflow since: a checkpoint stays usable
            import sys

            print(f"note: MLflow run {run_id}, which this run's checkpoint continues, is deleted or gone; logging to "
                  f"a new MLflow run from step {start + 1}.", file=sys.stderr)
            run_id = None
        if run_id is not None:  # a resumed run continues the MLflow run its checkpoint names (params logged)
            self.run = mlflow.start_run(run_id=run_id)
        else:
            self.run = mlflow.start_run(run_name=key)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def _exists(self, run_id: str) -> bool:
        """Is ``run_id`` a live run of this tracking server (not deleted, not purged)?"""
        from mlflow.exceptions import MlflowException

        try:
            return self.mlflow.tracking.MlflowClient().get_run(run_id).info.lifecycle_stage != "deleted"
        except MlflowException:
            return False

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)

    def finish(self, status: str) -> None:
        self.mlflow.end_run("FINISHED" if status == "done" else "KILLED" if status == "cancelled" else "FAILED")


class WandB:
    def __init__(self, key: str, params: dict[str, Any], folder: Path, start: int = 0) -> None:
        import os

        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "efficientft", name=key, config=params,
                              dir=str(folder), reinit="create_new")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "done" else 1)


_CLASSES = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """Every tracker of a run behind one ``log(step, metrics)``; empty when none is named."""

    def __init__(self, names: list[str], key: str, params: dict[str, Any], folder: Path, start: int = 0,
                 run_ids: dict[str, str] | None = None) -> None:
        """``start``: the step a resumed run continues from (its trackers log from ``start + 1``); ``run_ids``:
        the trackers' own run ids its checkpoint kept (:meth:`run_ids`), so that it continues those runs."""
        check_installed(names)
        self.active: list[Any] = []
        self.names: list[str] = []
        for name in names:
            kept = (run_ids or {}).get(name)
            try:
                extra = {"run_id": kept} if kept else {}
                self.active.append(_CLASSES[name](key, flatten(params), Path(folder), start, **extra))
                self.names.append(name)
            except Exception as e:  # noqa: BLE001 - not logged in, a server that does not answer, ...
                self.finish("failed")
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ConfigError(f"tracker {name!r} could not start: {first}") from None

    def run_ids(self) -> dict[str, str]:
        """The run ids of the trackers that can continue a run (MLflow), for the checkpoint."""
        return {name: t.run_id for name, t in zip(self.names, self.active, strict=True) if hasattr(t, "run_id")}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            for t in self.active:
                t.log(step, values)

    def finish(self, status: str) -> None:
        for t in self.active:
            t.finish(status)
