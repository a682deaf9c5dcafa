"""``eft export``: a store's runs as one flat table (CSV, Parquet or JSON lines), curves as a second one.

Researchers analyse results in pandas, R or a spreadsheet, not through ``eft runs``. Each run is one row whose
columns are the record's own fields (``run_key``, ``status``, ...) and its nested parts flattened with a dotted
prefix: ``config.lr``, ``scores.dev/accuracy``, ``cost.peak_rss_mb``, ``provenance.packages.torch``, ``tags.label``.
Values that stay lists or mappings (``config.method_args`` when empty, curves of a run) and columns whose values
mix types are written as JSON text, so every format gets one type per column. CSV and Parquet are written by
pandas and pyarrow; JSON lines by :mod:`json`, whose floats round-trip exactly (pandas' ``to_json`` keeps at most 15
significant digits, so ``0.1 + 0.2`` came back as ``0.3``).

The column ``record.json`` holds each run's record whole, as JSON (flattening cannot be undone in general: a key
may hold a dot, a text column may hold JSON), so an export is also a store in a file: :func:`load_export` rebuilds
the store from it, and ``eft report --store runs.parquet`` (and ``--leaderboard``) reads an export as it reads a
store — published results are rebuilt by their commands without re-running anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .store import Store, open_store

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet", "jsonl")
_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
NESTED = ("config", "scores", "cost", "provenance", "details", "tags")
RECORD = "record.json"  # the whole record, for load_export


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (dict, list, tuple)):
        out[prefix] = json.dumps(value, sort_keys=True, default=str)
    else:
        out[prefix] = value


def flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """One stored run record as a flat mapping (nested parts under dotted column names)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k in NESTED:
            _flatten(k, v or {}, out)
        else:
            out[k] = v
    return out


def _one_type_per_column(df: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing kinds (a number in one run, text in another) become text, so Parquet can type them."""
    for col in df.columns:
        kinds = {"num" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
                 for v in df[col] if v is not None and v == v}
        if len(kinds) > 1:
            df[col] = [None if v is None or v != v else v if isinstance(v, str) else json.dumps(v)
                       for v in df[col]]
    return df


def runs_frame(store: Store | str | Path, status: str | Iterable[str] | None = None) -> pd.DataFrame:
    """The store's runs as a pandas DataFrame, one row per run, columns flattened (see the module docstring)."""
    import pandas as pd

    store = open_store(store, create=False)
    rows = [{**flat_record(r), RECORD: json.dumps(r, sort_keys=True, default=str)} for r in store.runs(status)]
    df = pd.DataFrame.from_records(rows)
    if not rows:
        return df
    first = ["run_key", "status", "task", "method", "targets", "lr_ratio", "lr", "seed", "model", "main_metric",
             "main_score"]
    cols = [c for c in first if c in df.columns] + sorted(c for c in df.columns if c not in first)
    return _one_type_per_column(df[cols].copy())


def curves_frame(store: Store | str | Path, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-step curves, long format: run_key, kind (train / eval), step, name (loss, lr, dev/accuracy ...), value."""
    import pandas as pd

    store = open_store(store, create=False)
    keys = [r["run_key"] for r in store.runs()] if keys is None else list(keys)
    rows = [(k, *c) for k in keys for c in store.curves(k)]
    return pd.DataFrame.from_records(rows, columns=["run_key", "kind", "step", "name", "value"])


def format_of(out: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = _SUFFIX.get(out.suffix.lower())
        if fmt is None:
            raise ConfigError(f"cannot tell the export format from {str(out)!r}: pass --format "
                              f"{'|'.join(FORMATS)} or an --out ending in .csv, .parquet or .jsonl.")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; accepted: {', '.join(FORMATS)}.")
    return fmt


def side_path(out: Path, table: str) -> Path:
    """Where a second table goes: ``runs.csv`` -> ``runs.curves.csv``."""
    return out.with_name(f"{out.stem}.{table}{out.suffix}")


def write_frame(df: pd.DataFrame, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    elif fmt == "parquet":
        df.to_parquet(tmp, index=False, engine="pyarrow")
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in df.to_dict(orient="records"):
                f.write(json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False, default=str))
                f.write("\n")
    tmp.replace(path)


def _json_value(v: Any) -> Any:
    """A cell as plain JSON: numpy scalars as Python numbers (floats keep every bit: ``repr``), missing and
    non-finite values as null (as pandas writes them)."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_frame(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """Read back a table written by :func:`export_store` (the tests' round trip; also handy in a notebook)."""
    import pandas as pd

    fmt = format_of(Path(path), fmt)
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "parquet":
        return pd.read_parquet(path)
    with open(path, encoding="utf-8") as f:  # json, not pandas' reader: exact floats (subnormals included)
        return pd.DataFrame.from_records([json.loads(line) for line in f if line.strip()])


def export_store(store: Store | str | Path, out: str | Path, fmt: str | None = None, status: str | None = None) -> dict[Path, int]:
    """Write the runs to ``out`` and their curves beside it (``NAME.curves.SUFFIX``); returns {file: rows}.

    ``fmt`` is ``csv``, ``parquet`` or ``jsonl`` (default: from ``out``'s suffix)."""
    store = open_store(store, create=False)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; pass a file name such as {str(out / 'runs.csv')!r}.")
    fmt = format_of(out, fmt)
    runs = runs_frame(store, status)
    if runs.empty:
        raise ConfigError(f"no runs{f' with status {status!r}' if status else ''} in {store.path}: nothing to export.")
    curves = curves_frame(store, list(runs["run_key"]))
    written = {}
    for path, df in ((out, runs), (side_path(out, "curves"), curves)):
        write_frame(df, path, fmt)
        written[path] = len(df)
    return written


def is_export(path: str | Path) -> bool:
    """A path named like an export (``.parquet``, ``.csv``, ``.jsonl``...), not a store."""
    return Path(path).suffix.lower() in _SUFFIX


def load_export(path: str | Path, fmt: str | None = None) -> Store:
    """The store an export was written from, rebuilt in a temporary file (removed when this process exits): every
    record as it was stored (from ``record.json``) and its curves (from ``NAME.curves.SUFFIX`` beside it)."""
    import atexit
    import shutil
    import tempfile

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no export at {str(path)!r} (an export is the --out file of `eft export`).")
    fmt = format_of(path, fmt)
    runs = read_frame(path, fmt)
    if RECORD not in runs.columns:
        raise ConfigError(f"{str(path)!r} has no {RECORD!r} column (written by an older `eft export`): export the "
                          f"store again to rebuild reports from it.")
    curves_path = side_path(path, "curves")
    curves: dict[str, list[tuple[str, int, str, float]]] = {}
    if curves_path.is_file():
        for key, kind, step, name, value in read_frame(curves_path, fmt)[["run_key", "kind", "step", "name",
                                                                           "value"]].itertuples(index=False):
            curves.setdefault(str(key), []).append((str(kind), int(step), str(name), float(value)))
    where = Path(tempfile.mkdtemp(prefix="eft-export-"))
    atexit.register(shutil.rmtree, where, True)
    store = Store(where / f"{path.stem}.sqlite")
    store.shown_as = f"{path} (an export, rebuilt)"
    for text in runs[RECORD]:
        rec = json.loads(text)
        key = rec["run_key"]
        store.claim(key, rec.get("config") or {}, rec.get("tags") or {})
        store.import_run(rec, curves.get(key, ()))
    return store
