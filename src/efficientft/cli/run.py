"""``eft run``: one model, one task, one method — trained (or taken from the store) and printed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import api
from ..config import DATA, ENV, MEMORY, OPTIM, TRAIN, RunConfig, load_yaml, refuse_file_only_flags
from ..errors import ConfigError
from .flags import add_setting_flags, parse_pairs, setting_values, store_arg

# flags that become method arguments
_METHOD_ARGS = ("rank", "alpha", "dropout")


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="fine-tune one model on one task with one method, and store the result")
    groups = {name: r.add_argument_group(name) for name in (TRAIN, OPTIM, DATA, MEMORY, ENV)}
    add_setting_flags(r, groups)  # one flag per setting of the schema (config.RunConfig)
    # Hand-written: flags whose shape differs from their field (method_args, role_lr, custom, progress) or that are
    # no setting at all (what the command does).
    g = groups[TRAIN]
    g.add_argument("--role-lr", help="per-role learning-rate ratios, e.g. v=4,o=2 (generalises --lr-ratio)")
    g.add_argument("--rank", type=int, help="adapter rank r (LoRA family)")
    g.add_argument("--alpha", type=float, help="LoRA alpha (default: equal to the rank)")
    g.add_argument("--dropout", type=float, help="adapter dropout")
    g.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method argument (repeatable)")
    g = groups[DATA]
    g.add_argument("--train-file", help="your own training data (CSV, TSV or JSONL)")
    g.add_argument("--eval-file", help="your own evaluation data")
    g.add_argument("--text-columns", help="text column(s) of your data, comma-separated (one or two)")
    g.add_argument("--label-column", help="label column of your data (default: label)")
    g.add_argument("--regression", action="store_true", help="your labels are numbers to regress")
    g.add_argument("--kind", choices=("classification", "generation"),
                   help="generation: your files are instruction rows (instruction, input, output, answer)")
    g.add_argument("--answer", choices=("number", "choice", "text"),
                   help="generation: how answers are extracted and compared (default: text)")
    g = groups[ENV]
    g.add_argument("--config", help="YAML file of run settings; flags override it")
    g.add_argument("--push-to-hub", metavar="REPO",
                   help="upload the exported folder to this Hugging Face Hub repo (owner/name; needs --export-dir)")
    g.add_argument("--force", action="store_true", help="run again even if the store has this run done")
    g.add_argument("--json", action="store_true", help="print the stored run record as one JSON object")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    store_arg(r)


def config_from_args(a: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = {}
    if a.config:
        loaded = load_yaml(a.config)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{a.config}: a run config is a mapping of field: value.")
        refuse_file_only_flags(loaded, a.config)
        base.update(loaded)
    base.update(setting_values(a))  # every flag of the schema that was given
    margs = dict(base.get("method_args") or {})
    margs.update({k: getattr(a, k) for k in _METHOD_ARGS if getattr(a, k) is not None})
    margs.update(parse_pairs(a.method_arg, "--method-arg"))
    if margs:
        base["method_args"] = margs
    if a.role_lr:
        base["role_lr"] = {k: _float(v, f"--role-lr {k}") for k, v in parse_pairs([a.role_lr], "--role-lr").items()}
    if a.train_file or a.eval_file:
        custom = dict(base.get("custom") or {})
        custom.update({k: v for k, v in (("train", a.train_file), ("dev", a.eval_file),
                                         ("text_columns", a.text_columns), ("label_column", a.label_column))
                       if v is not None})
        if a.regression:
            custom["type"] = "regression"
        if a.kind == "generation":
            custom["type"] = "generation"
        if a.answer is not None:
            custom["answer"] = a.answer
        base["custom"] = custom
        base.setdefault("task", "custom")
    elif a.kind or a.answer:
        raise ConfigError("--kind and --answer describe your own data; give them with --train-file and --eval-file "
                          "(a registered task has its own kind: see `eft tasks`).")
    if a.no_progress or not sys.stderr.isatty():
        base["progress"] = False
    return RunConfig.from_dict(base, where=a.config or "")


def _float(v: str, what: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {v!r}.") from None


def cmd_run(a: argparse.Namespace) -> int:
    cfg = api.check_run(config_from_args(a), a.push_to_hub, where=a.config or "")
    store = api.open_store(a.store)
    existing = api.stored_done(store, cfg, a.force)
    if existing is not None:
        print(f"run {api.run_key(cfg)} is already done in {store.path}; showing it (use --force to run it again).",
              file=sys.stderr)
        record = existing
    else:
        record = api.run(cfg, store, force=a.force, progress=None)
    if a.json:
        print(json.dumps(record, sort_keys=True, default=str))
    else:
        print(api.runs_table([record]))
        scores = record.get("scores") or {}
        if scores:
            print("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(scores.items()) if isinstance(v, float)))
        print(f"stored in {store.path} as {record['run_key']}")
    if record["status"] != "done":
        return 1
    if a.push_to_hub is not None:
        url = api.push_to_hub(a.push_to_hub, Path(cfg.export_dir))
        print(f"uploaded {cfg.export_dir} to {url}", file=sys.stderr)
    return 0
