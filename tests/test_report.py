"""Reports: one self-contained offline HTML file, provenance, escaping of every user string."""

from __future__ import annotations

import json
import re
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest

from charbench import report
from charbench.errors import CharbenchError
from charbench.pages import Section, figure_html, plotly_js, render_page, table_html
from charbench.report import RunData, provenance_rows, render_run
from charbench.results import RunStore

EVIL = "<script>alert(1)</script>"
EVIL_TITLE = "</script><script>alert(2)</script>"


class _Scripts(HTMLParser):
    """Collects every <script> element the browser would see, and other live tags."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.srcs: list[str] = []
        self.links: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._in = True
            self.scripts.append("")
            self.srcs += [v or "" for k, v in attrs if k == "src"]
        if tag == "link":
            self.links += [v or "" for k, v in attrs if k == "href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in = False

    def handle_data(self, data: str) -> None:
        if self._in:
            self.scripts[-1] += data


def _parse(html: str) -> _Scripts:
    p = _Scripts()
    p.feed(html)
    return p


def hook_sections(data: RunData) -> list[Section]:
    """Report hook used by the tests: a figure whose title is hostile."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name=EVIL))
    fig.update_layout(title=EVIL_TITLE)
    return [Section(f"Study {EVIL}", figure_html(fig), note=f"note {EVIL}")]


def hook_raises(data: RunData) -> list[Section]:
    raise ValueError("fit <did> not converge")


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> str:
    mod = types.ModuleType("cb_test_hooks")
    mod.hook_sections = hook_sections  # type: ignore[attr-defined]
    mod.hook_raises = hook_raises  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cb_test_hooks", mod)
    return "cb_test_hooks"


def make_run(out: Path, hook: str | None = None) -> RunStore:
    env = {
        "charbench_version": "0.1.0",
        "git_sha": "abcdef0123456789",
        "command_line": ["charbench", "gemm-power", "--label", EVIL],
        "hostname": EVIL,
        "cpu_model": "Test CPU",
        "cpu_cores": 2,
        "meters": [{"meter": "rapl", "usable": False, "what": "CPU energy", "reason": f"permission denied {EVIL}"}],
    }
    store = RunStore.create(out, "gemm-power", label=EVIL, config={"note": EVIL}, env=env, meta={"owner": EVIL, EVIL: "x"}, report_hook=hook)
    store.append_record({
        "point_key": "dtype=fp16", "dtype": EVIL, "time_s": 0.5, "energy_j": 12.5, "mean_power_w": 25.0,
        "null_reasons": json.dumps({}), "provenance": json.dumps({"energy_j": "nvml-counter", "idle_energy_j": "estimated (linear model)"}),
    })
    store.append_record({
        "point_key": "dtype=bf16", "dtype": "bf16", "time_s": 0.25, "energy_j": None, "mean_power_w": None,
        "null_reasons": json.dumps({"energy_j": f"RAPL unreadable {EVIL}", "mean_power_w": "RAPL unreadable"}), "provenance": json.dumps({}),
        "flops_estimated": 1e9,
    })
    try:
        raise RuntimeError(f"boom {EVIL}")
    except RuntimeError as exc:
        store.record_failure("dtype=fp8", exc, {"dtype": "fp8"})
    store.append_samples([{"t_s": 10.0 + i * 0.1, "gpu0_power_w": 100.0 + i, "cpu_package0_power_w": None, "gpu0_temp_c": 50.0} for i in range(5)])
    store.finish("completed")
    return store


def test_run_report_is_one_offline_file_with_plotly_once(tmp_path: Path, hooks: str) -> None:
    store = make_run(tmp_path, hook=f"{hooks}:hook_sections")
    path = render_run(store.path)
    assert path == store.path / "report.html"
    html = path.read_text()
    head = plotly_js()[:200]
    assert html.count(head) == 1
    parsed = _parse(html)
    assert parsed.srcs == [] and parsed.links == []
    assert not re.search(r"<script[^>]+src\s*=\s*['\"]?https?:", html, re.I)
    # one plotly bundle + one study figure + one timeline figure, nothing else
    assert len(parsed.scripts) == 3
    assert parsed.scripts[0].startswith(head)
    assert all(s.startswith("(function(){var f=") for s in parsed.scripts[1:])


