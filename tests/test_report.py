"""Reports from a store of real tiny runs: the numbers in every format against the stored scores, the statistics
against scipy, the marks, the warnings, the plots and the escaping of strings from configs and data."""

from __future__ import annotations

import csv
import html
import io
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy import stats as sps

from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.report import tables
from efficientft.report.build import build, markdown_document, parse_formats
from efficientft.report.collect import select_lr
from efficientft.report.compare import POOLED
from efficientft.report.stats import cohens_dz, holm, paired, pareto_front, summarize
from efficientft.resolve import resolve, run_key
from efficientft.store import Store
from tests.report_runs import EVIL, EVIL_TAG, GRID


def _runs(store, split="dev", **want):
    """Done runs whose config matches ``want`` (independently of the report code), by seed."""
    out = {}
    for r in store.runs("done"):
        c = r["config"]
        if all(c.get(k) == v for k, v in want.items()):
            metric = r["main_metric"].split("/")[1]
            out[c["seed"]] = r["scores"][f"{split}/{metric}"]
    return out


def _row(rep, method, targets, lam, lr=None):
    hits = [tr for tr in rep.table.rows if tr.row.fields["method"] == method and tr.row.fields["targets"] == targets
            and tr.row.fields["lr_ratio"] == lam and (lr is None or tr.row.fields.get("lr") == lr)]
    assert len(hits) == 1, [tr.row.label for tr in rep.table.rows]
    return hits[0]


@pytest.fixture(scope="module")
def rep(report_store):
    return build(report_store)


@pytest.fixture
def written(report_written):
    return report_written


def test_cells_equal_mean_and_std_of_the_stored_scores(rep, report_store):
    assert rep.table.tasks == ["stsb", "rte"]
    assert rep.table.task_headers == ["STS-B (Pearson r)", "RTE (Acc.)"]
    assert len(rep.table.rows) == len(GRID)
    md = rep.markdown_table().splitlines()
    for method, targets, lam, lr, seeds, tasks in GRID:
        tr = _row(rep, method, targets, lam, lr)
        line = md[2 + rep.table.rows.index(tr)]
        cells = [c.strip() for c in line.strip("|").split("|")]
        for j, task in enumerate(rep.table.tasks):
            s = tr.scores[j]
            if task not in tasks:
                assert s is None and cells[len(rep.table.label_headers) + j] == "–"
                continue
            stored = _runs(report_store, task=task, method=method, targets=targets, lr_ratio=lam, lr=lr)
            assert sorted(stored) == list(seeds) and s.n == len(seeds) and sorted(s.seeds) == list(seeds)
            vals = np.array([stored[k] for k in sorted(stored)])
            assert s.mean == pytest.approx(100 * vals.mean(), abs=1e-9)
            assert s.std == pytest.approx(100 * vals.std(ddof=1), abs=1e-9)
            lo, hi = sps.t.interval(0.95, len(vals) - 1, loc=vals.mean(), scale=sps.sem(vals)) if vals.std() else \
                (vals.mean(), vals.mean())
            assert (s.ci_low, s.ci_high) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
            text = cells[len(rep.table.label_headers) + j]
            # the tiny runs do not learn: every cell carries the did-not-learn mark (tests/test_learned.py)
            assert text.replace("**", "").replace("<u>", "").replace("</u>", "").replace(" †", "").replace(" ✗", "") == \
                f"{100 * vals.mean():.1f} ± {100 * vals.std(ddof=1):.1f}"
        if len(tasks) == 2:
            means = [100 * np.mean(list(_runs(report_store, task=t, method=method, targets=targets, lr_ratio=lam,
                                              lr=lr).values())) for t in ("stsb", "rte")]
            assert tr.avg.mean == pytest.approx(sum(means) / 2)
        else:
            assert tr.avg is None and cells[-2] == "–"


def test_trainable_parameters_column(rep):
    tr = _row(rep, "lora", "qv", 1.0)
    # LoRA r=4 on Q and V of 2 layers (hidden 32): 1,024; the head has 33 (STS-B, 1 output) or 66 (RTE) weights
    assert tr.params == (1024 + 33, 1024 + 66)
    assert tables.fmt_params(*tr.params) == "1.06K–1.09K"
    assert tables.fmt_params(1057, 1057) == "1.06K" and tables.fmt_params(22_713_986, 22_713_986) == "22.7M"


def test_best_is_bold_and_second_underlined(rep):
    md = rep.markdown_table().splitlines()[2:]
    first = len(rep.table.label_headers)
    for j in range(len(rep.table.tasks) + 1):  # every task and the average
        scores = [tr.scores[j] if j < len(rep.table.tasks) else tr.avg for tr in rep.table.rows]
        shown = sorted({round(s.mean, 1) for s in scores if s is not None}, reverse=True)
        for line, s in zip(md, scores, strict=True):
            cell = [c.strip() for c in line.strip("|").split("|")][first + j]
            if s is None:
                continue
            if round(s.mean, 1) == shown[0]:
                assert cell.startswith(f"**{s.mean:.1f}**"), cell
            elif len(shown) > 1 and round(s.mean, 1) == shown[1]:
                assert cell.startswith(f"<u>{s.mean:.1f}</u>"), cell
            else:
                assert "**" not in cell and "<u>" not in cell
    # in this store: the 2-seed λ=2 row has the best STS-B mean, full fine-tuning the best average
    assert tables.md_score(_row(rep, "lora", "qv", 2.0).scores[0], 1).startswith("**")
    assert _row(rep, "full", "qv", 1.0).avg.rank == 1


