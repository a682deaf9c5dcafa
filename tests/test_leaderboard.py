"""``eft report --leaderboard`` on a store of hand-made records (tests/board_runs.py): the tied band, Holm's numbers,
ranks with the Friedman test and the critical-difference diagram, the Pareto sets, the metric's direction, the CSV,
tuning and the learned mark, and the README's worked example."""

from __future__ import annotations

import csv
import io
import math
import re
import shlex

import pytest
from scipy import stats as sps

from efficientft import api
from efficientft.cli import main
from efficientft.report.board_output import CSV_HEADERS
from efficientft.store import Store
from efficientft.vocab import higher_is_better
from tests.board_runs import SCORES, SEARCH, fill
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def board_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("board") / "eft.sqlite"
    fill(path)
    return path


@pytest.fixture(scope="module")
def lb(board_store, tmp_path_factory):
    return api.leaderboard(board_store, out=tmp_path_factory.mktemp("board-out"))


def _board(lb, task):
    return next(b for b in lb.tasks if b.task == task)


def _scores(method, targets, task):
    return next(v[task] for (m, t, _lam, _lr), v in SCORES.items() if (m, t) == (method, targets))


def _holm(ps):
    """Holm by hand: sort, multiply the i-th smallest by (m - i), keep the running maximum, cap at 1."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def test_tied_band_and_holm_numbers(lb):
    b = _board(lb, "stsb")
    assert [e.row.fields["method"] for e in b.entries][0] == "dora" and b.entries[0].best
    band = {(e.row.fields["method"], e.row.fields["targets"]): e.tied for e in b.entries}
    # lora qv and lora qkv are within noise of dora: tied; bitfit (0.11 against 0.81) is clearly worse: not tied
    assert band == {("dora", "qv"): True, ("lora", "qv"): True, ("lora", "qkv"): True, ("bitfit", "qv"): False}
    # Holm over the three comparisons with the best, by hand from scipy's paired t-tests (seeds match)
    for task in ("stsb", "rte"):
        b = _board(lb, task)
        best = b.entries[0].row.fields
        others = b.entries[1:]
        raw = [sps.ttest_rel(_scores(e.row.fields["method"], e.row.fields["targets"], task),
                             _scores(best["method"], best["targets"], task)).pvalue for e in others]
        raw = [0.0 if math.isnan(p) else p for p in raw]  # a constant difference: certain
        assert [e.vs_best.p for e in others] == pytest.approx(raw)
        assert [e.vs_best.p_holm for e in others] == pytest.approx(_holm(raw))
        assert all(e.vs_best.kind == "paired" for e in others)
        assert [e.tied for e in others] == [p > 0.05 for p in _holm(raw)]
    # RTE: the Holm step changes the verdict order-dependently: p_holm ≥ raw p, and monotone in the raw order
    rte = _board(lb, "rte").entries[1:]
    assert all(e.vs_best.p_holm >= e.vs_best.p for e in rte)


def test_reference_is_lora_on_the_same_targets(lb):
    b = _board(lb, "rte")
    ref = {e.row.fields["method"] + " " + e.row.fields["targets"]: e.reference for e in b.entries}
    lora_qv = next(e.label for e in b.entries if e.row.fields["method"] == "lora" and e.row.fields["targets"] == "qv")
    assert ref["dora qv"] == ref["bitfit qv"] == lora_qv
    assert ref["lora qv"] is None and ref["lora qkv"] is None  # the reference itself; no other LoRA on qkv
    tests = [e.vs_reference for e in b.entries if e.vs_reference is not None]
    raw = [t.p for t in tests]
    assert len(tests) == 2 and [t.p_holm for t in tests] == pytest.approx(_holm(raw))
    dora = next(e for e in b.entries if e.row.fields["method"] == "dora")
    assert dora.vs_reference.diff == pytest.approx(sum(_scores("dora", "qv", "rte")) / 3
                                                   - sum(_scores("lora", "qv", "rte")) / 3)


def test_average_ranks_friedman_and_cd_diagram(lb):
    tasks = lb.ranks.tasks
    assert tasks == ["sst2", "stsb", "rte"]
    names = [(m, t) for (m, t, _lam, _lr) in SCORES]
    means = {n: [sum(_scores(*n, task)) / 3 for task in tasks] for n in names}
    per_task = [sps.rankdata([-means[n][j] for n in names]) for j in range(len(tasks))]  # 1 = best
    avg = {n: sum(r[i] for r in per_task) / len(tasks) for i, n in enumerate(names)}
    got = {(lb.collection.rows[[r.label for r in lb.collection.rows].index(lab)].fields["method"],
            lb.collection.rows[[r.label for r in lb.collection.rows].index(lab)].fields["targets"]): v
           for lab, v in lb.ranks.mean_rank.items()}
    assert got == pytest.approx(avg)
    assert avg[("dora", "qv")] == 1.5 and avg[("bitfit", "qv")] == 4.0
    expect = sps.friedmanchisquare(*[[r[i] for r in per_task] for i in range(len(names))])
    assert lb.ranks.friedman_p == pytest.approx(expect.pvalue) and lb.ranks.friedman_stat == pytest.approx(
        expect.statistic)
    cd = [p for p in lb.plots if p.name == "critical_difference.png"]
    assert cd and cd[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cd[0].stat().st_size > 10_000
    assert sorted(p.name for p in lb.plots) == ["critical_difference.png", "pareto_median_step_s.png",
                                                "pareto_peak_memory_mb.png", "pareto_tokens_per_s.png",
                                                "pareto_trainable_params.png"]


def test_the_critical_difference_is_demsars_and_the_board_says_when_it_tells_no_two_entries_apart(lb):
    """Nemenyi's CD = q_α √(k(k+1)/6N): q_0.05 for k = 2, 3, 4, 5, 10 is 1.960, 2.344, 2.569, 2.728, 3.164 (Demšar
    2006, Table 5a), and his worked example (4 classifiers, 14 data sets) gives CD = 1.25. Study 3's shape (51
    entries, 2 tasks) gives a CD wider than any spread of average ranks: the board says that no pair is told apart."""
    import math

    from efficientft.report.board_output import ranks_text
    from efficientft.report.leaderboard import critical_difference

    q = [critical_difference(k, 1) / math.sqrt(k * (k + 1) / 6) for k in (2, 3, 4, 5, 10)]
    assert q == pytest.approx([1.960, 2.344, 2.569, 2.728, 3.164], abs=6e-4)
    assert critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)
    assert critical_difference(51, 2) > 50  # more than the largest possible spread of 51 average ranks
    k, n = len(lb.ranks.labels), len(lb.ranks.tasks)
    assert lb.ranks.critical_difference == pytest.approx(critical_difference(k, n))
    line = next(x for x in ranks_text(lb) if x.startswith("Nemenyi critical difference"))
    spread = max(lb.ranks.mean_rank.values()) - min(lb.ranks.mean_rank.values())
    assert f"{critical_difference(k, n):.2f} ranks ({k} entries, {n} tasks)" in line
    assert ("no two entries are told apart" in line) == (critical_difference(k, n) > spread)


def test_fewer_than_two_tasks_or_entries_say_why_no_ranks(board_store):
    one = api.leaderboard(board_store, tasks=["rte"])
    assert one.ranks.why == "Ranks across tasks need at least 2 tasks; this leaderboard has 1."
    assert one.ranks.why in api.leaderboard_markdown(one)
    two = api.leaderboard(board_store, methods=["dora", "bitfit"])
    assert two.ranks.mean_rank and math.isnan(two.ranks.friedman_p)
    assert "The Friedman test needs at least 3 entries" in two.ranks.why_no_test


def test_an_entry_missing_a_task_is_named_not_ranked(tmp_path):
    store = fill(tmp_path / "eft.sqlite")
    cfg = {"task": "stsb", "method": "ia3", "targets": "qv", "lr_ratio": 1.0, "lr": 3e-3, "seed": 0, "data_seed": 0,
           "model": "tiny", "steps": 100, "method_args": {"rank": 8}}
    store.start("extra", cfg, {}, {}, "dev/pearson")
    store.finish("extra", "done", scores={"dev/pearson": 0.5})
    lb = api.leaderboard(store.path)
    assert len(lb.ranks.labels) == 4 and [lab.split()[0] for lab in lb.ranks.unranked] == ["ia3"]
    assert "Not ranked (not scored on every task): ia3 qv" in api.leaderboard_markdown(lb)
    one = next(e for e in _board(lb, "stsb").entries if e.row.fields["method"] == "ia3")
    assert one.tied is None and one.vs_best.kind == "" and math.isnan(one.vs_best.p)  # 1 seed: untested
    assert "| untested | – (no test) |" in api.leaderboard_markdown(lb)


def test_without_the_stats_extra_ranks_say_what_to_install(board_store, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scikit_posthocs", None)  # as if not installed
    lb = api.leaderboard(board_store)
    assert lb.ranks.nemenyi is None and math.isfinite(lb.ranks.friedman_p)
    assert "install the stats extra (pip install 'efficientft[stats]', scikit-posthocs)" in lb.ranks.why_no_test


def test_pareto_sets(lb):
    def names(task, cost):
        return sorted(" ".join(lab.split()[:2]) for lab in _board(lb, task).pareto[cost])

    # SST-2: dora ties lora qv's mean with more parameters (dominated); lora qkv scores less with more parameters
    assert names("sst2", "trainable_params") == ["bitfit qv", "lora qv"]
    assert names("stsb", "trainable_params") == ["bitfit qv", "dora qv", "lora qv"]
    assert names("rte", "trainable_params") == ["bitfit qv", "dora qv", "lora qkv", "lora qv"]
    # tokens/s: more is better (bitfit fastest; lora qkv 19k beats dora 15k with a better RTE score)
    assert names("rte", "tokens_per_s") == ["bitfit qv", "lora qkv", "lora qv"]


def test_learned_and_tuning(lb):
    rte = {e.row.fields["method"]: e for e in _board(lb, "rte").entries if e.row.fields["targets"] == "qv"}
    assert rte["bitfit"].learned is False and rte["lora"].learned is True and rte["dora"].learned is True
    assert all(len(b.entries) == 4 for b in lb.tasks)  # the search's trials are no entries
    t = rte["dora"].tuning
    assert (t.search, t.trials, t.steps, t.tuned) == (SEARCH, 4, 180, {"lr": 3e-3, "rank": 8})
    assert t.text() == "lr=0.003, rank=8 (4 trials, 180 steps)"
    assert rte["lora"].tuning.text() == "lr=0.003 (no search)"
    # ranked across tasks as scored, but the cells that did not learn are named beside the ranks, never silently
    assert [c for c in lb.ranks.not_learned if c[1] == "rte"] == [(rte["bitfit"].row.label, "rte")]
    from efficientft.report.board_output import ranks_text

    assert any(line.startswith("⚠ Ranked as scored, but did not learn") and f"{rte['bitfit'].row.label} on RTE" in line
               for line in ranks_text(lb))


def test_lower_is_better_ranks_the_minimum_first(tmp_path):
    assert not higher_is_better("dev/lm_loss") and higher_is_better("accuracy")
    store = Store(tmp_path / "eft.sqlite")
    losses = {"a": (2.0, 2.1, 2.05), "b": (3.0, 3.1, 3.05), "c": (2.03, 2.12, 2.04)}
    n = 0
    for task in ("wiki", "books"):
        for method, vals in losses.items():
            for seed, v in enumerate(vals):
                n += 1
                cfg = {"task": task, "method": method, "targets": "qv", "lr_ratio": 1.0, "lr": 1e-3, "seed": seed}
                store.start(f"k{n}", cfg, {}, {}, "dev/lm_loss")
                store.finish(f"k{n}", "done", scores={"dev/lm_loss": v + (0.5 if task == "books" else 0)})
    lb = api.leaderboard(store.path)
    for b in lb.tasks:
        assert not b.higher and [e.row.fields["method"] for e in b.entries] == ["a", "c", "b"]
        assert [e.tied for e in b.entries] == [True, True, False]
    assert lb.ranks.labels[0].startswith("a ") and lb.ranks.mean_rank[lb.ranks.labels[-1]] == 3.0
    assert "lower is better; scores as measured" in api.leaderboard_markdown(lb)


def test_csv_columns(lb):
    path = next(f for f in lb.files if f.name == "leaderboard.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert tuple(rows[0]) == CSV_HEADERS and len(rows) == 12
    stsb = [r for r in rows if r["task"] == "stsb"]
    assert [(r["entry"].split()[0], r["best"], r["tied"]) for r in stsb] == [
        ("dora", "True", "True"), ("lora", "False", "True"), ("lora", "False", "True"), ("bitfit", "False", "False")]
    assert float(stsb[0]["mean"]) == pytest.approx(sum(_scores("dora", "qv", "stsb")) / 3)
    assert stsb[0]["trials"] == "4" and stsb[0]["search"] == SEARCH and stsb[0]["trainable_params"] == "160000.0"


def test_cli_bad_input_is_one_line_exit_2(board_store, tmp_path, capsys):
    code = main(["report", "--leaderboard", "--store", str(board_store), "--out", str(tmp_path / "o"),
                 "--reference", "adapterx"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--reference 'adapterx': no entry of that method" in err
    code = main(["report", "--leaderboard", "--store", str(board_store), "--out", str(tmp_path / "o"),
                 "--format", "latex"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "the leaderboard has no latex form; accepted formats: md, html, csv." in err


def _readme_block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- test: {re.escape(marker)} -->\n```{lang}\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no {lang} block marked {marker!r}"
    return m.group(1)


def test_readme_leaderboard_example(tmp_path, monkeypatch, capsys):
    """The README's worked example, run on this file's hand-made store: its command and the output it shows."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    fill(tmp_path / "results" / "eft.sqlite")
    for line in _readme_block("leaderboard", "bash").splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "eft"
        assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    for line in _readme_block("leaderboard-output", "text").splitlines():
        assert line in out.splitlines(), line
    assert sorted(p.name for p in (tmp_path / "results" / "leaderboard").iterdir()) == [
        "leaderboard.csv", "leaderboard.html", "leaderboard.md", "plots"]
