"""Reports, comparison and history pages in headless Chromium: no console errors, plots drawn.

Also checks every ``report.html`` under ``$CHARBENCH_REPORTS_DIR`` (set by ``.ci/run`` to
the folder where the quick presets' runs were written).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from charbench.compare import compare_runs
from charbench.compare_page import render_comparison
from charbench.history import render_history
from charbench.report import render_run
from charbench.sweep import expand

from .chromium import Chromium, find_chromium, plot_status
from .fakeruns import make_run
from .layout import WIDTHS, look

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not on PATH (apt-get install chromium, or set CHARBENCH_CHROMIUM); CI installs it"),
]

XSS = "<script>alert(1)</script>"
SPREAD = [10.0, 12.0, 8.0]


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    with Chromium(timeout_s=60.0) as b:
        yield b


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    pts = expand({"dtype": ["fp16", "fp32"], "size": [256, 512], "seed": [0, 1, 2]})

    def measure(scale: float):
        def m(p: dict[str, Any]) -> dict[str, Any]:
            e = scale * SPREAD[p["seed"]] * p["size"] / 256
            return {"energy_j": e, "mean_power_w": 100.0 * scale, "time_s": e / 100.0, "tflops_per_s": 40.0 / scale}
        return m

    base = make_run(root, "gemm-power", pts, measure(1.0), label=XSS, meta={"pr": XSS}, now=dt.datetime(2026, 1, 1, 9))
    cand = make_run(root, "gemm-power", pts, measure(1.3), label="cand", now=dt.datetime(2026, 1, 2, 9))
    make_run(root, "serve-sweep", expand({"rate_per_s": [1.0, 2.0]}), lambda p: {"ttft_p99_ms": 10 * p["rate_per_s"], "energy_per_token_j": 0.2},
             label="serve", status="failed", failures=[{"rate_per_s": 8.0}], now=dt.datetime(2026, 1, 3, 9))
    serve = next((root / "serve-sweep").iterdir())
    out = {"report": render_run(base), "report_cand": render_run(cand), "report_serve": render_run(serve)}
    cmp = compare_runs(base, cand)
    assert cmp.regressions  # the page shows a regression, with its figures
    out["compare"] = render_comparison([base, cand], root / "compare.html", comparisons=[cmp])
    out["history"] = render_history(root)
    return out


def _check(browser: Chromium, page: Path, min_plots: int = 1) -> str:
    dom, errors = browser.render(page)
    assert errors == [], f"{page}: console errors {errors}"
    plots = plot_status(dom)
    assert len(plots) >= min_plots, f"{page}: expected at least {min_plots} div.plot, found {len(plots)}"
    undrawn = [p["id"] for p in plots if not p["drawn"]]
    assert not undrawn, f"{page}: div.plot without svg.main-svg after rendering: {undrawn}"
    return dom


@pytest.mark.parametrize("name", ["report", "compare", "history"])
def test_page_renders_without_errors(browser: Chromium, pages: dict[str, Path], name: str) -> None:
    dom = _check(browser, pages[name])
    # the label is text on the page, never markup
    if name in ("report", "compare", "history"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
        assert XSS not in dom


@pytest.mark.parametrize("name", ["report", "report_serve", "compare", "history"])
def test_page_holds_its_layout_at_1280_and_1920(browser: Chromium, pages: dict[str, Path], name: str) -> None:
    """No overflow, no figure over another or over a heading (before and after a resize), legend colours, no console errors."""
    page = pages[name]
    problems = look(browser, page, shots=page.parent / "screenshots", widths=WIDTHS)
    assert problems == [], "\n".join(problems)
    assert sorted(p.name for p in (page.parent / "screenshots").glob(f"{page.stem}-*.png")) == [f"{page.stem}-1280.png", f"{page.stem}-1920.png"]


def test_layout_check_fails_on_the_old_layout(browser: Chromium, tmp_path: Path) -> None:
    """The old layout: a 770 px figure in a div squeezed to 360 px, a table wider than its card, plotly's colour cycling."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from charbench.pages import plotly_js

    fig = make_subplots(rows=1, cols=2)
    for i in range(3):
        for col in (1, 2):  # one legend entry per series, drawn in both panels without a colour
            fig.add_trace(go.Scatter(x=[0, 1], y=[i, i + 1], name=f"s{i}", legendgroup=f"s{i}", showlegend=col == 1), row=1, col=col)
    fig.update_layout(height=770)
    wide = "<table><tr>" + "".join(f"<td style='white-space:nowrap'>column number {i} of a wide table</td>" for i in range(40)) + "</tr></table>"
    bad = tmp_path / "old.html"
    bad.write_text(f"<html><head><script>{plotly_js()}</script></head><body><section><h2>one</h2>"
                   f"<div class='plot' id='p' style='height:360px'></div></section><section><h2>two</h2>{wide}</section>"
                   f"<script>var f={fig.to_json()};Plotly.newPlot('p',f.data,f.layout);</script></body></html>")
    problems = "\n".join(look(browser, bad, widths=(1280,)))
    assert "old.html: 1280 px: page is " in problems
    assert "old.html: 1280 px: overflow: table right edge at " in problems
    assert 'old.html: 1280 px: div#p.plot.js-plotly-plot covers heading "two"' in problems
    assert 'old.html: 1280 px: div#p.plot.js-plotly-plot: trace "s0" drawn in ' in problems and "a colour in no legend entry" in problems


def test_helper_reports_errors_and_undrawn_plots(browser: Chromium, tmp_path: Path) -> None:
    # the checks above can fail: a broken page is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><div class="plot" id="p1"></div><script>console.error("boom"); nope();</script></body></html>')
    dom, errors = browser.render(bad, settle_s=0.5)
    assert any("boom" in e for e in errors) and any("nope" in e for e in errors)
    assert plot_status(dom) == [{"id": "p1", "drawn": False}]


def _ci_reports() -> list[Path]:
    """Every page under CHARBENCH_REPORTS_DIR: the runs' report.html, the comparison and the history index."""
    d = os.environ.get("CHARBENCH_REPORTS_DIR")
    return sorted(p for p in Path(d).rglob("*.html") if "screenshots" not in p.parts) if d else []


@pytest.mark.skipif(not os.environ.get("CHARBENCH_REPORTS_DIR"), reason="CHARBENCH_REPORTS_DIR not set (.ci/run sets it to the quick presets' runs)")
def test_ci_reports_render_without_errors(browser: Chromium) -> None:
    reports = _ci_reports()
    assert reports, f"no report.html under CHARBENCH_REPORTS_DIR={os.environ.get('CHARBENCH_REPORTS_DIR')}"
    names = {p.name for p in reports}
    assert {"report.html", "index.html", "compare.html"} <= names, f"CI pages missing: {sorted({'report.html', 'index.html', 'compare.html'} - names)}"
    failures = []
    for page in reports:
        try:
            _check(browser, page, min_plots=0)
        except AssertionError as exc:
            failures.append(str(exc))
        # screenshots stay in the run folder (CI keeps the reports folder as an artifact)
        failures += look(browser, page, shots=page.parent / "screenshots")
    assert not failures, "\n".join(failures)
