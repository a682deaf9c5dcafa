"""One self-contained HTML file: the tables (sortable), the plots (embedded as data URIs) and every run's provenance.

Nothing is loaded from elsewhere: CSS and a small script are inline, and a Content-Security-Policy allows only that
script (by its SHA-256) and ``data:`` images. The CSP does not stop markup (a ``<meta http-equiv=refresh>`` needs no
script), so escaping is one mechanism, not a habit: every element is built by :func:`tag`, which escapes every
attribute value and every child that is not itself :class:`Markup` built by :func:`tag`; numbers shown or used as
sort keys go through :mod:`.values` (a stored text where a number belongs is ``n/a``, its sort key empty); links
to a run quote its key. A table cell links to its statistics, which link to each run, whose record (config,
scores, cost, provenance, details, tags, error) is one collapsible section.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from .collect import SPLIT_TITLES, Collection
from .compare import NO_PAIRS, Comparison
from .learned import NOT_LEARNED
from .rows import task_title
from .stats import FEW_SEEDS
from .tables import (
    COST_HEADERS,
    DETECTABLE,
    FEW,
    Score,
    Table,
    ci_text,
    cost_cells,
    detectable_text,
    fmt_params,
    p_text,
    spent_text,
)
from .values import number, show, sort_key


class Markup(str):
    """HTML built by :func:`tag` (or a constant of this module): inserted as is; any other string is data."""


def esc(v: object) -> str:
    """Data as HTML text or attribute value (quotes escaped too); :class:`Markup` passes unchanged."""
    return v if isinstance(v, Markup) else html.escape(str(v), quote=True)


def tag(name: str, *children: object, **attrs: object) -> Markup:
    """``<name attrs>children</name>``: attribute names from keywords (``class_`` → ``class``, ``data_sort`` →
    ``data-sort``; None leaves it out), every value and every non-Markup child escaped."""
    return Markup(f"<{name}{_attrs(attrs)}>{join(children)}</{name}>")


def void(name: str, **attrs: object) -> Markup:
    """An element without content (``<img>``, ``<meta>``), its attributes escaped as in :func:`tag`."""
    return Markup(f"<{name}{_attrs(attrs)}>")


def _attrs(attrs: dict[str, object]) -> str:
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)


def join(parts: Sequence[object], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p) for p in parts))


def run_href(key: object) -> str:
    """The link to a run's record: its key percent-quoted (the page's script decodes it back to the element id)."""
    return "#run-" + quote(str(key), safe="")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;
color:#1b1b1b}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{padding:.25em .6em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{border-bottom:2px solid #444;background:#fafafa}
td.l,th.l{text-align:left}
table.sortable{display:block;max-width:100%;overflow-x:auto}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.best{font-weight:700}.second{text-decoration:underline}
.sd{color:#666;font-size:.85em}.warn{color:#b35900;font-weight:700}
.note{color:#444;font-size:.9em}
figure{display:inline-block;margin:1em 1em 1em 0;vertical-align:top}figure img{max-width:100%;height:auto}
figcaption{color:#444;font-size:.9em}
details{margin:.3em 0;border:1px solid #e4e4e4;padding:.3em .6em}details[open]{background:#fcfcfc}
pre{white-space:pre-wrap;word-break:break-all;font-size:12px}
a{color:#0645ad}
td a.cell{color:inherit;text-decoration:none}td a.cell:hover{background:#eef3ff}
"""

_JS = """
(function(){
function key(td){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
var n=parseFloat(v);return (v!==''&&isFinite(n)&&String(n)!=='NaN'&&/^[-+0-9.eE]+$/.test(v))?[0,n]:[1,v];}
function cmp(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:a[1]>b[1]?1:0;}
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
  var asc=th.getAttribute('aria-sort')!=='ascending';
  t.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',asc?'ascending':'descending');
  var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(x,y){var c=cmp(key(x.cells[i]),key(y.cells[i]));return asc?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});});});});
function openHash(){var id=decodeURIComponent(location.hash.slice(1));if(!id)return;var el=document.getElementById(id);
 if(el&&el.tagName==='DETAILS')el.open=true;}
window.addEventListener('hashchange',openHash);openHash();
})();
"""


