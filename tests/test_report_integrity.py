"""Integrity of reports built from hand-made store records: hostile strings stay text in every format, stored
values that are not numbers never crash or average, and cells never mix runs that differ (data, settings,
replicates)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from matplotlib import rc_context

from efficientft.report import html as html_report
from efficientft.report import tables
from efficientft.report.build import build, markdown_document
from efficientft.report.plots import score_vs_cost, score_vs_lambda
from efficientft.report.text import run_row
from efficientft.store import Store

META = '"><meta http-equiv="refresh" content="0;url=http://x">'
SCRIPT = "</script><script>alert(1)</script>"
COMMENT = "<!-- x --><b>y</b>"
HOSTILE = (META, SCRIPT, COMMENT)


def put(store: Store, *, task: str = "sst2", method: str = "lora", targets: str = "qv", seed: object = 0,
        score: object = 0.8, status: str = "done", key: str | None = None, main_score: object = None,
        scores: dict | None = None, cost: dict | None = None, tags: dict | None = None, error: str | None = None,
        finished_at: str = "2026-01-01T00:00:00", **cfg_extra: object) -> str:
    """Write one hand-made run record (as a Ray worker's import would) and return its key."""
    cfg = {"task": task, "model": "m", "method": method, "targets": targets, "lr_ratio": 1.0, "lr": 1e-3,
           "seed": seed, "data_seed": 0, "steps": 10, "method_args": {}, **cfg_extra}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    key = key or hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    main = score if main_score is None else main_score
    store.claim(key, cfg, redo_done=True)  # the store writes a record only under its claim, as a Ray driver does
    store.import_run({"run_key": key, "status": status, "task": task, "method": method, "targets": targets,
                      "main_metric": "dev/accuracy", "main_score": main if isinstance(main, float) else None,
                      "config": cfg, "scores": {"dev/accuracy": score} if scores is None else scores,
                      "cost": {"trainable_params": 100} if cost is None else cost, "tags": tags or {},
                      "error": error, "provenance": {}, "details": {}, "finished_at": finished_at})
    if not isinstance(main, (int, float)) or isinstance(main, bool):  # what an edited or foreign store may hold
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE runs SET main_score = ? WHERE run_key = ?", (main, key))
    return key


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.comments: list[str] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text += data

    def handle_comment(self, data):
        self.comments.append(data)


def _hostile_store(tmp_path) -> Store:
    store = Store(tmp_path / "h.sqlite")
    for i, s in enumerate(HOSTILE):
        for seed in (0, 1, 2):
            put(store, task=f"t{i}{s}", method=f"lora{s}", targets=s, seed=seed, score=0.5 + seed / 10,
                key=f"k{i}{seed}{s}", main_score=s, tags={"suite": s, s: s}, method_args={"rank": 4, s: s},
                scores={"dev/accuracy": 0.5 + seed / 10, f"dev/{s}": s},
                cost={"trainable_params": s, "peak_memory_mb": s, "wall_s": s, "median_step_s": s})
        put(store, task=f"t{i}{s}", method=f"lora{s}", targets=s, seed=9, status="failed", key=f"f{i}{s}",
            error=f"RuntimeError: {s}", score=s)
    return store


def test_html_from_a_hostile_store_has_only_its_own_elements(tmp_path):
    store = _hostile_store(tmp_path)
    rep = build(store)
    page = html_report.page(rep.table, rep.collection, rep.comparisons, title=META)
    p = _Tags()
    p.feed(page)
    p.close()
    names = [t for t, _ in p.tags]
    assert names.count("script") == 1 and names.count("meta") == 3 and "b" not in names and "link" not in names
    metas = [a for t, a in p.tags if t == "meta"]
    assert metas[0] == {"charset": "utf-8"} and metas[2] == {"name": "viewport",
                                                             "content": "width=device-width, initial-scale=1"}
    assert metas[1]["http-equiv"] == "Content-Security-Policy" and set(metas[1]) == {"http-equiv", "content"}
    assert metas[1]["content"].startswith("default-src 'none'; img-src data:;")
    assert p.comments == [] and "alert" not in p.script_text
    allowed = {"lang", "charset", "http-equiv", "content", "name", "class", "id", "href", "title", "data-sort",
               "src", "alt"}
    for t, a in p.tags:
        assert set(a) <= allowed, (t, a)
        if "data-sort" in a and a["data-sort"] != "":
            float(a["data-sort"])  # a sort key is a number or empty, never stored text
        assert "href" not in a or a["href"].startswith("#"), a
    ids = [a["id"] for _, a in p.tags if "id" in a]
    assert len(ids) == len(set(ids))
    hrefs = {unquote(a["href"][1:]) for _, a in p.tags if "href" in a}
    assert hrefs <= set(ids)  # every link lands (keys with markup are quoted in the link and found by the page)
    # stored text that is not a number shows as n/a (escaped raw text is only in the provenance <pre>)
    runs = page.split('id="runs"')[1].split("</table>")[0]
    assert runs.count(">n/a</td>") == 9 * 4 + 3  # 9 done runs: score, params, memory, wall; 3 failed: score


def test_csv_markdown_and_latex_headers_are_sanitised(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    for seed in (0, 1, 2):
        for rank in (4, 8):
            put(store, task="=cmd|x", seed=seed, method_args={"rank": rank, "=HYPERLINK(1)": rank,
                                                              "a_b|c": rank, "\tx": rank, "+y": rank})
    rep = build(store)
    text = tables.csv_table(rep.table, rep.collection)
    rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(cell)  # only numbers may start with a sign
    assert "'=HYPERLINK(1)" in rows[0] and "'=cmd|x_accuracy_x100_mean" in rows[0] and "'\tx" in rows[0]
    md = rep.markdown_table().splitlines()[0]
    assert r"a\_b\|c" in md and r"=cmd\|x" in md
    assert len(re.split(r"(?<!\\)\|", md.strip("|"))) == len(rep.table.label_headers) + len(rep.table.tasks) + 2
    tex = tables.latex(rep.table)
    assert r"a\_b\textbar{}c" in tex and r"=cmd\textbar{}x" in tex


def test_dollar_signs_in_names_render_literally(tmp_path):
    store = Store(tmp_path / "p.sqlite")
    for seed in (0, 1, 2):
        put(store, task=r"$\frac{$", method="a$b", targets="$x_1$", seed=seed, score=0.5 + seed / 10,
            cost={"trainable_params": 100, "peak_memory_mb": 10, "wall_s": 1})
        put(store, task=r"$\frac{$", method="a$b", targets="$x_1$", seed=seed, lr_ratio=4.0, score=0.6,
            cost={"trainable_params": 100, "peak_memory_mb": 10, "wall_s": 1})
    col = build(store).collection
    with rc_context({"svg.fonttype": "none", "text.usetex": False}):
        paths = score_vs_cost(col, tmp_path, "score_vs_params") + score_vs_lambda(col, tmp_path)
    for svg in (p for p in paths if p.suffix == ".svg"):
        texts = ["".join(e.itertext()) for e in ET.parse(svg).getroot().iter() if e.tag.endswith("text")]
        assert any("a$b $x_1$" in t for t in texts), texts  # the legend: a row label, literal
        assert any(r"$\frac{$" in t for t in texts), texts  # the panel title: the task name, literal


def test_cells_key_on_the_data_a_run_read(tmp_path):
    store = Store(tmp_path / "d.sqlite")
    spec = {"train": "/a/train.csv", "dev": "/a/dev.csv", "type": "classification"}
    for seed in (0, 1, 2):
        put(store, task="mine", seed=seed, score=0.9, custom={**spec, "sha256": {"train": "aa", "dev": "bb"}})
        put(store, task="mine", seed=seed, score=0.1, custom={**spec, "sha256": {"train": "cc", "dev": "bb"}})
        # the same files (same hashes) read from another folder: the same data
        put(store, task="mine", seed=seed + 10, score=0.9,
            custom={**spec, "train": "/b/train.csv", "dev": "/b/dev.csv", "sha256": {"train": "aa", "dev": "bb"}})
        put(store, task="custom:mine@12345678", seed=seed, score=0.3)
        put(store, task="custom:mine@87654321", seed=seed, score=0.7)
    rep = build(store)
    assert len(rep.table.rows) == 1 and len(rep.table.tasks) == 4
    row = rep.table.rows[0]
    means = sorted(round(s.mean, 6) for s in row.scores)
    assert means == [10.0, 30.0, 70.0, 90.0]
    assert sorted(s.n for s in row.scores) == [3, 3, 3, 6]
    assert len(set(rep.table.task_headers)) == 4  # each data set its own, distinguishable column
    with pytest.raises(Exception, match="no runs of task"):
        build(store, tasks=["other"])
    assert len(build(store, tasks=["mine"]).table.tasks) == 2  # a name selects every data set of that name


def test_settings_that_differ_within_a_task_split_rows(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    for seed in (0, 1, 2):
        put(store, task="rte", seed=seed, score=0.6, max_length=128)
        put(store, task="rte", seed=seed, score=0.7, max_length=None)  # an older record without the setting
        put(store, task="sst2", seed=seed, score=0.8, max_length=256)
        put(store, task="sst2", seed=seed, score=0.8, max_length=None)
    rep = build(store)
    j = rep.table.tasks.index("rte")
    cells = [(tr.row.fields.get("max_length"), round(tr.scores[j].mean, 6), tr.scores[j].n)
             for tr in rep.table.rows if tr.scores[j] is not None]
    assert sorted(cells, key=str) == sorted([(128, 60.0, 3), (None, 70.0, 3)], key=str)
    assert all(s is None or s.n == 3 for tr in rep.table.rows for s in tr.scores)


def test_stored_text_where_numbers_belong(tmp_path):
    store = Store(tmp_path / "n.sqlite")
    put(store, seed=0, score="0.5")  # a number stored as text: a number
    put(store, seed=1, score=0.7)
    put(store, seed=2, score="abc")  # not a number: unscored, listed, never averaged
    put(store, seed=3, score=None, scores={"dev/accuracy": None})
    put(store, seed=4, score=True)  # a bool is not a score
    rep = build(store)
    s = rep.table.rows[0].scores[0]
    assert s.n == 2 and s.mean == pytest.approx(60.0)
    assert sorted(r["config"]["seed"] for r in rep.collection.unscored) == [2, 3, 4]
    md = markdown_document(rep)
    assert md.count("no score for this split") == 3
    row = run_row({"run_key": "k" * 20, "status": "done", "config": {"lr": "abc", "lr_ratio": "x", "seed": 0},
                   "cost": {"peak_memory_mb": "abc", "median_step_s": "x", "wall_s": "y"}, "main_score": "zz"})
    assert row[5] == "n/a" and row[7] == "n/a" and row[10] == "n/a" and row[11:13] == [None, "-"]  # no baseline
    assert row[14:] == ["n/a", "n/a", "n/a"]


def test_a_replicate_is_counted_once(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    put(store, seed=0, score=0.2, key="old", finished_at="2026-01-01T00:00:00", device="cpu")
    put(store, seed="0", score=0.4, key="new", finished_at="2026-01-02T00:00:00", device="cuda")
    put(store, seed=1.0, score=0.6, key="one", device="cpu")
    rep = build(store)
    s = rep.table.rows[0].scores[0]
    assert s.n == 2 and s.mean == pytest.approx(50.0) and s.run_keys == ("new", "one")
    assert [r["run_key"] for r in rep.collection.superseded] == ["old"]
    page = html_report.page(rep.table, rep.collection, rep.comparisons)
    assert page.count('id="run-old"') == 1 and "superseded" in page
    assert "| old | done | sst2 | lora | qv | superseded (same seed run again; the later run counts) |" in \
        markdown_document(rep)


def test_comparisons_pair_whole_replicates(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    for seed in (0, 1, 2):
        put(store, seed=seed, score=0.5 + seed / 10, lr_ratio=1.0)
        put(store, seed=seed, score=0.6 + seed / 10, lr_ratio=4.0, data_seed=7)  # other data order
        put(store, seed=seed, score=0.9 - seed / 10, lr_ratio=4.0, targets="qkv")
    rep = build(store, pairs=[("lambda=4,targets=qv", "lambda=1")])
    assert [c.result.n for c in rep.comparisons] == [0]
    rep = build(store, pairs=[("targets=qkv", "lambda=1")])
    r = rep.comparisons[0].result
    assert r.n == 3 and r.seeds == (0, 1, 2) and r.mean_diff == pytest.approx((0.4 + 0.2 + 0.0) / 3)


def test_a_repeated_replicate_does_not_sway_the_lr_choice(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    for seed in (0, 1):
        put(store, seed=seed, lr=1e-3, scores={"dev/accuracy": 0.5, "selection/accuracy": 0.5})
        put(store, seed=seed, lr=3e-3, scores={"dev/accuracy": 0.6, "selection/accuracy": 0.6})
    put(store, seed=0, lr=1e-3, scores={"dev/accuracy": 0.99, "selection/accuracy": 0.99}, device="cuda",
        finished_at="2025-01-01T00:00:00")  # an older run of seed 0 at this lr, replaced by the one above
    rep = build(store, select_lr=True)
    cell = rep.collection.rows[0].cells["sst2"]
    assert cell.lr == 3e-3 and cell.candidates == pytest.approx({1e-3: 0.5, 3e-3: 0.6})
    assert len(rep.collection.superseded) == 1
    assert "| 0.003 | selection | 0.001: 50.00, 0.003: 60.00 |" in markdown_document(rep)


def test_rows_that_differ_have_different_labels(tmp_path):
    store = Store(tmp_path / "u.sqlite")
    for seed in (0, 1, 2):
        put(store, task="rte", seed=seed, score=0.6, method_args={"rank": 8, "tinit": 5})
        put(store, task="sst2", seed=seed, score=0.8, method_args={"rank": 8})  # recorded without tinit
    rep = build(store)
    labels = [tr.row.label for tr in rep.table.rows]
    assert sorted(labels) == ["lora qv r=8 λ=1", "lora qv r=8 λ=1 tinit=5"]
    assert "tinit" in rep.collection.label_fields and not any("tinit" in n for n in rep.table.notes)


def test_tasks_whose_file_names_would_clash_get_their_own_plots(tmp_path):
    from efficientft.report.plots import curves

    store = Store(tmp_path / "f.sqlite")
    for task in ("a.b", "a_b", "a/b"):
        put(store, task=task)
    col = build(store).collection
    paths = curves(col, store, tmp_path)
    assert len(paths) == len(set(paths)) == 6 and all(p.parent == tmp_path for p in paths)
    assert "curves_a_b.png" in {p.name for p in paths}  # a name that is safe as it is stays as it is


def test_report_into_a_file_is_a_clear_error(tmp_path, capsys):
    from efficientft.cli import main

    store = Store(tmp_path / "o.sqlite")
    put(store)
    (tmp_path / "taken").write_text("x")
    assert main(["report", "--store", str(store.path), "--out", str(tmp_path / "taken"), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"eft report: error: --out {tmp_path / 'taken'} is a file, not a folder; pass a folder path "
                   "(it is created if missing)."]


def test_replicates_that_share_a_seed_are_named_in_full(tmp_path):
    store = Store(tmp_path / "ds.sqlite")
    put(store, seed=0, data_seed=0, score=0.5)
    put(store, seed=0, data_seed=1, score=0.7)
    rep = build(store)
    assert rep.table.rows[0].scores[0].n == 2
    page = html_report.page(rep.table, rep.collection, rep.comparisons)
    assert ">0/0: 50.00, 0/1: 70.00</td>" in page


def test_an_option_at_its_default_is_the_record_without_it(tmp_path):
    from efficientft.config import KEY_WHEN_SET

    store = Store(tmp_path / "k.sqlite")
    name, default = next(iter(KEY_WHEN_SET.items()))
    for seed in (0, 1, 2):
        put(store, seed=seed, score=0.5)  # stored before the option existed
        put(store, seed=seed + 3, score=0.7, **{name: default})
    rep = build(store)
    assert len(rep.table.rows) == 1 and rep.table.rows[0].scores[0].n == 6


def test_a_custom_data_column_carries_its_hash_once(tmp_path):
    """A resolved run of the user's data is named ``name@hash8`` by its content; the report used to append a
    second digest of the same spec (``mine@h@h``) to that name in every header."""
    from efficientft.resolve import resolve_custom

    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\na,x\nb,y\n")
    dev.write_text("text,label\nc,x\nd,y\n")
    resolved = resolve_custom("mine", {"train": str(train), "dev": str(dev)})
    label = resolved["task"]
    assert re.fullmatch(r"mine@[0-9a-f]{8}", label)
    store = Store(tmp_path / "s.sqlite")
    for seed in (0, 1, 2):
        put(store, task=label, seed=seed, score=0.5, custom=resolved["custom"])
    rep = build(store)
    assert rep.table.tasks == [label] and rep.table.task_headers == [f"{label} (Acc.)"]
    doc = markdown_document(rep)
    assert label in doc and not re.search(r"@[0-9a-f]{8}@", doc)
    assert len(build(store, tasks=["mine"]).table.tasks) == 1
