"""The strategy per method as a two-factor experiment (report/strategy.py, issue 27 study 2), on hand-made stores:
each arm's effect against the method's QKV λ=1 arm (paired by seed, tasks as blocks) checked against an independent
OLS fit, Holm over the methods, the verdict lines, a task that did not learn left out and named, the tuned λ shown,
the method × strategy interaction found where the effects differ in sign and not where they are equal, the cost
ratios, and the section in `eft report`'s Markdown."""

from __future__ import annotations

import math

import pytest

from efficientft.cli import main
from efficientft.report.build import build
from efficientft.store import Store

smf = pytest.importorskip("statsmodels.formula.api")
sps = pytest.importorskip("scipy.stats")
pd = pytest.importorskip("pandas")

SEEDS = (1, 2, 3)
METRIC = {"sst2": "accuracy", "stsb": "pearson", "rte": "accuracy"}
BASELINE = {"sst2": 0.509, "stsb": 0.0, "rte": 0.527}
NOISE = {1: 0.004, 2: -0.003, 3: 0.001}  # per seed, shared by a method's arms on a task (the pairing's point)
JITTER = {1: 0.002, 2: -0.001, 3: 0.0}  # per seed, an arm's own noise
BASE = {"sst2": 0.85, "stsb": 0.80, "rte": 0.62}
COST = {"qkv": (110_000, 0.060), "qv": (74_000, 0.050)}  # trainable params, median step s


def _fill(path, effects: dict[str, float], tasks=("sst2", "stsb"), not_learned: tuple = ()) -> Store:
    """Per method: QKV λ=1, QV λ=1 (QKV + effect + jitter) and QV λ tuned (QKV + effect/2 − jitter, λ 2 on sst2 and
    4 on stsb), each the seeded re-run of a search's choice; ``not_learned``: (method, task) whose QKV arm sits at
    the trivial baseline."""
    store = Store(path)
    n = 0
    for method, eff in effects.items():
        for task in tasks:
            m = METRIC[task]
            for arm, (targets, lam, delta, sign) in {"qkv": ("qkv", 1.0, 0.0, 0), "qv": ("qv", 1.0, eff, 1),
                                                     "tuned": ("qv", {"sst2": 2.0, "stsb": 4.0, "rte": 2.0}[task],
                                                               eff / 2, -1)}.items():
                params = {"lr": 1e-3} if arm != "tuned" else {"lr": 1e-3, "lr_ratio": lam}
                for seed in SEEDS:
                    v = BASE[task] + NOISE[seed] + delta + sign * JITTER[seed]
                    if (method, task) in not_learned and arm == "qkv":
                        v = BASELINE[task] + (0.001 if seed == 1 else 0.0)
                    n += 1
                    cfg = {"task": task, "method": method, "targets": targets, "lr_ratio": lam, "lr": 1e-3,
                           "seed": seed, "data_seed": 0, "model": "tiny", "steps": 100, "method_args": {"rank": 8}}
                    store.start(f"k{n:04d}", cfg, {}, {"search_final": "strategy", "params": params, "label": arm},
                                f"dev/{m}")
                    tp, step = COST[targets]
                    store.finish(f"k{n:04d}", "done", scores={f"dev/{m}": v},
                                 cost={"trainable_params": tp, "median_step_s": step, "total_steps": 100},
                                 details={"baselines": {f"dev/{m}": BASELINE[task]}})
    return store


def _effects(rep):
    return {(e.method, e.arm): e for e in rep.strategy.effects}