def _score_td(s: Score | None, digits: int, anchor: str = "") -> Markup:
    if s is None:
        return tag("td", "–", data_sort="")
    cls = "best" if s.rank == 1 else "second" if s.rank == 2 else None
    mean = show(s.mean, digits)
    m = tag("span", mean, class_=cls) if cls else mean
    parts: list[object] = [tag("a", m, class_="cell", href=f"#{anchor}") if anchor else m]
    if math.isfinite(number(s.std)):
        parts += [" ", tag("span", f"± {show(s.std, digits)}", class_="sd")]
    if s.few:
        parts += [" ", tag("span", f"{FEW} n={s.n}", class_="warn", title=f"fewer than {FEW_SEEDS} seeds (n={s.n})")]
    if s.learned is False:
        parts += [" ", tag("span", f"{NOT_LEARNED} did not learn", class_="warn",
                           title=f"does not beat the trivial baseline ({show(s.baseline, digits)}) beyond its noise")]
    title = (f"n={s.n}; 95% CI [{show(s.ci_low, digits)}, {show(s.ci_high, digits)}]"
             + (f"; lr={show(s.lr)} (selected on {s.basis})" if s.basis and s.lr is not None else ""))
    return tag("td", *parts, data_sort=sort_key(s.mean), title=title)


def _table(id_: str, headers: Sequence[tuple[str, bool]], rows: Sequence[Markup]) -> Markup:
    """A sortable table: headers as (text, left-aligned)."""
    head = tag("tr", *(tag("th", h, class_="l" if left else None) for h, left in headers))
    return tag("table", tag("thead", head), tag("tbody", *rows), class_="sortable", id=id_)


def main_table(t: Table) -> Markup:
    headers = [(h, True) for h in t.label_headers] + [(h, False) for h in [*t.task_headers, "Avg.", "Params"]]
    body = []
    for i, tr in enumerate(t.rows):
        cells = [tag("td", v, class_="l") for v in tr.labels]
        cells += [_score_td(s, t.digits, f"cell-{i}-{j}") for j, s in enumerate(tr.scores)]
        cells += [_score_td(tr.avg, t.digits), tag("td", fmt_params(*tr.params), data_sort=sort_key(tr.params[0]))]
        body.append(tag("tr", *cells))
    return _table("main-table", headers, body)


def comparisons_table(comps: Sequence[Comparison]) -> Markup:
    if not comps:
        return tag("p", NO_PAIRS,
                   tag("code", "--compare A B"), ").", class_="note")
    test = "paired t-test" if comps[0].result.test == "t" else "Wilcoxon signed-rank"
    rows = []
    for c in comps:
        r = c.result
        rows.append(tag(
            "tr", tag("td", c.a.label, class_="l"), tag("td", c.b.label, class_="l"),
            tag("td", task_title(c.task), class_="l"), tag("td", r.n),
            tag("td", show(100 * r.mean_diff, 2), data_sort=sort_key(100 * r.mean_diff)),
            tag("td", ci_text(r)),
            tag("td", p_text(r.p_value), data_sort=sort_key(r.p_value)),
            tag("td", p_text(r.p_holm), data_sort=sort_key(r.p_holm)), tag("td", show(r.d_z, 2)),
            tag("td", detectable_text(r), data_sort=sort_key(r.detectable)),
            tag("td", " ".join(map(str, r.seeds)), class_="l"),
            tag("td", tag("span", f"⚠ n < {FEW_SEEDS}", class_="warn") if r.few else "",
                " " if r.few and c.caveat else "",
                tag("span", f"{NOT_LEARNED} {c.caveat}", class_="warn") if c.caveat else "", class_="l")))
    headers = [("A", True), ("B", True), ("Task", True), ("n", False), ("mean A−B (×100)", False),
               ("95% CI", False), (f"p ({test})", False), ("p (Holm)", False), ("d_z", False),
               (f"detectable ({DETECTABLE})", False), ("seeds", True), ("", True)]
    return _table("comparisons", headers, rows)