def test_fewer_than_three_seeds_is_flagged_in_every_format(written):
    r, out = written
    few = _row(r, "lora", "qv", 2.0).scores[0]
    assert few.n == 2 and few.few
    assert all(not s.few for tr in r.table.rows for s in tr.scores if s is not None and s is not few)
    md_lines = [line for line in r.markdown_table().splitlines() if "†" in line]
    assert len(md_lines) == 1 and "| 2 |" in md_lines[0]  # the λ=2 row
    assert any("fewer than 3 seeds" in n for n in r.table.notes)
    tex = (out / "table.tex").read_text()
    main_tex, comp_tex = tex.split(r"\end{table}")[:2]
    assert len(re.findall(r"\$\^\\dagger\$(?:\$\^\\times\$)? & ", main_tex)) == 1 and "fewer than 3 seeds" in main_tex
    assert comp_tex.count(r"2$^\dagger$ & ") == 2 and "fewer than 3 matched seeds" in comp_tex
    page = (out / "report.html").read_text()
    assert page.count('class="warn" title="fewer than 3 seeds (n=2)"') == 1
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [int(x["stsb_n"]) for x in rows].count(2) == 1
    # the comparisons of the 2-seed row carry the warning too
    doc = (out / "report.md").read_text()
    assert doc.count("⚠ n < 3") == sum(c.result.n < 3 for c in r.comparisons)
    # (the others: pooled lines left with no task, as no cell of these tiny runs learned)
    assert sum(c.result.n == 2 for c in r.comparisons) == 2 and all(c.result.n in (0, 2, 3) for c in r.comparisons)


def test_paired_comparisons_equal_scipy(rep, report_store):
    pairs = {(c.a.label, c.b.label, c.task): c.result for c in rep.comparisons}
    a = _runs(report_store, task="stsb", method="lora", targets="qv", lr_ratio=4.0, lr=3e-3)
    for b_targets in ("qv", "qkv"):
        b = _runs(report_store, task="stsb", method="lora", targets=b_targets, lr_ratio=1.0, lr=3e-3)
        key = next(k for k in pairs if k[2] == "stsb" and "λ=4" in k[0] and "lr=0.003" in k[0]
                   and k[1].startswith(f"lora {b_targets} ") and "λ=1" in k[1])
        res = pairs[key]
        xa, xb = np.array([a[s] for s in (0, 1, 2)]), np.array([b[s] for s in (0, 1, 2)])
        assert res.n == 3 and res.seeds == (0, 1, 2)
        assert res.p_value == pytest.approx(sps.ttest_rel(xa, xb).pvalue, rel=1e-12)
        d = xa - xb
        assert res.mean_diff == pytest.approx(d.mean()) and res.d_z == pytest.approx(d.mean() / d.std(ddof=1))
        half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
        assert (res.ci_low, res.ci_high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    pairs = {k: v for k, v in pairs.items() if k[2] != POOLED and "λ=best" not in k[0]}
    # the default pairs: each row against its qkv twin (λ=1; QV λ=1 vs QKV is the paper's first claim), each λ≠1
    # row against its λ=1 twin, on the tasks both have
    assert sorted((k[0].split()[3], k[1].split()[1], k[2]) for k in pairs) == sorted(
        [("λ=1", "qkv", "stsb"), ("λ=1", "qkv", "rte"),
         ("λ=2", "qv", "stsb"), ("λ=2", "qkv", "stsb"), ("λ=4", "qv", "stsb"), ("λ=4", "qv", "rte"),
         ("λ=4", "qkv", "stsb"), ("λ=4", "qkv", "rte")])


def test_the_detectable_difference_is_statsmodels_power_solution_and_is_shown_beside_each_comparison(rep):
    """A "no difference" at n seeds rules out only differences above what n detects: at the spread of the paired
    differences, the true difference a two-sided t-test at 0.05 finds 80 % of the time — statsmodels' TTestPower
    (Cohen's d at nobs, times the sd), and the seeds a given difference needs; shown in every comparisons table."""
    from efficientft.report.stats import detectable, seeds_for

    TTestPower = pytest.importorskip("statsmodels.stats.power").TTestPower  # noqa: N806 - the class, by its name

    for n, sd in ((3, 0.013), (5, 0.013), (10, 0.02), (25, 0.004)):
        want = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8) * sd
        assert detectable(sd / np.sqrt(n), n - 1) == pytest.approx(want, rel=1e-6)
    for delta, sd in ((0.01, 0.013), (0.005, 0.013), (0.02, 0.01)):
        need = TTestPower().solve_power(effect_size=delta / sd, nobs=None, alpha=0.05, power=0.8)
        assert seeds_for(delta, sd) == int(np.ceil(need))
    assert math.isnan(detectable(0.0, 4)) and math.isnan(detectable(0.01, 1))  # no spread; two seeds: none usable
    r = next(c.result for c in rep.comparisons if c.result.n >= 3 and c.result.std_diff > 0)
    assert r.detectable == pytest.approx(detectable(r.std_diff / np.sqrt(r.n), r.n - 1))
    md = tables.md_comparisons(rep.comparisons)
    assert "| detectable (80 % power) |" in md.splitlines()[0] and f"±{100 * r.detectable:.2f}" in md
    rows = list(csv.DictReader(io.StringIO(tables.csv_comparisons(rep.comparisons))))
    assert any(x["detectable_x100"] and float(x["detectable_x100"]) == pytest.approx(100 * r.detectable)
               for x in rows)


