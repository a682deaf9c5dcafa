"""The rerun policy is one function (:func:`efficientft.store.skip_reason`): which stored statuses a run asked for
again skips, reruns or takes over; the store's claim applies it and the sweep's plan forecasts with it."""

from __future__ import annotations

import socket

import pytest

from efficientft.store import Store, skip_reason
from efficientft.sweep.runner import SweepOptions, state_of

DEAD = f"{socket.gethostname()}:999999999"  # no such pid on this host
ELSEWHERE = "another-host:1"  # liveness unknown: never taken over without reclaim


@pytest.mark.parametrize(("status", "owner", "flags", "expected"), [
    (None, None, {}, None),
    ("new", None, {}, None),
    ("done", None, {}, "done"),
    ("done", None, {"retry_failed": True, "reclaim": True}, "done"),
    ("done", None, {"redo_done": True}, None),
    ("done", None, {"held": True}, None),
    ("running", DEAD, {}, None),  # a killed sweep's run: taken over
    ("running", ELSEWHERE, {}, "running"),
    ("running", ELSEWHERE, {"reclaim": True}, None),
    ("running", ELSEWHERE, {"held": True}, None),
    ("cancelled", None, {}, None),
    ("cancelled", ELSEWHERE, {"claimed": True}, "running"),  # another attempt holds the key
    ("failed", None, {}, "failed"),
    ("diverged", None, {}, "diverged"),
    ("failed", None, {"retry_failed": True}, None),
    ("diverged", None, {"retry_failed": True}, None),
    ("failed", None, {"held": True}, "failed"),
    ("failed", ELSEWHERE, {"claimed": True, "retry_failed": True}, "running"),
    ("failed", DEAD, {"claimed": True, "retry_failed": True}, None),
])
def test_the_rerun_policy_table(status, owner, flags, expected):
    assert skip_reason(status, owner=owner, **flags) == expected


def _stored(store: Store, key: str, status: str | None, owner: str | None) -> dict | None:
    if status is None:
        return None
    other = Store(store.path)
    assert other.claim(key, {"task": "rte", "method": "lora"})[0]
    if status == "running":
        with store.transaction() as db:
            db.execute("UPDATE runs SET worker=? WHERE run_key=?", (owner, key))
            db.execute("UPDATE claims SET worker=?, token='theirs' WHERE run_key=?", (owner, key))
    else:
        other.finish(key, status)
    return store.get(key)


@pytest.mark.parametrize("retry_failed", [False, True])
@pytest.mark.parametrize("reclaim", [False, True])
@pytest.mark.parametrize(("status", "owner"), [(None, None), ("done", None), ("failed", None), ("diverged", None),
                                               ("cancelled", None), ("running", DEAD), ("running", ELSEWHERE)])
def test_the_sweep_plans_what_the_store_claims(tmp_path, status, owner, retry_failed, reclaim):
    store = Store(tmp_path / "s.sqlite")
    record = _stored(store, "k", status, owner)
    planned = state_of(record, SweepOptions(retry_failed=retry_failed, reclaim=reclaim))
    claimed, why = store.claim("k", {"task": "rte", "method": "lora"}, retry_failed=retry_failed, reclaim=reclaim)
    assert claimed == (planned in ("new", "rerun"))
    if not claimed:
        assert {"busy": "running"}.get(planned, planned) == why
