"""The HTML report in a real headless Chromium: it loads without console errors, its tables and images are there,
sorting works, a run's provenance opens from a link, and a screenshot is taken. Chromium missing is a failure."""

from __future__ import annotations

import pytest

from tests.chromium import Browser


@pytest.fixture
def page(report_written):
    rep, out = report_written
    return rep, out / "report.html"


def test_report_in_headless_chromium(page, tmp_path):
    rep, path = page
    with Browser() as b:
        b.open(path.as_uri())
        assert b.errors() == []
        ev = b.evaluate
        assert ev("document.title") == "EfficientFT report"
        assert ev("document.querySelectorAll('#main-table tbody tr').length") == len(rep.table.rows)
        assert ev("document.querySelectorAll('#comparisons tbody tr').length") == len(rep.comparisons)
        assert ev("document.querySelectorAll('#costs tbody tr').length") == len(rep.table.rows) == len(rep.costs)
        assert f"{rep.spent.runs} runs" in ev("document.getElementById('costs').nextElementSibling.textContent")
        n_runs = sum(len(s.run_keys) for tr in rep.table.rows for s in tr.scores if s) + 1  # + the failed run
        assert ev("document.querySelectorAll('#runs tbody tr').length") == n_runs
        assert ev("document.querySelectorAll('details[id^=run-]').length") == n_runs
        imgs = ev("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(imgs) == 6 and all(c and w > 200 and h > 100 for c, w, h in imgs), imgs
        # the injected strings are text on the page, never elements
        assert ev("document.querySelectorAll('script').length") == 1
        assert ev("document.querySelectorAll('img[onerror], b').length") == 0
        assert ev("document.body.textContent.includes('<script>alert(1)</script>')")

        # sort by the STS-B column (the first score column): ascending, then descending
        col = len(rep.table.label_headers)
        read = (f"Array.from(document.querySelectorAll('#main-table tbody tr')).map("
                f"r => r.cells[{col}].getAttribute('data-sort'))")
        ev(f"document.querySelectorAll('#main-table thead th')[{col}].click()")
        up = [float(v) for v in ev(read)]
        assert up == sorted(up) and len(up) == len(rep.table.rows)
        assert ev(f"document.querySelectorAll('#main-table thead th')[{col}].getAttribute('aria-sort')") == "ascending"
        ev(f"document.querySelectorAll('#main-table thead th')[{col}].click()")
        assert [float(v) for v in ev(read)] == sorted(up, reverse=True)
        # a text column sorts too
        ev("document.querySelectorAll('#main-table thead th')[0].click()")
        methods = ev("Array.from(document.querySelectorAll('#main-table tbody tr')).map(r => r.cells[0].textContent)")
        assert methods == sorted(methods)

        # a run's record opens from its link: provenance reachable
        key = rep.table.rows[0].scores[0].run_keys[0]
        ev(f"document.querySelector('a[href=\"#run-{key}\"]').click()")
        assert ev(f"document.getElementById('run-{key}').open") is True
        assert ev(f"document.getElementById('run-{key}').innerText.includes('sha256')")

        shot = b.screenshot(tmp_path / "report.png")
        assert b.errors() == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    from matplotlib.image import imread

    h, w = imread(shot).shape[:2]
    assert 1300 <= w <= 1400 and h > 2000  # the whole page, not just the 1000-pixel viewport


def test_the_browser_check_sees_errors(tmp_path):
    """The harness itself: console errors, exceptions and a CSP-blocked inline script are reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><meta http-equiv='Content-Security-Policy' "
                   "content=\"script-src 'sha256-AAAA'\"></head><body><script>console.log(1)</script>"
                   "</body></html>")
    with Browser() as b:
        b.open(bad.as_uri())
        assert any("Content Security Policy" in e for e in b.errors()), b.errors()
    err = tmp_path / "err.html"
    err.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); undefinedFn();</script></body></html>")
    with Browser() as b:
        b.open(err.as_uri())
        errs = b.errors()
        assert any("console: boom" in e for e in errs) and any("undefinedFn" in e for e in errs), errs


def test_leaderboard_in_headless_chromium(tmp_path):
    """``eft report --leaderboard``'s HTML: no console error, a table per task with the tied band shaded, the ranks,
    and every plot (critical-difference diagram, Pareto plots) loaded as an image."""
    from efficientft import api
    from tests.board_runs import fill

    fill(tmp_path / "eft.sqlite")
    lb = api.leaderboard(tmp_path / "eft.sqlite", out=tmp_path / "lb")
    with Browser() as b:
        b.open((tmp_path / "lb" / "leaderboard.html").as_uri())
        assert b.errors() == []
        ev = b.evaluate
        assert ev("document.title") == "EfficientFT leaderboard"
        assert ev("document.querySelectorAll('table[id^=task-]').length") == len(lb.tasks) == 3
        bands = ev("Array.from(document.querySelectorAll('#task-1 tbody tr')).map(r => r.className)")
        assert bands == ["best", "tied", "tied", "no"]  # STS-B: DoRA, both LoRA entries tied, BitFit not
        shaded = ev("getComputedStyle(document.querySelector('#task-1 tr.tied td')).backgroundColor")
        assert shaded == "rgb(238, 247, 238)"
        assert ev("document.body.textContent.includes('Friedman test: χ² = 6.310, p = 0.097')")
        imgs = ev("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        assert sorted(a for a, _c, _w in imgs) == sorted(p.stem for p in lb.plots) and len(imgs) == 5
        assert all(c and w > 300 for _a, c, w in imgs), imgs
        # sorting by the score column puts the best last when ascending
        ev("document.querySelectorAll('#task-1 thead th')[2].click()")
        assert ev("document.querySelector('#task-1 tbody tr:last-child').className") == "best"
        assert b.errors() == []