def test_best_lambda_is_chosen_per_task_on_the_selection_split_and_compared_with_qkv(report_store, monkeypatch):
    """The paper's "best λ vs QKV": per task, the λ (of the lr=3e-3 QV family: λ 1, 2, 4 on STS-B; 1, 4 on RTE)
    with the best mean selection score, never the reported dev score; paired with QKV λ=1 by seed, and pooled
    (every cell taken as learned, so that the pooled line has them all)."""
    monkeypatch.setattr("efficientft.report.collect.cell_learned", lambda *a: True)
    rep = build(report_store)
    best = [c for c in rep.comparisons if "λ=best" in c.a.label]
    assert [c.task for c in best] == ["stsb", "rte", POOLED]
    qkv = {t: _runs(report_store, task=t, method="lora", targets="qkv", lr_ratio=1.0, lr=3e-3) for t in ("stsb", "rte")}
    chosen = {}
    for c in best[:2]:
        lams = (1.0, 2.0, 4.0) if c.task == "stsb" else (1.0, 4.0)
        sel = {lam: np.mean(list(_runs(report_store, "selection", task=c.task, method="lora", targets="qv",
                                      lr_ratio=lam, lr=3e-3).values())) for lam in lams}
        lam = max(sel, key=sel.get)
        chosen[c.task] = dev = _runs(report_store, task=c.task, method="lora", targets="qv", lr_ratio=lam, lr=3e-3)
        assert c.a.label.startswith(f"lora qv r=4 λ=best ({lam:g}, by selection)"), c.a.label
        assert c.b.label.startswith("lora qkv r=4 λ=1")
        seeds = sorted(set(dev) & set(qkv[c.task]))
        d = np.array([dev[s] - qkv[c.task][s] for s in seeds])
        assert c.result.n == len(seeds) and c.result.mean_diff == pytest.approx(d.mean(), rel=1e-12)
    pooled = best[2].result
    per = np.array([np.mean([chosen[t][s] - qkv[t][s] for t in ("stsb", "rte")]) for s in (0, 1, 2)])
    assert pooled.n == 3 and pooled.mean_diff == pytest.approx(per.mean(), rel=1e-12)
    assert "per task, by selection" in best[2].a.label
    # naming pairs replaces the defaults, the best-λ comparisons included
    named = build(report_store, pairs=[("method=full,targets=qv", "method=lora,targets=qkv")])
    assert not any("λ=best" in c.a.label for c in named.comparisons)


def test_holm_adjustment():
    """Holm (1979): sorted increasing, p̃_(i) = max_{j≤i} min(1, (m−j+1)·p_(j)); NaN (no test) is not counted in m."""
    nan = float("nan")
    got = holm([0.01, 0.04, 0.03, nan, 0.5])
    # m = 4: 4·0.01 = 0.04; 3·0.03 = 0.09; 2·0.04 = 0.08, raised to 0.09 by the step before; 1·0.5 = 0.5
    assert got[:3] + got[4:] == pytest.approx([0.04, 0.09, 0.09, 0.5]) and math.isnan(got[3])
    assert holm([0.3, 0.6]) == [0.6, 0.6] and holm([0.9, 0.8, 0.7]) == [1.0, 1.0, 1.0] and holm([]) == []
    assert holm([0.02]) == [0.02]


def test_every_comparison_is_adjusted_over_the_reports_family(rep, written):
    ps = [c.result.p_value for c in rep.comparisons]
    assert len(ps) > 10 and [c.result.p_holm for c in rep.comparisons] == pytest.approx(holm(ps), nan_ok=True)
    assert all(c.result.p_holm >= c.result.p_value for c in rep.comparisons if math.isfinite(c.result.p_value))
    # a family of many tests: the smallest adjusted p is the smallest raw p times the number of tests (Holm's step 1)
    m = sum(math.isfinite(p) for p in ps)
    assert min(c.result.p_holm for c in rep.comparisons) == pytest.approx(min(1.0, m * np.nanmin(ps)))
    assert f"p (Holm, {len(ps)} tests)" in (written[1] / "report.md").read_text()
    rows = list(csv.reader(io.StringIO(tables.csv_comparisons(rep.comparisons))))
    assert rows[0][9:11] == ["p_value", "p_holm"]
    assert [float(r[10]) if r[10] else math.nan for r in rows[1:]] == pytest.approx(holm(ps), nan_ok=True)


