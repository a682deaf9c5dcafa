"""One self-contained HTML file: the tables (sortable), the plots (embedded as data URIs) and every run's provenance.

Nothing is loaded from elsewhere: CSS and a small script are inline, and a Content-Security-Policy allows only that
script (by its SHA-256) and ``data:`` images, so even a string that slipped through escaping could not run. Every
string that comes from configs, tags or data goes through :func:`html.escape` (quotes included, for attributes).
A table cell links to its statistics, which link to each run, whose record (config, scores, cost, provenance,
details, tags, error) is one collapsible section.
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

from .collect import SPLIT_TITLES, Collection, task_title
from .compare import Comparison
from .stats import FEW_SEEDS
from .tables import FEW, Score, Table, _num, _p, fmt_params, fmt_value


def esc(v: object) -> str:
    return html.escape(str(v), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;
color:#1b1b1b}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{padding:.25em .6em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{border-bottom:2px solid #444;background:#fafafa}
td.l,th.l{text-align:left}
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


def _score_td(s: Score | None, digits: int, anchor: str = "") -> str:
    if s is None:
        return '<td data-sort="">–</td>'
    cls = "best" if s.rank == 1 else "second" if s.rank == 2 else ""
    m = f'<span class="{cls}">{_num(s.mean, digits)}</span>' if cls else _num(s.mean, digits)
    sd = f' <span class="sd">± {_num(s.std, digits)}</span>' if math.isfinite(s.std) else ""
    warn = (f' <span class="warn" title="fewer than {FEW_SEEDS} seeds (n={s.n})">{FEW} n={s.n}</span>'
            if s.few else "")
    title = esc(f"n={s.n}; 95% CI [{_num(s.ci_low, digits)}, {_num(s.ci_high, digits)}]"
                + (f"; lr={s.lr:g} (selected on {s.basis})" if s.basis and s.lr is not None else ""))
    body = f'<a class="cell" href="#{anchor}">{m}</a>' if anchor else m
    return f'<td data-sort="{s.mean!r}" title="{title}">{body}{sd}{warn}</td>'


def main_table(t: Table) -> str:
    head = "".join(f'<th class="l">{esc(h)}</th>' for h in t.label_headers)
    head += "".join(f"<th>{esc(h)}</th>" for h in t.task_headers) + "<th>Avg.</th><th>Params</th>"
    body = []
    for i, tr in enumerate(t.rows):
        cells = "".join(f'<td class="l">{esc(v)}</td>' for v in tr.labels)
        cells += "".join(_score_td(s, t.digits, f"cell-{i}-{j}") for j, s in enumerate(tr.scores))
        cells += _score_td(tr.avg, t.digits)
        cells += f'<td data-sort="{tr.params[0]!r}">{esc(fmt_params(*tr.params))}</td>'
        body.append(f"<tr>{cells}</tr>")
    return (f'<table class="sortable" id="main-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def comparisons_table(comps: Sequence[Comparison]) -> str:
    if not comps:
        return ('<p class="note">No pairs to compare (no λ ≠ 1 row with a λ = 1 or qkv twin; name pairs with '
                '<code>--compare A B</code>).</p>')
    test = "paired t-test" if comps[0].result.test == "t" else "Wilcoxon signed-rank"
    rows = []
    for c in comps:
        r = c.result
        warn = f'<span class="warn">⚠ n &lt; {FEW_SEEDS}</span>' if r.few else ""
        rows.append(f'<tr><td class="l">{esc(c.a.label)}</td><td class="l">{esc(c.b.label)}</td>'
                    f'<td class="l">{esc(task_title(c.task))}</td><td>{r.n}</td>'
                    f'<td data-sort="{100 * r.mean_diff!r}">{_num(100 * r.mean_diff, 2)}</td>'
                    f'<td data-sort="{r.p_value!r}">{esc(_p(r.p_value))}</td><td>{_num(r.d_z, 2)}</td>'
                    f'<td class="l">{esc(" ".join(map(str, r.seeds)))}</td><td class="l">{warn}</td></tr>')
    return ('<table class="sortable" id="comparisons"><thead><tr><th class="l">A</th><th class="l">B</th>'
            f'<th class="l">Task</th><th>n</th><th>mean A−B (×100)</th><th>p ({test})</th><th>d_z</th>'
            f'<th class="l">seeds</th><th class="l"></th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def cells_table(t: Table, col: Collection) -> str:
    rows = []
    for i, tr in enumerate(t.rows):
        for j, s in enumerate(tr.scores):
            if s is None:
                continue
            cell = tr.row.cells[t.tasks[j]]
            per_seed = ", ".join(f"{k[0]}: {100 * v:.{t.digits + 1}f}" for k, v in cell.scores.items())
            runs = " ".join(f'<a href="#run-{esc(k)}">{esc(k[:10])}</a>' for k in s.run_keys)
            lr = f"{s.lr:g}" if s.lr is not None else "several"
            basis = f" (on {esc(s.basis)})" if s.basis else ""
            rows.append(f'<tr id="cell-{i}-{j}"><td class="l">{esc(tr.row.label)}</td>'
                        f'<td class="l">{esc(task_title(t.tasks[j]))}</td><td>{s.n}</td>'
                        f"<td>{_num(s.mean, t.digits + 1)}</td><td>{_num(s.std, t.digits + 1)}</td>"
                        f"<td>[{_num(s.ci_low, t.digits + 1)}, {_num(s.ci_high, t.digits + 1)}]</td>"
                        f'<td class="l">{esc(per_seed)}</td><td class="l">{esc(lr)}{basis}</td>'
                        f'<td class="l">{runs}</td></tr>')
    return ('<table class="sortable" id="cells"><thead><tr><th class="l">configuration</th><th class="l">task</th>'
            '<th>n</th><th>mean</th><th>std</th><th>95% CI (t)</th><th class="l">score per seed</th>'
            f'<th class="l">lr</th><th class="l">runs</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _run_records(col: Collection) -> list[dict]:
    seen, out = set(), []
    for r in [*(x for row in col.rows for c in row.cells.values() for x in c.runs), *col.unscored, *col.not_done]:
        if r["run_key"] not in seen:
            seen.add(r["run_key"])
            out.append(r)
    return out


def runs_section(col: Collection) -> str:
    used = {x["run_key"] for row in col.rows for c in row.cells.values() for x in c.runs}
    unscored = {x["run_key"] for x in col.unscored}
    rows, blocks = [], []
    for r in _run_records(col):
        cfg, cost = r.get("config") or {}, r.get("cost") or {}
        key = r["run_key"]
        state = "in table" if key in used else "not done" if r["status"] != "done" else \
            "no score for this split" if key in unscored else "not selected"
        score = r.get("main_score")
        rows.append(
            f'<tr><td class="l"><a href="#run-{esc(key)}">{esc(key)}</a></td><td class="l">{esc(r["status"])}</td>'
            f'<td class="l">{esc(state)}</td><td class="l">{esc(cfg.get("task"))}</td>'
            f'<td class="l">{esc(cfg.get("method"))}</td><td class="l">{esc(cfg.get("targets"))}</td>'
            f'<td>{esc(fmt_value(cfg.get("lr_ratio")))}</td><td>{esc(fmt_value(cfg.get("lr")))}</td>'
            f'<td>{esc(cfg.get("seed"))}</td>'
            f'<td data-sort="{score if score is not None else ""}">{esc(fmt_value(score))}</td>'
            f'<td>{esc(fmt_value(cost.get("trainable_params")))}</td>'
            f'<td>{esc(_num(float(cost.get("peak_memory_mb") or math.nan), 0))}</td>'
            f'<td>{esc(_num(float(cost.get("wall_s") or math.nan), 1))}</td></tr>')
        record = {k: r.get(k) for k in ("run_key", "status", "main_metric", "main_score", "config", "scores", "cost",
                                        "provenance", "details", "tags", "error", "attempts", "worker",
                                        "created_at", "started_at", "finished_at")}
        blocks.append(f'<details id="run-{esc(key)}"><summary>{esc(key)} — {esc(r["status"])}: '
                      f'{esc(cfg.get("task"))} / {esc(cfg.get("method"))} / {esc(cfg.get("targets"))} / '
                      f'seed {esc(cfg.get("seed"))}</summary>'
                      f'<pre>{esc(json.dumps(record, indent=2, sort_keys=True, default=str))}</pre></details>')
    table = ('<table class="sortable" id="runs"><thead><tr><th class="l">run</th><th class="l">status</th>'
             '<th class="l">in report</th><th class="l">task</th><th class="l">method</th><th class="l">targets</th>'
             '<th>λ</th><th>lr</th><th>seed</th><th>main score</th><th>trainable</th><th>peak MB</th><th>wall s</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return table + "".join(blocks)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{esc(path.stem)}">'
            f"<figcaption>{esc(path.stem.replace('_', ' '))}</figcaption></figure>")


def page(t: Table, col: Collection, comps: Sequence[Comparison], plots: Sequence[Path] = (),
         title: str = "EfficientFT report") -> str:
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
    # PNG beside SVG: embed the SVG (vector) and keep PNG for the files on disk
    figs = [p for p in plots if p.suffix == ".svg"] or [p for p in plots if p.suffix == ".png"]
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in t.notes)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
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
the header; d_z = mean difference / standard deviation of the differences (Cohen's d for paired data).</p>
{comparisons_table(comps)}
<h2 id="plots">Plots</h2>
{"".join(_figure(p) for p in figs) or '<p class="note">No plots (--no-plots).</p>'}
<h2 id="cells-h">Cell statistics</h2>
{cells_table(t, col)}
<h2 id="runs-h">Runs and provenance</h2>
<p class="note">Every run read for this report, with its full stored record (config, scores, cost, provenance).</p>
{runs_section(col)}
<script>{_JS}</script>
</body></html>
"""
