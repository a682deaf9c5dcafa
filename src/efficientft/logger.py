"""The one fan-out of a run's progress while it trains: the curve rows (kept for the checkpoint, flushed to the
store), the experiment trackers and the progress bar. The loop calls :class:`Logger`; it knows none of them."""

from __future__ import annotations

from typing import Any

from .trackers import Trackers


class Logger:
    """Each optimizer step's figures and each evaluation's scores, to every sink at once.

    ``rows`` is the run's whole curve so far (the :class:`~efficientft.checkpoint.TrainState`'s, which a checkpoint
    keeps), appended to in place; ``flushed`` of them are in the store already. ``replay``: a resumed run writes its
    earlier rows to the store again (the store forgot the curve when this attempt started).
    """

    def __init__(self, rows: list[list], store: Any, key: str, trackers: Trackers, bar: Any = None,
                 replay: bool = False) -> None:
        self.rows, self.store, self.key, self.trackers, self.bar = rows, store, key, trackers, bar
        if replay and store is not None:
            store.add_curves(key, [tuple(r) for r in rows])
        self.flushed = len(rows)
        self.ema: float | None = None  # the progress bar's smoothed loss

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None) -> None:
        """An applied optimizer step: its loss, learning rate and (with clipping) gradient norm."""
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        logged = {"loss": loss, "lr": lr}
        if grad_norm is not None:
            logged["grad_norm"] = grad_norm
        self.rows += [["train", step, k, v] for k, v in logged.items()]
        self.trackers.log(step, {f"train/{k}": v for k, v in logged.items()})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.ema:.4f}", refresh=False)
            self.bar.update(1)

    def scores(self, step: int, scores: dict[str, float]) -> None:
        """An evaluation's scores (``<split>/<metric>``) at ``step``."""
        self.rows += [["eval", step, k, v] for k, v in scores.items()]
        self.trackers.log(step, scores)

    def flush(self) -> None:
        """Write the rows not yet in the store, so a long run's curve is visible (and kept) while it trains."""
        if self.store is not None:
            self.store.add_curves(self.key, [tuple(r) for r in self.rows[self.flushed:]])
            self.flushed = len(self.rows)

    def pending(self) -> list[list]:
        """The rows not yet in the store."""
        return self.rows[self.flushed:]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