def test_named_comparison_and_wilcoxon(report_store):
    r = build(report_store, pairs=[("method=full,targets=qv", "method=lora,targets=qkv")], test="wilcoxon")
    assert [c.task for c in r.comparisons] == ["stsb", "rte", POOLED]
    a = _runs(report_store, task="stsb", method="full", targets="qv")
    b = _runs(report_store, task="stsb", method="lora", targets="qkv")
    xa, xb = [a[s] for s in (0, 1, 2)], [b[s] for s in (0, 1, 2)]
    assert r.comparisons[0].result.p_value == pytest.approx(sps.wilcoxon(xa, xb).pvalue)
    assert r.comparisons[1].result.p_value == 1.0 and r.comparisons[1].result.d_z == 0.0  # RTE: identical scores
    with pytest.raises(ConfigError, match="matches 4 rows"):
        build(report_store, pairs=[("method=lora,targets=qv", "method=full")])
    with pytest.raises(ConfigError, match="matches no row"):
        build(report_store, pairs=[("method=lora,lambda=8", "method=full")])


def test_statistics_units():
    s = summarize([0.5, 0.7, 0.6, 0.9])
    x = np.array([0.5, 0.7, 0.6, 0.9])
    assert (s.n, s.mean, s.std) == (4, pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)))
    assert (s.ci_low, s.ci_high) == pytest.approx(sps.t.interval(0.95, 3, loc=x.mean(), scale=sps.sem(x)))
    one = summarize([0.5])
    assert one.n == 1 and one.few and math.isnan(one.std) and math.isnan(one.ci_low)
    assert cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0) and cohens_dz([1.0, 1.0]) == math.inf
    p = paired({0: 1.0, 1: 2.0, 2: 4.0, 7: 9.0}, {0: 0.5, 1: 2.5, 2: 3.0, 3: 1.0})
    assert p.seeds == (0, 1, 2) and p.n == 3
    assert p.p_value == pytest.approx(sps.ttest_rel([1.0, 2.0, 4.0], [0.5, 2.5, 3.0]).pvalue)
    assert math.isnan(paired({0: 1.0}, {0: 2.0}).p_value) and paired({}, {}).n == 0


def test_pareto_front_on_synthetic_points():
    pts = [(1, 5), (2, 4), (2, 6), (3, 6), (4, 7), (0.5, 1), (math.nan, 9), (4, 7), (5, 7)]
    # (2,4) is dominated by (1,5); (3,6) by (2,6); (5,7) by (4,7); the duplicate (4,7) stays
    assert pareto_front(pts) == [5, 0, 2, 4, 7]
    assert pareto_front([]) == [] and pareto_front([(1.0, math.inf)]) == []
    assert pareto_front([(3, 1), (2, 2), (1, 3)]) == [2]


def test_select_lr_keeps_the_best_mean_selection_score(report_store):
    r = build(report_store, select_lr=True)
    assert "lr" not in r.collection.label_fields and len(r.table.rows) == len(GRID) - 1
    cell = _row(r, "lora", "qv", 4.0).row.cells["stsb"]
    means = {lr: np.mean(list(_runs(report_store, "selection", task="stsb", method="lora", targets="qv",
                                    lr_ratio=4.0, lr=lr).values())) for lr in (1e-3, 3e-3)}
    best = max(means, key=means.get)
    assert cell.lr == best and cell.basis == "selection" and cell.candidates == pytest.approx(means)
    assert sorted(cell.scores) == [(s, 0) for s in (0, 1, 2)]
    dev = _runs(report_store, task="stsb", method="lora", targets="qv", lr_ratio=4.0, lr=best)
    assert cell.summary.mean == pytest.approx(np.mean(list(dev.values())))
    assert "## Selected learning rates" in markdown_document(r)
    # without selection scores the choice falls back to dev, labelled as optimistic
    recs = [x for x in report_store.runs("done") if x["config"]["task"] == "stsb" and x["config"]["lr_ratio"] == 4.0]
    stripped = [{**x, "scores": {k: v for k, v in x["scores"].items() if not k.startswith("selection/")}} for x in recs]
    by_lr = {lr: [x for x in stripped if x["config"]["lr"] == lr] for lr in (1e-3, 3e-3)}
    lr, basis, dev_means = select_lr(by_lr, "pearson")
    assert basis == "dev (optimistic)" and lr == max(dev_means, key=dev_means.get)


@pytest.mark.parametrize("by_lr", [
    {1e-3: [0.5, 0.7, 0.6], 3e-3: [0.62, 0.61, 0.6]},  # 0.6 vs 0.61
    {1e-3: [0.6, 0.6], 3e-3: [0.5, 0.7]},  # equal means: the first in order, in both
    {1e-3: [0.1, 0.2, 0.3], 3e-3: [0.2, 0.2, 0.2]},  # means 0.2 - 1 ulp and 0.2 + 1 ulp (summed exactly)
    {1e-3: [0.9, math.nan], 3e-3: [0.8, 0.85]},  # a NaN score does not count
])
def test_the_report_and_the_sweep_choose_one_way(by_lr):
    """One rule (efficientft.choice) chooses the learning rate in the report and the configuration in a sweep."""
    from efficientft.sweep.selection import select

    def rec(lr, seed, s):
        return {"run_key": f"{lr}-{seed}", "status": "done", "main_metric": "dev/accuracy",
                "config": {"task": "rte", "method": "lora", "lr": lr, "seed": seed},
                "scores": {"selection/accuracy": s, "dev/accuracy": s}}

    recs = {lr: [rec(lr, i, s) for i, s in enumerate(ss)] for lr, ss in by_lr.items()}
    lr, basis, means = select_lr(recs, "accuracy")
    (row,) = select([r for rs in recs.values() for r in rs])
    assert basis == "selection" and row["chosen"] == {"lr": lr}
    assert means == {c["values"]["lr"]: c["select_mean"] for c in row["candidates"]}