def cells_table(t: Table, col: Collection) -> Markup:
    rows = []
    d = t.digits + 1
    for i, tr in enumerate(t.rows):
        for j, s in enumerate(tr.scores):
            if s is None:
                continue
            cell = tr.row.cells[t.tasks[j]]
            several = len({k[1:] for k in cell.scores}) > 1  # data seeds vary: name the whole replicate
            per_seed = ", ".join(f"{'/'.join(map(str, k)) if several else k[0]}: {show(100 * number(v), d)}"
                                 for k, v in cell.scores.items())
            runs = join([tag("a", str(k)[:10], href=run_href(k)) for k in s.run_keys], " ")
            lr = show(s.lr) if s.lr is not None else "several"
            basis = f" (on {s.basis})" if s.basis else ""
            rows.append(tag(
                "tr", tag("td", tr.row.label, class_="l"), tag("td", task_title(t.tasks[j]), class_="l"),
                tag("td", s.n), tag("td", show(s.mean, d)), tag("td", show(s.std, d)),
                tag("td", f"[{show(s.ci_low, d)}, {show(s.ci_high, d)}]"), tag("td", per_seed, class_="l"),
                tag("td", lr + basis, class_="l"), tag("td", runs, class_="l"), id=f"cell-{i}-{j}"))
    headers = [("configuration", True), ("task", True), ("n", False), ("mean", False), ("std", False),
               ("95% CI (t)", False), ("score per seed", True), ("lr", True), ("runs", True)]
    return _table("cells", headers, rows)


def _run_records(col: Collection) -> list[dict]:
    seen, out = set(), []
    for r in [*(x for row in col.rows for c in row.cells.values() for x in c.runs), *col.superseded,
              *col.unscored, *col.not_done]:
        if r["run_key"] not in seen:
            seen.add(r["run_key"])
            out.append(r)
    return out


_RECORD_FIELDS = ("run_key", "status", "main_metric", "main_score", "config", "scores", "cost", "provenance",
                  "details", "tags", "error", "attempts", "worker", "created_at", "started_at", "finished_at")


def runs_section(col: Collection) -> Markup:
    used = {x["run_key"] for row in col.rows for c in row.cells.values() for x in c.runs}
    unscored = {x["run_key"] for x in col.unscored}
    superseded = {x["run_key"] for x in col.superseded}
    rows, blocks = [], []
    for r in _run_records(col):
        cfg, cost = r.get("config") or {}, r.get("cost") or {}
        key = r["run_key"]
        state = "in table" if key in used else "not done" if r["status"] != "done" else \
            "superseded (same seed run again)" if key in superseded else \
            "no score for this split" if key in unscored else "not selected"
        score = r.get("main_score")
        rows.append(tag(
            "tr", tag("td", tag("a", key, href=run_href(key)), class_="l"), tag("td", r["status"], class_="l"),
            tag("td", state, class_="l"), tag("td", cfg.get("task"), class_="l"),
            tag("td", cfg.get("method"), class_="l"), tag("td", cfg.get("targets"), class_="l"),
            tag("td", show(cfg.get("lr_ratio"))), tag("td", show(cfg.get("lr"))), tag("td", cfg.get("seed")),
            tag("td", show(score), data_sort=sort_key(score)), tag("td", show(cost.get("trainable_params"))),
            tag("td", show(cost.get("peak_memory_mb"), 0)), tag("td", show(cost.get("wall_s"), 1))))
        record = {k: r.get(k) for k in _RECORD_FIELDS}
        summary = (f"{key} — {r['status']}: {cfg.get('task')} / {cfg.get('method')} / {cfg.get('targets')} / "
                   f"seed {cfg.get('seed')}")
        blocks.append(tag("details", tag("summary", summary),
                          tag("pre", json.dumps(record, indent=2, sort_keys=True, default=str)), id=f"run-{key}"))
    headers = [("run", True), ("status", True), ("in report", True), ("task", True), ("method", True),
               ("targets", True), ("λ", False), ("lr", False), ("seed", False), ("main score", False),
               ("trainable", False), ("peak MB", False), ("wall s", False)]
    return join([_table("runs", headers, rows), *blocks])


def examples_section(examples: Sequence[dict]) -> Markup:
    """A few generated answers of each generation run (question, generated text, extracted answer, gold)."""
    blocks = []
    for ex in examples:
        rows = [tag("tr", tag("td", r["split"], class_="l"), tag("td", r.get("question") or r["id"], class_="l"),
                    tag("td", tag("pre", r["generated"]), class_="l"), tag("td", r.get("extracted"), class_="l"),
                    tag("td", r["gold"], class_="l"), tag("td", "✓" if r["correct"] else "✗"))
                for r in ex["rows"]]
        headers = [("set", True), ("question", True), ("generated", True), ("extracted", True), ("gold", True),
                   ("correct", True)]
        blocks.append(tag("h3", f"{ex['task']} / {ex['method']} / {ex['targets']} — run ",
                          tag("a", ex["run_key"], href=run_href(ex["run_key"]))))
        blocks.append(_table(f"gen-{ex['run_key']}", headers, rows))
    return join(blocks)


