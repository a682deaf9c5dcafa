"""Step checkpoints and exact resume of one run: the training state as one object, saved without pickles.

A run that is killed (SIGKILL, a lost machine) or stopped (SIGTERM, Ctrl-C) starts again from its last checkpoint
and ends with the scores and curves of an uninterrupted run, bit for bit on CPU. For that the checkpoint holds
everything the next step depends on, as torchtune's recipes keep a training-progress record beside each
checkpoint: the trainable weights (and the model's buffers), the optimizer and scheduler, the GradScaler, every
RNG (torch CPU and CUDA, Python, NumPy: dropout draws from them), the data cursor (how many batches were drawn;
the order of every epoch is a function of the seed), the curves and evaluations so far, and each method's own
state (:meth:`Method.state_dict`, e.g. SIFT's chosen entries, AdaLoRA's rank allocator, GaLore's projectors).

Format: one folder per checkpoint, ``tensors.safetensors`` (every tensor) and ``state.json`` (the rest). Nothing is
unpickled when a checkpoint is read. A checkpoint is written into a temporary folder and renamed into place, so a
kill while saving leaves the previous checkpoint intact; only the newest ``keep`` are kept.

Checkpoints live beside the store, in a folder of that store's own (``runs.sqlite.checkpoints/<run key>/``: two
stores in one folder never share or delete each other's), and are removed when the run is ``done`` unless
``keep_checkpoints``. They are not part of the run's identity: a resumed run is the uninterrupted run. A checkpoint
records the content of what the run read (:mod:`efficientft.content`: the model folder's config and weights, each
split's data files, the forgetting file); a run resumes from it only when it reads the same, else it says which
input changed and trains from scratch.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
PREFIX = "step-"

# checkpoint_every=None: every max(MIN_EVERY, steps // 10) steps, for runs of at least LONG_RUN steps
LONG_RUN = 500
MIN_EVERY = 100


def default_every(total_steps: int) -> int:
    """The checkpoint interval when none is given: off below ``LONG_RUN`` steps (a short run is cheap to redo),
    else every ``max(MIN_EVERY, total_steps // 10)`` steps."""
    return 0 if total_steps < LONG_RUN else max(MIN_EVERY, total_steps // 10)


def folder_for(store_path: str | os.PathLike, key: str) -> Path:
    """Where the checkpoints of run ``key`` live: beside the store, in the store's own ``<store>.checkpoints/<key>/``
    (``runs.sqlite`` → ``runs.sqlite.checkpoints/``)."""
    store = Path(store_path)
    return store.parent / f"{store.name}.checkpoints" / key


def adopt_legacy(store_path: str | os.PathLike, key: str) -> None:
    """Move the checkpoints of ``key`` from where earlier versions saved them (``checkpoints/<key>/`` beside the
    store, shared by every store of that folder) into this store's folder, when this store has none yet."""
    old, new = Path(store_path).parent / "checkpoints" / key, folder_for(store_path, key)
    if latest(old) is None or latest(new) is not None:
        return
    shutil.rmtree(new, ignore_errors=True)
    new.parent.mkdir(parents=True, exist_ok=True)
    os.replace(old, new)
    remove(old)  # the shared ``checkpoints`` folder, when it is left empty


class Incompatible(RuntimeError):
    """A checkpoint of this run key that does not fit the prepared run (the code changed in between)."""


class Tensors:
    """Tensors under flat names (for safetensors) with their JSON-side references ``{"$t": name}``."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.tensors: dict[str, torch.Tensor] = dict(tensors or {})

    def pack(self, value: Any, name: str) -> Any:
        """``value`` with every tensor replaced by a reference; dicts, lists and JSON scalars are kept."""
        if isinstance(value, torch.Tensor):
            if name in self.tensors:
                raise ValueError(f"{name}: two tensors of the checkpoint would have the same name")
            t = value.detach()  # a copy of its own: safetensors refuses tensors that share memory (tied weights)
            self.tensors[name] = (t.cpu() if t.device.type != "cpu" else t.clone()).contiguous()
            return {"$t": name}
        if isinstance(value, dict):
            if not all(isinstance(k, (str, int)) for k in value):
                raise TypeError(f"{name}: a checkpoint holds string or integer keys only")
            items = [[k, self.pack(v, f"{name}/{k}")] for k, v in value.items()]
            return {"$d": items} if any(isinstance(k, int) for k in value) else dict(items)
        if isinstance(value, (list, tuple)):
            return [self.pack(v, f"{name}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{name}: cannot checkpoint a {type(value).__name__} without pickling it")

    def unpack(self, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$t"}:
                return self.tensors[value["$t"]]
            if set(value) == {"$d"}:
                return {k: self.unpack(v) for k, v in value["$d"]}
            return {k: self.unpack(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.unpack(v) for v in value]
        return value


def rng_state() -> dict[str, Any]:
    """Every random generator the loop draws from, as tensors and JSON values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


@dataclass
class TrainState:
    """The training loop's progress, everything but the model and optimizer objects (which :meth:`capture`
    reads and :meth:`restore` writes).

    ``drawn`` counts the training batches taken from the data (fp16 attempts the GradScaler skipped included):
    the data cursor. ``curve`` holds every curve row so far (also those already flushed to the store, which
    forgets a run's curves when it starts again).
    """

    step: int = 0
    drawn: int = 0
    curve: list[list] = field(default_factory=list)
    evals: list[list] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)  # the step timer's totals and times, train_s
    eval_s: float = 0.0
    # filled by capture / read: everything with tensors
    blobs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the folder it was read from
    trackers: dict[str, str] = field(default_factory=dict)  # tracker name -> its run id, to continue that run
    inputs: dict[str, Any] | None = None  # the content of what the run read (None: saved before it was recorded)

    # ------------------------------------------------------------------ does it belong to this run?
    def changed_inputs(self, inputs: dict[str, Any]) -> list[str]:
        """The inputs (``model``, ``train`` data, ...) whose content differs from what this checkpoint trained on."""
        if self.inputs is None:
            return []
        return [name for name in sorted(set(self.inputs) | set(inputs)) if self.inputs.get(name) != inputs.get(name)]

    def misfits(self, model: Any) -> list[str]:
        """The trainable weights this checkpoint lacks, has in excess, or has in another shape than ``model``."""
        params = {n: q for n, q in model.named_parameters() if q.requires_grad}
        saved = self.blobs["model"]
        return sorted(set(saved) ^ set(params)) or [n for n, t in saved.items() if t.shape != params[n].shape]

    # ------------------------------------------------------------------ model, optimizer, ... <-> blobs
    def capture(self, p: Any, scaler: Any = None) -> None:
        """Read the model's trainable weights and buffers, the optimizer, scheduler, scaler, RNG, method state."""
        model = p.model
        self.blobs = {
            "model": {n: q for n, q in model.named_parameters() if q.requires_grad},
            "buffers": dict(model.named_buffers()),
            "optimizer": p.method.optimizer_state_dict(p.optimizer),
            "scheduler": p.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "method": p.method.state_dict(model),
            "rng": rng_state(),
        }

    def restore(self, p: Any, scaler: Any = None) -> None:
        """Write the captured state back into a freshly prepared run (method state came first, in ``prepare``);
        the RNG last, so that nothing after it draws before the next step."""
        b = self.blobs
        params = {n: q for n, q in p.model.named_parameters() if q.requires_grad}
        bad = self.misfits(p.model)
        if bad:
            raise Incompatible(f"checkpoint {self.path} does not fit this run's model (its trainable weights differ: "
                               f"{', '.join(bad[:3])}); delete {self.path.parent if self.path else 'it'} to train "
                               f"from scratch.")
        buffers = dict(p.model.named_buffers())
        with torch.no_grad():
            for n, t in b["model"].items():
                params[n].copy_(t)
            for n, t in b["buffers"].items():
                if n in buffers and buffers[n].shape == t.shape:
                    buffers[n].copy_(t)
        p.method.load_optimizer_state_dict(p.optimizer, b["optimizer"])
        p.scheduler.load_state_dict(b["scheduler"])
        if scaler is not None and b["scaler"] is not None:
            scaler.load_state_dict(b["scaler"])
        set_rng_state(b["rng"])

    # ------------------------------------------------------------------ files
    def save(self, folder: Path, keep: int = 1) -> Path:
        """Write this state as ``folder/step-<step>`` atomically (temporary folder, then a rename); keep the
        newest ``keep`` checkpoints."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        packer = Tensors()
        meta = {
            "format": FORMAT, "step": self.step, "drawn": self.drawn, "curve": self.curve, "evals": self.evals,
            "skipped": self.skipped, "counters": self.counters, "eval_s": self.eval_s,
            "trackers": self.trackers, "inputs": self.inputs, "blobs": packer.pack(self.blobs, "b"),
        }
        tmp = folder / f".tmp-{PREFIX}{self.step}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(packer.tensors, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(meta))
        final = folder / f"{PREFIX}{self.step:09d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep or None]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def read(cls, path: Path) -> TrainState:
        from safetensors.torch import load_file

        meta = json.loads((path / STATE).read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"its {STATE} holds a JSON {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}, this version reads {FORMAT}")
        _check_state(meta)
        blobs = Tensors(load_file(str(path / TENSORS))).unpack(meta["blobs"])
        return cls(meta["step"], meta["drawn"], meta["curve"], meta["evals"], meta["skipped"], meta["counters"],
                   meta["eval_s"], blobs, path, meta.get("trackers", {}), meta.get("inputs"))


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


# what each field of state.json holds; a file that parses but holds something else (a damaged or edited file) is
# unreadable as a whole, as one that does not parse: the run says so in one line and starts over
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "step": lambda v: _is(v, int) and v >= 0,
    "drawn": lambda v: _is(v, int) and v >= 0,
    "curve": lambda v: _is(v, list) and all(_is(r, list) and len(r) == 4 and _is(r[1], int) for r in v),
    "evals": lambda v: _is(v, list) and all(_is(e, list) and len(e) == 2 and _is(e[1], dict) for e in v),
    "skipped": lambda v: _is(v, list) and all(_is(s, int) for s in v),
    "counters": lambda v: _is(v, dict),
    "eval_s": lambda v: _is(v, (int, float)) and v >= 0,
    "trackers": lambda v: _is(v, dict) and all(_is(i, str) for i in v.values()),
    "inputs": lambda v: v is None or _is(v, dict),
    "blobs": lambda v: _is(v, dict),
}


def _check_state(meta: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of a checkpoint's state that is missing or not what it holds."""
    for name, fits in _FIELDS.items():
        if name not in meta and name in ("trackers", "inputs"):  # absent from older checkpoints
            continue
        if name not in meta:
            raise ValueError(f"its {STATE} has no {name!r}")
        if not fits(meta[name]):
            raise ValueError(f"its {STATE} holds {json.dumps(meta[name])[:60]} as {name!r}")


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (temporary folders of an interrupted save are ignored)."""
    if not folder.is_dir():
        return None
    done = [d for d in sorted(folder.glob(f"{PREFIX}*")) if (d / STATE).is_file() and (d / TENSORS).is_file()]
    return done[-1] if done else None


def remove(folder: Path) -> None:
    """Delete a run's checkpoints (and the store's checkpoints folder when it is left empty)."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass


@dataclass
class Checkpoints:
    """Where and how often one run saves its checkpoints."""

    folder: Path
    every: int  # steps between checkpoints (0: only when interrupted)
    keep: int = 1  # how many of the newest to keep

    def save(self, state: TrainState) -> Path:
        return state.save(self.folder, self.keep)

    def latest(self) -> TrainState | None:
        """The newest checkpoint; one that cannot be read (another format, a damaged file) is set aside with a
        note on stderr, and the run starts from scratch."""
        path = latest(self.folder)
        if path is None:
            return None
        try:
            return TrainState.read(path)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: no checkpoint
            import sys

            aside = path.with_name(f".unreadable-{path.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            print(f"note: checkpoint {path} cannot be read ({type(e).__name__}: {e}); set aside as {aside.name}, "
                  f"training from scratch.", file=sys.stderr)
            return None


@contextmanager
def deferred_interrupts(enabled: bool = True, defer: bool = True) -> Iterator[Callable[[], bool]]:
    """While training, SIGINT and SIGTERM set a flag that the loop reads at the end of each step (it then saves a
    checkpoint of a consistent state, not of a half-done step, and stops); a second signal interrupts at once.
    ``defer=False`` (the final evaluation: the trained state is consistent, no step to finish): either signal
    raises KeyboardInterrupt at once, so SIGTERM stops it as Ctrl-C does and the caller saves the trained state.
    Yields the flag's reader. Only in the main thread (elsewhere signals cannot be caught: nothing changes)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hit: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if hit or not defer:
            raise KeyboardInterrupt
        hit.append(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)
           if signal.getsignal(sig) is not signal.SIG_IGN}  # an ignored signal (a background job's SIGINT) stays so
    try:
        yield lambda: bool(hit)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