def test_the_optimistic_convention_chooses_the_lr_on_best_dev_and_says_so(report_store, capsys, tmp_path):
    """Beside the official protocol, the papers' convention: the lr with the best mean best-dev score, reported on
    best dev, labelled optimistic in the table's notes."""
    r = build(report_store, split="best_dev", select_lr="best_dev")
    cell = _row(r, "lora", "qv", 4.0).row.cells["stsb"]
    means = {lr: np.mean(list(_runs(report_store, "best_dev", task="stsb", method="lora", targets="qv",
                                    lr_ratio=4.0, lr=lr).values())) for lr in (1e-3, 3e-3)}
    best = max(means, key=means.get)
    assert cell.lr == best and cell.basis == "best_dev (optimistic)" and cell.candidates == pytest.approx(means)
    assert cell.summary.mean == pytest.approx(means[best])
    assert any("best_dev (optimistic)" in n for n in r.table.notes)
    assert main(["report", "--store", str(report_store.path), "--out", str(tmp_path / "o"), "--format", "md",
                 "--no-plots", "--split", "best_dev", "--select-lr", "best_dev"]) == 0
    assert r"best\_dev (optimistic)" in (tmp_path / "o" / "report.md").read_text()  # Markdown-escaped
    with pytest.raises(SystemExit):
        main(["report", "--store", str(report_store.path), "--select-lr", "test"])
    assert "invalid choice: 'test'" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["selection", "best_dev"])
def test_split_choice(report_store, split):
    r = build(report_store, split=split)
    s = _row(r, "lora", "qkv", 1.0).scores[0]
    stored = _runs(report_store, split, task="stsb", method="lora", targets="qkv")
    assert s.mean == pytest.approx(100 * np.mean(list(stored.values())))
    assert split.replace("_", " ") in r.table.caption or "selection split" in r.table.caption


def test_plots_are_written_and_decode(written):
    from matplotlib.image import imread

    r, out = written
    names = sorted(p.name for p in r.plots)
    stems = ["curves_rte", "curves_stsb", "score_vs_lambda", "score_vs_memory", "score_vs_params", "score_vs_time"]
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "svg"))
    for p in r.plots:
        if p.suffix == ".png":
            img = imread(p)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        else:
            root = ET.parse(p).getroot()
            assert root.tag.endswith("svg") and len(list(root.iter())) > 50


def test_strings_from_configs_and_data_are_escaped(written, report_store):
    r, out = written
    page = (out / "report.html").read_text()
    for raw in (EVIL, EVIL_TAG, "<b>boom</b>", "<img src=x", "<script>alert"):
        assert raw not in page
    assert html.escape(EVIL_TAG) in page and html.escape("<b>boom</b>") in page
    assert page.count("<script>") == 1  # ours, allowed by its hash in the Content-Security-Policy
    assert "http://" not in page and "https://" not in page and "<link" not in page
    doc = (out / "report.md").read_text()
    assert not re.search(r"(?<!\\)<(img|b|script)", doc) and "\\<img src=x onerror=alert(1)\\>\\&\\_%$#\\{\\}\\~^" in doc
    tex = (out / "table.tex").read_text()
    assert r"m\textless{}img src=x onerror=alert(1)\textgreater{}\&\_\%\$\#\{\}\textasciitilde{}\textasciicircum{}" \
        in tex
    assert tables.tex_escape(r"a_b&c%d$e#f{g}h~i^j\k") == \
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    assert tables.md_escape("a|b*c_<d>") == r"a\|b\*c\_\<d\>"
    rows = list(csv.reader(io.StringIO(tables.csv_comparisons([]) + "=cmd,x\n")))
    assert rows[0][0] == "a" and tables._cell_text("=HYPERLINK(1)") == "'=HYPERLINK(1)" and tables._cell_text("-1.5") == "-1.5"


def test_runs_not_done_are_listed_not_tabled(written):
    r, out = written
    assert [x["status"] for x in r.collection.not_done] == ["failed"]
    key = r.collection.not_done[0]["run_key"]
    assert all(key not in s.run_keys for tr in r.table.rows for s in tr.scores if s is not None)
    doc = (out / "report.md").read_text()
    assert f"| {key[:10]} | failed | rte | lora | qv | RuntimeError: \\<b\\>boom\\</b\\> |" in doc
    page = (out / "report.html").read_text()
    assert f'id="run-{key}"' in page and "1 failed" in page
    # every run of every cell has its record in the page
    for tr in r.table.rows:
        for s in tr.scores:
            for k in s.run_keys if s else ():
                assert f'<details id="run-{k}">' in page and f'href="#run-{k}"' in page