def test_each_arms_effect_matches_an_independent_ols_fit_and_gets_its_verdict(tmp_path):
    store = _fill(tmp_path / "s.sqlite", {"lora": 0.02, "dora": 0.0, "ia3": -0.03})
    rep = build(store)
    eff = _effects(rep)
    assert set(eff) == {(m, a) for m in ("lora", "dora", "ia3") for a in ("QV λ=1", "QV λ=tuned")}
    for (method, arm), e in eff.items():
        # by hand: the paired differences ×100, regressed on the task (sum coding): the intercept is the pooled
        # effect, its standard error the within-task spread's
        rows = []
        for task in ("sst2", "stsb"):
            d = {s: NOISE[s] for s in SEEDS}
            for s in SEEDS:
                a = {"QV λ=1": (1, {"lora": 0.02, "dora": 0.0, "ia3": -0.03}[method]),
                     "QV λ=tuned": (-1, {"lora": 0.02, "dora": 0.0, "ia3": -0.03}[method] / 2)}[arm]
                rows.append({"task": task, "d": 100 * (a[1] + a[0] * JITTER[s] + d[s] - d[s])})
        fit = smf.ols("d ~ C(task, Sum)", data=pd.DataFrame(rows)).fit()
        assert e.n == 6 and e.tasks == ("sst2", "stsb")
        assert e.diff == pytest.approx(fit.params["Intercept"], abs=1e-9)
        lo, hi = fit.conf_int().loc["Intercept"]
        assert (e.ci_low, e.ci_high) == pytest.approx((lo, hi), abs=1e-9)
        assert e.p_value == pytest.approx(fit.pvalues["Intercept"], rel=1e-6)
        assert e.params_ratio == pytest.approx(74_000 / 110_000) and e.step_ratio == pytest.approx(0.05 / 0.06)
        # the smallest effect this design detects with 80 % power: at the fit's standard error and residual df,
        # the effect at which a two-sided t-test rejects 80 % of the time (noncentral t, by hand)
        se, df = fit.bse["Intercept"], fit.df_resid
        crit = sps.t.ppf(0.975, df)
        power = sps.nct.sf(crit, df, e.detectable / se) + sps.nct.cdf(-crit, df, e.detectable / se)
        assert power == pytest.approx(0.8, abs=1e-6)
    # Holm over the three methods, per arm
    for arm in ("QV λ=1", "QV λ=tuned"):
        ps = sorted((eff[(m, arm)].p_value, m) for m in ("lora", "dora", "ia3"))
        running = 0.0
        for rank, (p, m) in enumerate(ps):
            running = max(running, min(1.0, (3 - rank) * p))
            assert eff[(m, arm)].p_holm == pytest.approx(running)
    assert eff[("lora", "QV λ=1")].verdict == "helps" and eff[("ia3", "QV λ=1")].verdict == "hurts"
    assert eff[("dora", "QV λ=1")].verdict == "no detectable effect at n = 6"
    assert eff[("lora", "QV λ=tuned")].lambdas == {"sst2": 2.0, "stsb": 4.0}
    assert eff[("lora", "QV λ=1")].per_task == pytest.approx({"sst2": 2.0 + 100 * 1e-3 / 3, "stsb": 2.0 + 100 * 1e-3 / 3})
    # opposite signs: the effect depends on the method; the F test is statsmodels' type-2 ANOVA's on this design
    inter = rep.strategy.interaction()
    assert inter is not None and inter["p"] < 1e-6 and inter["df"] == 4
    frame = pd.DataFrame([{"score": 100 * r["scores"][f"dev/{METRIC[r['task']]}"], "method": r["method"], "task": r["task"],
                           "arm": (r["targets"], r["tags"]["label"])} for r in store.runs()])
    frame["arm"] = frame["arm"].astype(str)
    sm = pytest.importorskip("statsmodels.api")
    table = sm.stats.anova_lm(smf.ols("score ~ C(method) * C(arm) + C(task) + C(method):C(task)", frame).fit(), typ=2)
    assert inter["F"] == pytest.approx(table.loc["C(method):C(arm)", "F"], rel=1e-6)
    assert inter["p"] == pytest.approx(table.loc["C(method):C(arm)", "PR(>F)"], rel=1e-4)
    strat = next(r for r in rep.strategy.anova if r["term"] == "strategy")
    assert strat["F"] == pytest.approx(table.loc["C(arm)", "F"], rel=1e-6)


def test_equal_effects_show_no_interaction(tmp_path):
    rep = build(_fill(tmp_path / "s.sqlite", {"lora": 0.02, "dora": 0.02, "ia3": 0.02}))
    inter = rep.strategy.interaction()
    assert inter["p"] > 0.5
    assert {e.verdict for e in rep.strategy.effects if e.arm == "QV λ=1"} == {"helps"}


def test_a_task_where_an_arm_did_not_learn_is_left_out_and_named(tmp_path):
    store = _fill(tmp_path / "s.sqlite", {"lora": 0.02, "dora": 0.0}, tasks=("sst2", "stsb", "rte"),
                  not_learned=(("dora", "rte"),))
    rep = build(store)
    eff = _effects(rep)
    assert eff[("dora", "QV λ=1")].tasks == ("sst2", "stsb") and eff[("dora", "QV λ=1")].excluded == ("rte",)
    assert eff[("dora", "QV λ=1")].n == 6 and "rte" not in eff[("dora", "QV λ=1")].per_task
    assert eff[("lora", "QV λ=1")].tasks == ("sst2", "stsb", "rte") and eff[("lora", "QV λ=1")].n == 9
    # the ANOVA leaves out dora on rte too: 2 methods × 3 arms × (3 + 2 tasks) ... counted by hand
    assert rep.strategy.n_runs == 3 * 3 * 3 + 3 * 2 * 3


def test_the_report_has_the_section_with_a_line_per_method(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    _fill(path, {"lora": 0.02, "ia3": -0.03})
    out = tmp_path / "rep"
    assert main(["report", "--store", str(path), "--out", str(out), "--format", "md", "--no-plots"]) == 0
    text = (out / "report.md").read_text()
    assert "## The strategy per method (two factors: method × strategy)" in text
    assert "- **lora, QV λ=1**: helps (+2.03 points, 95% CI" in text
    assert "- **ia3, QV λ=1**: hurts (-2.97 points" in text
    assert "trainable parameters -33 %, step time -17 %" in text
    assert "| method × strategy | 2 |" in text  # (2 methods − 1) × (3 arms − 1)
    assert not any("detects ±" in line for line in text.splitlines() if line.startswith("- **"))  # all found one
    # a "no detectable effect" says what the design could have detected
    _fill(tmp_path / "none.sqlite", {"dora": 0.0})
    assert main(["report", "--store", str(tmp_path / "none.sqlite"), "--out", str(out), "--format", "md",
                 "--no-plots"]) == 0
    (line,) = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("- **dora, QV λ=1**")]
    assert "no detectable effect at n = 6" in line and "; this design detects ±" in line, line
    assert "The strategy's effect depends on the method (method × strategy: F =" in text


def test_no_section_without_a_qkv_reference(tmp_path):
    store = _fill(tmp_path / "s.sqlite", {"lora": 0.02})
    assert build(store).strategy is not None
    store2 = Store(tmp_path / "t.sqlite")
    store2.start("k1", {"task": "sst2", "method": "lora", "targets": "qv", "lr_ratio": 1.0, "lr": 1e-3, "seed": 1,
                        "model": "tiny", "steps": 10}, {}, {}, "dev/accuracy")
    store2.finish("k1", "done", scores={"dev/accuracy": 0.8}, cost={})
    assert build(store2).strategy is None
    assert math.isnan(build(store).strategy.effects[0].p_holm) is False