def test_every_user_string_is_escaped(tmp_path: Path, hooks: str) -> None:
    store = make_run(tmp_path, hook=f"{hooks}:hook_sections")
    html = render_run(store.path).read_text()
    assert EVIL not in html
    # every occurrence sits behind an escaped '>' (HTML entity or JSON \\u003e): never a live tag
    hits = [m.start() for m in re.finditer(re.escape("alert(1)"), html)]
    assert len(hits) >= 10
    assert all(html[:i].endswith(("&gt;", "\\u003e")) for i in hits)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # label/meta/point values shown, escaped
    parsed = _parse(html)
    assert len(parsed.scripts) == 3  # a "</script>" in a figure title closed nothing
    # the figure JSON still carries the exact title and trace name
    payload = parsed.scripts[1][len("(function(){var f="):].split(";Plotly.newPlot(")[0]
    fig = json.loads(payload)
    assert fig["layout"]["title"]["text"] == EVIL_TITLE and fig["data"][0]["name"] == EVIL


def test_report_sections_provenance_points_env_failures(tmp_path: Path) -> None:
    from report_content import capture_sections, close, trace_xy

    store = make_run(tmp_path)
    html = render_run(store.path).read_text()
    assert "abcdef0123" in html and "Test CPU" in html  # the environment's values are on the page
    data = RunData.load(store.path)
    # the points table: one row per point, knobs first, the unmeasured value null (never 0)
    points = report._display_frame(data.results, report.run_knob_names(data))
    assert list(points["point_key"]) == ["dtype=fp16", "dtype=bf16"] and list(points.columns)[:2] == ["point_key", "dtype"]
    assert close(list(points["energy_j"]), [12.5, None]) and close(list(points["mean_power_w"]), [25.0, None])
    # the sampler timeline plots each readable column against time since the first sample; an all-null one is left out
    (timeline,) = capture_sections(lambda d: [report.timeline_section(d)], report, data).figures
    assert sorted(t.name for t in timeline.data) == ["gpu0_power_w", "gpu0_temp_c"]
    x, y = trace_xy(timeline, "gpu0_power_w")
    assert close(x, [0.0, 0.1, 0.2, 0.3, 0.4]) and y == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert trace_xy(timeline, "gpu0_temp_c")[1] == [50.0] * 5
    (failure,) = data.failures
    assert failure["point_key"] == "dtype=fp8" and EVIL in failure["message"]
    rows = provenance_rows(data)
    assert {"metric": "energy_j", "status": "measured", "source": "nvml-counter", "points": "1"} in rows
    assert {"metric": "idle_energy_j", "status": "estimated", "source": "estimated (linear model)", "points": "1"} in rows
    assert {"metric": "energy_j", "status": "not measured", "source": f"RAPL unreadable {EVIL}", "points": "1"} in rows
    assert {"metric": "flops_estimated", "status": "estimated", "source": "model (see the study's section)", "points": "1"} in rows
    assert '<span class="badge not-measured">not measured</span>' in html


def test_report_to_other_path_and_empty_run(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "serving", config={}, env={})
    out = tmp_path / "elsewhere" / "r.html"
    assert render_run(store.path, out) == out
    html = out.read_text()
    assert "No completed points." in html and "No point recorded provenance." in html
    assert not (store.path / "report.html").exists()


def test_report_hook_missing_or_raising_still_renders(tmp_path: Path, hooks: str) -> None:
    store = make_run(tmp_path, hook="no_such_module_xyz:sections")
    assert render_run(store.path).is_file()
    (sec,) = report._study_sections(RunData.load(store.path))
    assert sec.html == ("<p>Cannot load report hook no_such_module_xyz:sections: ModuleNotFoundError: "
                        "No module named &#39;no_such_module_xyz&#39;</p>")
    store.update_meta(report_hook=f"{hooks}:hook_raises")
    html = render_run(store.path).read_text()
    (sec,) = report._study_sections(RunData.load(store.path))
    assert sec.html.startswith(f"<p>The report hook {hooks}:hook_raises raised ValueError: fit &lt;did&gt; not converge. The data below is complete")
    assert sec.html in html and len(RunData.load(store.path).results) == 2  # the points are still rendered below it