def test_csv_has_the_table_numbers(written):
    r, out = written
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(rows) == len(r.table.rows)
    for line, tr in zip(rows, r.table.rows, strict=True):
        for j, task in enumerate(r.table.tasks):
            s = tr.scores[j]
            metric = r.collection.metrics[task]
            if s is None:
                assert line[f"{task}_{metric}_x100_mean"] == ""
            else:
                assert float(line[f"{task}_{metric}_x100_mean"]) == s.mean and int(line[f"{task}_n"]) == s.n
                assert float(line[f"{task}_{metric}_x100_ci95_low"]) == pytest.approx(s.ci_low)


def test_filters_and_metric_choice(report_store):
    r = build(report_store, tasks=["rte"], methods=["lora"])
    assert r.table.tasks == ["rte"] and {tr.row.fields["method"] for tr in r.table.rows} == {"lora"}
    r = build(report_store, metrics={"stsb": "spearman"}, tasks=["stsb"])
    assert r.table.task_headers == ["STS-B (Spearman ρ)"]
    s = _row(r, "full", "qv", 1.0).scores[0]
    stored = [x["scores"]["dev/spearman"] for x in report_store.runs("done")
              if x["config"]["task"] == "stsb" and x["config"]["method"] == "full"]
    assert s.mean == pytest.approx(100 * np.mean(stored))
    with pytest.raises(ConfigError, match="has no dev/f1 score.*It has: pearson, spearman"):
        build(report_store, metrics={"stsb": "f1"})
    with pytest.raises(ConfigError, match="Did you mean 'rte'"):
        build(report_store, tasks=["rtee"])
    assert build(report_store, tags={"suite": EVIL_TAG}).table.rows[0].scores[0].n == 1
    assert parse_formats("md, tex,CSV") == ["md", "latex", "csv"]
    with pytest.raises(ConfigError, match="unknown report format 'pdf'"):
        parse_formats("md,pdf")


