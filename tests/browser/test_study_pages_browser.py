"""The real studies' pages in headless Chromium: gemm-power and serve-sweep reports, their comparison, the history.

Small runs of the two quick-preset studies (gemm-power: the sigma experiment at 32^3 with repeats;
serve-sweep: the fake engine of ``tests/workloads/serving/fakes.py``, two loads of which one is
max throughput) go through the real runner, so the pages have every section the quick presets'
pages have. Each page is checked at 1280 px and 1920 px, before and after a resize (no overflow,
no figure over another or a heading, every trace's colour in its legend, every axis titled, no
console errors), and a full-page screenshot of each is kept next to the page (``screenshots/``).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Iterator

import pytest

from charbench.compare import compare_runs
from charbench.compare_page import render_comparison
from charbench.config import CommonOptions
from charbench.history import render_history
from charbench.settings import RunSettings
from charbench.study import run_study

from .chromium import Chromium, find_chromium
from .layout import WIDTHS, look

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # four real runs and eight page views: ~40 s on 2 quiet cores
    pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not on PATH (apt-get install chromium, or set CHARBENCH_CHROMIUM); CI installs it"),
]


def _fakes():
    path = Path(__file__).resolve().parent.parent / "workloads" / "serving" / "fakes.py"
    spec = importlib.util.spec_from_file_location("charbench_test_serving_fakes_browser", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _gemm(root: Path, label: str) -> Path:
    from charbench.workloads.gemm_power.config import GemmPowerConfig, resolve
    from charbench.workloads.gemm_power.run import GemmPowerStudy

    cfg = resolve(GemmPowerConfig(experiments=["sigma"], size=[32, 32, 32], cpu_duration_s=0.01, repeats=2), "cpu")
    res = run_study(GemmPowerStudy(cfg, "cpu"), CommonOptions(out=root, device="cpu", label=label), RunSettings(sample_interval_s=0.01))
    assert res.report is not None
    return res.run_dir


def _serve(root: Path) -> Path:
    from charbench.workloads.serving.config import ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    fakes = _fakes()
    cfg = ServeSweepConfig(request_rate_rps=[math.inf, 40.0], max_num_seqs=[2, 4], input_len=[8], output_len=[6], num_requests=8,
                           warmup_requests=1, slo_ttft_ms=200.0)
    study = ServeSweepStudy(cfg, target_factory=lambda knobs, device: fakes.FakeTarget(max_num_seqs=knobs["max_num_seqs"]))
    res = run_study(study, CommonOptions(out=root, device="cpu", label="serve"), RunSettings(sample_interval_s=0.01))
    assert res.report is not None
    return res.run_dir


@pytest.fixture(scope="module")
def study_pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study-runs")
    base, cand = _gemm(root, "base"), _gemm(root, "cand")
    serve = _serve(root)
    pages = {"gemm-power report": base / "report.html", "serve-sweep report": serve / "report.html"}
    pages["compare"] = render_comparison([base, cand], root / "compare.html", comparisons=[compare_runs(base, cand)])
    pages["history"] = render_history(root)
    return pages


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    with Chromium(timeout_s=60.0) as b:
        yield b


@pytest.mark.parametrize("name", ["gemm-power report", "serve-sweep report", "compare", "history"])
def test_study_page_holds_its_layout(browser: Chromium, study_pages: dict[str, Path], name: str) -> None:
    page = study_pages[name]
    shots = page.parent / "screenshots"
    problems = look(browser, page, shots=shots, widths=WIDTHS)
    assert problems == [], "\n".join(problems)
    assert sorted(p.name for p in shots.glob(f"{page.stem}-*.png")) == [f"{page.stem}-{w}.png" for w in WIDTHS]


def test_axis_check_fails_on_an_untitled_axis(browser: Chromium, tmp_path: Path) -> None:
    """The axis check can fail: a figure whose y axis has no title is reported."""
    import plotly.graph_objects as go

    from charbench.pages import Section, figure_html, render_page

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name="a"))
    fig.update_xaxes(title_text="x (s)")
    page = tmp_path / "untitled.html"
    page.write_text(render_page("t", [Section("one", figure_html(fig))]))
    problems = "\n".join(look(browser, page, widths=(1280,)))
    assert "untitled.html: 1280 px: div#" in problems and ": axis y has no title" in problems
    assert "axis x has no title" not in problems