def test_report_hook_raising_under_debug_propagates(tmp_path: Path, hooks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_run(tmp_path, hook=f"{hooks}:hook_raises")
    monkeypatch.setenv("CHARBENCH_DEBUG", "1")
    with pytest.raises(ValueError, match="did"):
        render_run(store.path)


def test_timeline_skips_missing_columns(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "s", config={}, env={})
    store.append_samples([{"t_s": 0.0, "gpu0_power_w": None}])
    sec = report.timeline_section(RunData.load(store.path))
    assert sec is not None and "no power, clock or temperature source was readable" in sec.html
    other = RunStore.create(tmp_path, "s", config={}, env={}, label="no-t")  # samples append: a second store, not a second call
    other.append_samples([{"time": 0.0}])
    assert report.timeline_section(RunData.load(other.path)) is None


def test_table_html_escapes_and_marks_nulls() -> None:
    import pandas as pd

    df = pd.DataFrame({EVIL: [EVIL, None], "x_j": [1.23456789, float("nan")]})
    html = table_html(df)
    assert EVIL not in html and html.count('class="null">null') == 2 and "1.235" in html
    many = table_html(pd.DataFrame({"a": range(7)}), max_rows=5)
    assert "2 more rows in results.csv" in many


def test_render_page_escapes_and_embeds_plotly_once() -> None:
    html = render_page(f"Compare {EVIL}", [Section(EVIL, "<p>trusted</p>", note=EVIL, anchor="a")], subtitle=EVIL)
    assert EVIL not in html and "<p>trusted</p>" in html and 'id="a"' in html
    assert html.count(plotly_js()[:200]) == 1
    assert len(_parse(html).scripts) == 1


def test_plotly_bundle_cannot_close_its_script() -> None:
    assert "</script" not in plotly_js().lower()


def test_render_many_needs_two_runs(tmp_path: Path) -> None:
    with pytest.raises(CharbenchError) as ei:
        report.render_many([tmp_path], tmp_path / "c.html")
    assert str(ei.value) == "report: give two or more RUN_DIRs to compare, or one to render"


@pytest.mark.parametrize("name", ["env.json", "config.json"])
def test_report_of_a_run_with_a_damaged_env_or_config(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from charbench.cli import main
    from charbench.results import RunStore

    store = RunStore.create(tmp_path, "gemm-power", config={"study_config": {}}, env={})
    (store.path / name).write_bytes(b"\x00\x01")  # before: an internal JSONDecodeError
    assert main(["report", str(store.path)]) == 1
    assert capsys.readouterr().err == (
        f"Error: {store.path / name}: unreadable (JSONDecodeError: Expecting value: line 1 column 1 (char 0)); the run folder is damaged\n"
    )


def test_provenance_table_lists_derived_values_with_their_sources(tmp_path: Path) -> None:
    """Values a Record derived carry their sources' meter (or reason) into the report's provenance table."""
    from charbench.record import Record
    from charbench.study import finalize_record

    def rec(energy: float | None) -> Record:
        r = Record().set("iteration_count", 10)
        r.set("energy_j", energy, "rapl", reason="no RAPL package zones")
        r.set("power_estimated_w", 40.0, "estimated: power model (calibration.json)")
        return r.derive("energy_per_gemm_j", lambda e, n: e / n, "energy_j", "iteration_count", formula="per GEMM")

    store = RunStore.create(tmp_path, "gemm-power", config={}, env={})
    store.append_records([finalize_record(rec(5.0), {"i": 0}, "i=0", 0), finalize_record(rec(None), {"i": 1}, "i=1", 1)])
    store.finish("completed")
    assert provenance_rows(RunData.load(store.path)) == [
        {"metric": "energy_j", "status": "measured", "source": "rapl", "points": "1"},
        {"metric": "energy_j", "status": "not measured", "source": "no RAPL package zones", "points": "1"},
        {"metric": "energy_per_gemm_j", "status": "measured", "source": "rapl (per GEMM)", "points": "1"},
        {"metric": "energy_per_gemm_j", "status": "not measured", "source": "no RAPL package zones", "points": "1"},
        {"metric": "power_estimated_w", "status": "estimated", "source": "estimated: power model (calibration.json)", "points": "2"},
    ]