def test_cli_report_writes_files_and_prints_the_table(report_store, tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["report", "--store", str(report_store.path), "--out", str(out), "--format", "md,csv", "--no-plots",
                 "--compare", "method=lora,targets=qv,lambda=4,lr=0.003", "method=lora,targets=qkv"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.splitlines()[0] == "| Method | Targets | Rank | λ | LR | STS-B (Pearson r) | RTE (Acc.) | Avg. | Params |"
    assert sorted(p.name for p in out.iterdir()) == ["comparisons.csv", "report.md", "table.csv"]
    rows = list(csv.reader(open(out / "comparisons.csv")))
    assert [r[2] for r in rows] == ["task", "stsb", "rte", POOLED]  # header, each task, pooled over tasks
    assert all(float(r[7]) <= float(r[5]) <= float(r[8]) for r in rows[1:-1])  # the CI holds the mean difference
    # no cell of these tiny runs learned: the pooled line averages none of them and says so
    assert rows[-1][3] == "0" and rows[-1][-1].endswith("excludes stsb, rte (a cell did not learn)")


def test_pooled_comparison_is_the_per_seed_mean_over_tasks(report_store, monkeypatch):
    """Pooled over tasks: per seed, the mean of the task scores (the table's Avg.), paired by seed (every cell taken
    as learned: the tiny runs' did-not-learn cells are left out of a pooled line, tests/test_learned.py)."""
    monkeypatch.setattr("efficientft.report.collect.cell_learned", lambda *a: True)
    r = build(report_store, pairs=[("method=full,targets=qv", "method=lora,targets=qkv")])
    pooled = r.comparisons[-1].result
    per = {}
    for label, spec in (("a", dict(method="full", targets="qv")), ("b", dict(method="lora", targets="qkv"))):
        by_task = [_runs(report_store, task=t, **spec) for t in ("stsb", "rte")]
        per[label] = np.array([np.mean([s[seed] for s in by_task]) for seed in (0, 1, 2)])
    assert pooled.n == 3 and pooled.seeds == (0, 1, 2)
    assert pooled.mean_diff == pytest.approx((per["a"] - per["b"]).mean(), rel=1e-12)
    assert pooled.p_value == pytest.approx(sps.ttest_rel(per["a"], per["b"]).pvalue, rel=1e-9)


def test_cli_report_errors(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no results store at" in capsys.readouterr().err
    Store(tmp_path / "empty.sqlite")
    assert main(["report", "--store", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "o")]) == 2
    assert "has no runs" in capsys.readouterr().err
    assert main(["report", "--store", str(tmp_path / "empty.sqlite"), "--format", "pdf"]) == 2
    assert "accepted: md, html, latex, csv" in capsys.readouterr().err


def _synthetic(store, method, lr, entry, score, method_args=None, suite="catalog"):
    from efficientft.config import RunConfig

    cfg = resolve(RunConfig(task="sst2", method=method, lr=lr, steps=10, method_args=method_args or {}))
    store.start(run_key(cfg), cfg.to_dict(), {}, {"suite": suite, "entry": entry, "label": method}, "dev/accuracy")
    store.finish(run_key(cfg), "done", {"dev/accuracy": score}, {"trainable_params": 100}, main_score=score)


def test_one_suite_keeps_its_order_and_method_arguments_are_not_shared(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    _synthetic(store, "full", 1e-4, 0, 0.80)
    _synthetic(store, "sift", 2e-3, 1, 0.79, {"sparse_rate": 0.02})
    _synthetic(store, "adalora", 1e-2, 2, 0.82, {"rank": 8, "tinit": 0.2})
    _synthetic(store, "adalora", 1e-3, 2, 0.51, {"rank": 8, "tinit": 0.2})
    rep = build(store)
    assert [(tr.row.fields["method"], tr.row.fields["lr"]) for tr in rep.table.rows] == [
        ("full", 1e-4), ("sift", 2e-3), ("adalora", 1e-3), ("adalora", 1e-2)]  # suite order, then by lr
    notes = "\n".join(rep.table.notes)
    shared = next(n for n in rep.table.notes if n.startswith("Shared settings"))
    assert "sparse_rate" not in shared and "tinit" not in shared and "steps=10" in shared
    assert "sift settings: select_batches=1, sparse_rate=0.02." in notes
    assert "adalora settings:" in notes and "tinit=0.2" in notes

    _synthetic(store, "lora", 1e-3, 0, 0.81, {"rank": 8}, suite="other")  # two suites: the usual sort
    assert [tr.row.fields["method"] for tr in build(store).table.rows] == ["adalora", "adalora", "full", "lora",
                                                                         "sift"]


def test_cost_per_configuration_and_compute_in_the_store(rep, report_store):
    """Per row: the runs in its cells, the median of their median steps, the largest peak memory, the median and
    the sum of their wall times; for the store: every run, whatever its status (the failed run included)."""
    from efficientft.report.build import markdown_document

    everything = report_store.runs()
    for c, tr in zip(rep.costs, rep.table.rows, strict=True):
        runs = [r for cell in tr.row.cells.values() for r in cell.runs]
        assert c.label == tr.row.label and c.runs == len(runs) > 0
        assert c.median_step_s == pytest.approx(np.median([r["cost"]["median_step_s"] for r in runs]))
        assert c.peak_memory_mb == pytest.approx(max(r["cost"]["peak_memory_mb"] for r in runs))
        assert c.wall_s == pytest.approx(sum(r["cost"]["wall_s"] for r in runs))
        assert c.wall_per_run_s == pytest.approx(np.median([r["cost"]["wall_s"] for r in runs]))
        assert c.tokens_per_s == pytest.approx(np.median([r["cost"]["tokens_per_s"] for r in runs]))
        assert c.mfu == pytest.approx(np.median([r["cost"]["mfu"] for r in runs]))
    s = rep.spent
    assert s.runs == len(everything) and s.by_status == {"done": len(everything) - 1, "failed": 1}
    assert s.wall_s == pytest.approx(sum((r["cost"] or {}).get("wall_s", 0) for r in everything))
    assert s.steps == sum((r["cost"] or {}).get("total_steps", 0) for r in everything)
    doc = markdown_document(rep)
    assert f"{len(everything)} runs ({len(everything) - 1} done, 1 failed)" in doc
    assert "| Configuration | Runs | Params | Median step (s) | Peak memory (MB) |" in doc
    assert "| Wall, all runs (h) | Tokens/s | MFU (%) |" in doc


def test_plot_error_bars_are_95_percent_confidence_intervals(rep, report_store):
    """The plots' bars (score vs λ, vs cost) are the 95 % t interval over seeds, not the standard deviation; the
    average's is over each seed's mean over the tasks."""
    from efficientft.report.plots import _targets

    targets = {key: f for key, _title, f in _targets(rep.collection)}
    row = _row(rep, "lora", "qv", 4.0, 3e-3).row
    per_task = {}
    for task in ("stsb", "rte"):
        x = np.array([v for _, v in sorted(_runs(report_store, task=task, method="lora", targets="qv", lr_ratio=4.0,
                                                  lr=3e-3).items())])
        per_task[task] = x
        mean, half = targets[task](row)
        assert mean == pytest.approx(100 * x.mean())
        want = 100 * sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        assert half == pytest.approx(want) and (want == 0 or half != pytest.approx(100 * x.std(ddof=1)))
    per_seed = (per_task["stsb"] + per_task["rte"]) / 2
    _, half = targets["avg"](row)
    assert half == pytest.approx(100 * sps.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3))


def test_a_setting_of_one_task_only_is_that_tasks_protocol_not_a_row(tmp_path):
    """A suite's per_task subsample (SST-2's max_train, no value on the other tasks) is a task's protocol: one
    row with a cell per task, the setting listed per task. It used to split the configuration into two rows, one
    holding only SST-2 (a setting that only some *methods* have is still theirs)."""
    from efficientft.config import RunConfig

    store = Store(tmp_path / "s.sqlite")
    for task, metric, extra in (("sst2", "accuracy", {"max_train": 8000}), ("cola", "mcc", {})):
        for seed in (0, 1, 2):
            cfg = resolve(RunConfig(task=task, method="lora", targets="qv", lr=2e-3, steps=10, seed=seed, **extra))
            store.start(run_key(cfg), cfg.to_dict(), {}, {"suite": "s", "entry": 0}, f"dev/{metric}")
            store.finish(run_key(cfg), "done", {f"dev/{metric}": 0.5 + seed / 10}, {"trainable_params": 10},
                         main_score=0.5)
    rep = build(store)
    assert len(rep.table.rows) == 1 and set(rep.table.rows[0].row.cells) == {"sst2", "cola"}
    assert rep.collection.per_task["max_train"] == {"sst2": 8000, "cola": None}
    assert "max_train" not in rep.collection.label_fields


def test_ci_option_puts_the_95_percent_interval_in_the_markdown_cells(report_store):
    r = build(report_store, ci=True)
    assert "[95 % t confidence interval]" in r.table.caption
    tr = _row(r, "lora", "qkv", 1.0)
    x = np.array([v for _, v in sorted(_runs(report_store, task="stsb", method="lora", targets="qkv").items())])
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    line = r.markdown_table().splitlines()[2 + r.table.rows.index(tr)]
    cell = [c.strip() for c in line.strip("|").split("|")][len(r.table.label_headers)]
    want = f"{100 * x.mean():.1f} ± {100 * x.std(ddof=1):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert cell.replace("**", "").replace("<u>", "").replace("</u>", "").replace(" ✗", "") == want
    assert "[" not in build(report_store).markdown_table().splitlines()[2 + r.table.rows.index(tr)]


def test_csv_with_a_named_selection_split_and_an_empty_cell(report_store):
    """--select-lr ON names the split (a string, not True): the CSV of a table with an empty cell (λ=2 has no RTE)
    used to fail with a TypeError while padding that cell."""
    for on in ("selection", "best_dev"):
        r = build(report_store, select_lr=on)
        lines = tables.csv_table(r.table, r.collection).splitlines()
        assert len({len(line.split(",")) for line in lines}) == 1 and len(lines) == len(r.table.rows) + 1


def test_step_times_measured_while_sharing_the_cpu_are_marked_with_the_share(tmp_path):
    """A run that had half its core (a study beside a test suite) steps about twice as slowly: the cost table
    shows each configuration's median CPU share and marks its step time under 80 %; the strategy analysis names
    it beside the step-time saving. Records from before the field existed say nothing."""
    from efficientft.config import RunConfig
    from efficientft.report.strategy import analyse

    store = Store(tmp_path / "s.sqlite")
    for method, targets, shares in (("lora", "qkv", (0.97, 0.99, 0.5)), ("lora", "qv", (0.45, 0.5, 0.98)),
                                    ("full", "qkv", (None, None, None))):
        for seed, share in enumerate(shares):
            cfg = resolve(RunConfig(task="sst2", method=method, targets=targets, lr=1e-3, steps=10, seed=seed))
            store.start(run_key(cfg), cfg.to_dict(), {}, {"suite": "s"}, "dev/accuracy")
            cost = {"median_step_s": 0.2 / (share or 1.0)} | ({} if share is None else {"cpu_share": share})
            store.finish(run_key(cfg), "done", {"dev/accuracy": 0.8 + seed / 100}, cost, {}, main_score=0.8)
    rep = build(store)
    by = {c.label: c for c in rep.costs}
    share = {" ".join(label.split()[:2]): (round(c.cpu_share, 2) if c.cpu_share == c.cpu_share else None,
                                           c.shared_cpu) for label, c in by.items()}
    assert share == {"lora qkv": (0.97, False), "lora qv": (0.5, True), "full qkv": (None, False)}, share
    doc = markdown_document(rep)
    rows = {" ".join(line.split("|")[1].split()[:2]): line for line in doc.splitlines()
            if line.startswith(("| lora", "| full")) and " MB" not in line and "⚠ mixed" not in line}
    qv = [x for x in rows if x.startswith("lora qv")]
    assert qv and tables.SHARED_CPU in rows[qv[0]] and rows[qv[0]].rstrip(" |").endswith("50")
    assert all(tables.SHARED_CPU not in rows[x] for x in rows if not x.startswith("lora qv"))
    (effect,) = analyse(rep.collection).effects
    assert effect.shared_cpu and effect.step_text.endswith("(CPU shared)")


def test_a_configuration_whose_runs_mix_fresh_and_reused_processes_is_flagged(tmp_path):
    """Peak memory of a run that was not the first in its process may be an earlier run's: the cost table marks a
    configuration whose runs mix the two modes (records that predate ``fresh_process`` say nothing)."""
    from efficientft.config import RunConfig

    store = Store(tmp_path / "s.sqlite")
    for method, fresh in (("lora", (True, True, False)), ("full", (True, True, True)), ("dora", (None, None, False))):
        for seed, f in enumerate(fresh):
            cfg = resolve(RunConfig(task="sst2", method=method, lr=1e-3, steps=10, seed=seed))
            store.start(run_key(cfg), cfg.to_dict(), {}, {"suite": "s"}, "dev/accuracy")
            details = {} if f is None else {"fresh_process": f}
            store.finish(run_key(cfg), "done", {"dev/accuracy": 0.5}, {"peak_memory_mb": 100.0 + seed}, details,
                         main_score=0.5)
    rep = build(store)
    flagged = {c.label.split()[0]: c.mixed_processes for c in rep.costs}
    assert flagged == {"lora": True, "full": False, "dora": False}, flagged
    doc = markdown_document(rep)
    lines = {line.split("|")[1].split()[0]: line for line in doc.splitlines() if line.startswith("| ") and "MB" not in line}
    assert "| 102" + tables.MIXED_PROCESSES + " |" in lines["lora"] and tables.MIXED_PROCESSES not in lines["full"]