def _figure(path: Path) -> Markup:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return tag("figure", void("img", src=f"data:{mime};base64,{data}", alt=path.stem),
               tag("figcaption", path.stem.replace("_", " ")))


def costs_table(costs: Sequence) -> Markup:
    rows = []
    for c in costs:
        raw = [c.runs, c.params_min, c.median_step_s, c.peak_memory_mb, c.wall_per_run_s, c.wall_s, c.tokens_per_s,
               c.mfu, c.cpu_share]
        text = cost_cells(c)
        rows.append(tag("tr", tag("td", text[0], class_="l"),
                        *[tag("td", v, data_sort=sort_key(x)) for v, x in zip(text[1:], raw, strict=True)]))
    return _table("costs", [(h, i == 0) for i, h in enumerate(COST_HEADERS)], rows)


def page(t: Table, col: Collection, comps: Sequence[Comparison], plots: Sequence[Path] = (),
         title: str = "EfficientFT report", examples: Sequence[dict] = (), costs: Sequence = (),
         spent=None) -> str:
    """The whole report as one HTML document (a string)."""
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    n_used = sum(len(c.runs) for r in col.rows for c in r.cells.values())
    status_counts: dict[str, int] = {}
    for r in col.not_done:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
    left_out = ", ".join(f"{n} {s}" for s, n in sorted(status_counts.items()))
    summary = (f"{n_used} finished runs in {len(col.rows)} configurations × {len(col.tasks)} tasks; "
               f"split: {SPLIT_TITLES[col.split]}.")
    if col.not_done:
        summary += f" Not in the table: {left_out} (listed under Runs)."
    if col.unscored:
        summary += f" {len(col.unscored)} done runs have no {col.split} score."
    if col.superseded:
        summary += f" {len(col.superseded)} superseded (a seed run again: the later run counts; listed under Runs)."
    # PNG beside SVG: embed the SVG (vector) and keep PNG for the files on disk
    figs = [p for p in plots if p.suffix == ".svg"] or [p for p in plots if p.suffix == ".png"]
    notes = join([tag("p", n, class_="note") for n in t.notes])
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{void("meta", http_equiv="Content-Security-Policy", content=csp)}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="note">Store <code>{esc(col.store)}</code>; generated {esc(generated)}. {esc(summary)}</p>
<h2 id="results">Results</h2>
<p class="note">{esc(t.caption)} Click a header to sort; click a score for its statistics and runs.</p>
{main_table(t)}
{notes}
<h2 id="comparisons-h">Paired comparisons</h2>
<p class="note">A − B over the seeds both configurations ran (paired by seed), scores ×100; p from the test named in
the header, and adjusted (Holm–Bonferroni) over all {len(comps)} comparisons on this page; d_z = mean difference /
standard deviation of the differences (Cohen's d for paired data); detectable = the smallest true difference this
comparison's seeds detect with 80 % power at α = 0.05 (two-sided t-test at the measured spread): a "no difference"
rules out only differences larger than that.</p>
{comparisons_table(comps)}
<h2 id="cost-h">Cost</h2>
<p class="note">Per configuration, over its runs in the table: median of each run's median optimizer step, largest
peak memory, median wall time per run and the wall time summed.</p>
{costs_table(costs)}
<p class="note">{esc(spent_text(spent))}</p>
<h2 id="plots">Plots</h2>
{"".join(_figure(p) for p in figs) or '<p class="note">No plots (--no-plots).</p>'}
{"" if not examples else '<h2 id="examples-h">Generated examples</h2>' + examples_section(examples)}
<h2 id="cells-h">Cell statistics</h2>
{cells_table(t, col)}
<h2 id="runs-h">Runs and provenance</h2>
<p class="note">Every run read for this report, with its full stored record (config, scores, cost, provenance).</p>
{runs_section(col)}
<script>{_JS}</script>
</body></html>
"""
