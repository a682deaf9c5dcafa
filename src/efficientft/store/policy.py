"""What a stored status means for a run asked for again: the rerun policy, decided here only.

:meth:`Store.claim <efficientft.store.Store.claim>` applies it in its write transaction; a sweep's plan
(:func:`efficientft.sweep.runner.state_of`) forecasts with it, so what the plan says is what the claim does.
"""

from __future__ import annotations

from .liveness import worker_alive

STATUSES = ("running", "done", "failed", "diverged", "cancelled")


def skip_reason(status: str | None, *, owner: str | None = None, claimed: bool = False, held: bool = False,
                redo_done: bool = False, retry_failed: bool = False, reclaim: bool = False) -> str | None:
    """Why a run whose stored status is ``status`` (None or ``"new"``: no record) is not trained again, or None
    when it is (a new key, a rerun, a take-over).

    - ``done``: never run again (skip-if-done), unless ``redo_done`` (``eft run --force``);
    - ``running`` (the row is running, or another attempt holds a claim on the key: ``claimed``): skipped while
      its ``owner`` (``host:pid``) may be alive; a claim of a dead process on this host (a killed sweep) is taken
      over, and so is any claim with ``reclaim`` (another host's dead sweep: we cannot see its processes);
    - ``failed`` / ``diverged``: kept as results unless ``retry_failed`` (the same config fails the same way);
    - ``cancelled`` (Ctrl-C / SIGTERM): always run again.

    ``held``: the asker holds the key's claim itself (its own attempt is under way), so neither ``done`` nor
    ``running`` stops it.
    """
    status = status or "new"
    if status == "done" and not redo_done and not held:
        return "done"
    if (claimed or status == "running") and not held and not reclaim and worker_alive(owner) is not False:
        return "running"
    if status in ("failed", "diverged") and not retry_failed:
        return status
    return None
