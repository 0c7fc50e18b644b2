"""charbench report --history: index of runs of several studies, failures, links, escaping."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from charbench.cli import main
from charbench.history import headline_metrics, render_history, summarize_run
from charbench.results import RunStore
from charbench.sweep import expand

_spec = importlib.util.spec_from_file_location("charbench_test_fakeruns", Path(__file__).parent / "browser" / "fakeruns.py")
fakeruns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakeruns)  # type: ignore[union-attr]
make_run = fakeruns.make_run

XSS = "<script>alert(1)</script>"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.rows = 0
        self.in_runs = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag == "section":
            self.in_runs = a.get("id") == "runs"
        if tag == "tr" and self.in_runs:
            self.rows += 1


def _results_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    gemm = expand({"dtype": ["fp16", "fp32"], "size": [256, 512]})
    for day, scale in ((1, 1.0), (2, 1.1), (3, 0.9)):
        make_run(root, "gemm-power", gemm, lambda p, s=scale: {"energy_per_gemm_j": s * p["size"] / 256, "mean_power_w": 100.0 * s, "time_s": 0.01},
                 label=f"g{day}", now=dt.datetime(2026, 1, day, 9))
    serve = expand({"rate_per_s": [1.0, 4.0]})
    for day in (4, 5):
        make_run(root, "serve-sweep", serve, lambda p, d=day: {"p99_ttft_ms": 20.0 * p["rate_per_s"] * d, "p99_tpot_ms": 5.0, "energy_per_output_token_j": 0.3,
                                                       "tokens_per_s": 100.0}, label=f"s{day}", now=dt.datetime(2026, 1, day, 9))
    # a run with failed points that did not complete, and an escaped label/meta/host
    make_run(root, "gemm-power", gemm[:2], lambda p: {"energy_per_gemm_j": 2.0, "mean_power_w": 90.0}, label=XSS, meta={"pr": XSS},
             env={"hostname": XSS, "git_sha": "feedface" * 5, "gpus": [{"name": XSS}]}, status="failed", failures=gemm[2:], now=dt.datetime(2026, 1, 6, 9))
    # a run that crashed before its first point
    make_run(root, "cluster-sim", [], lambda p: {}, label="empty", status="failed", failures=[{"n": 1}], samples=False, now=dt.datetime(2026, 1, 7, 9))
    return root


def test_history_index_of_several_studies(tmp_path: Path) -> None:
    root = _results_root(tmp_path)
    for run in root.glob("gemm-power/*-g1"):  # one run with a rendered report
        (run / "report.html").write_text("<html></html>")
    out = render_history(root)
    assert out == root / "index.html"
    html = out.read_text()
    p = _Links()
    p.feed(html)
    assert p.rows == 1 + 7  # header + one row per run
    # links are relative and point at existing reports
    assert p.hrefs and all(not h.startswith(("/", "file:")) for h in p.hrefs)
    assert all((out.parent / unquote(h)).is_file() for h in p.hrefs)
    assert len(p.hrefs) == 1 and html.count("not rendered") == 6
    # one trend section per study, headline metrics from the study's gates
    for study in ("gemm-power", "serve-sweep", "cluster-sim"):
        assert f"{study}: trends" in html
    assert "Metrics: energy_per_gemm_j, mean_power_w" in html
    # p99_tpot_ms and energy per token are the same in both serve-sweep runs: no trend of a constant
    assert "Metrics: p99_ttft_ms (those that matter and vary over the runs)" in html
    assert "No run of this study has a unit-suffixed metric" in html
    assert html.count('class="plot"') == 2
    # status and failures shown
    assert re.search(r'badge not-measured">failed</span> <span class="badge not-measured">2 failed point', html)
    assert ">feedfacefe<" in html  # git sha, first 10 characters
    assert "Fake GPU 80GB" in html


def test_history_escapes_labels_and_metadata(tmp_path: Path) -> None:
    html = render_history(_results_root(tmp_path)).read_text()
    assert XSS not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # label, host, GPU (and meta in a title)
    assert 'title="pr=&lt;script&gt;' in html


def test_trend_values_are_medians_per_run(tmp_path: Path) -> None:
    root = _results_root(tmp_path)
    runs = {r.meta["label"]: summarize_run(r) for r in map(RunStore.open, root.glob("gemm-power/*"))}
    assert runs["g2"].medians["energy_per_gemm_j"] == pytest.approx(1.1 * 1.5)  # sizes 256, 256, 512, 512 -> 1, 1, 2, 2
    assert runs["g2"].medians["mean_power_w"] == pytest.approx(110.0)
    assert headline_metrics("gemm-power", list(runs.values())) == ["energy_per_gemm_j", "mean_power_w"]
    # the figure carries one marker per run that has values: 4 gemm-power runs
    html = render_history(root).read_text()
    figs = re.findall(r"var f=(\{.*?\});Plotly", html)
    traces = [t for f in figs for t in json.loads(f)["data"]]
    # one line per series (dtype), per metric; serve-sweep's fake runs have no series knob
    assert sorted((t["name"], t.get("yaxis", "y")) for t in traces) == [
        ("all points", "y"), ("dtype=fp16", "y"), ("dtype=fp16", "y2"), ("dtype=fp32", "y"), ("dtype=fp32", "y2")]
    energy = next(t for t in traces if t["name"] == "dtype=fp32" and t.get("yaxis", "y") == "y")
    assert energy["y"] == pytest.approx([1.5, 1.65, 1.35])  # the median of the fp32 points (sizes 256, 512 -> 1, 2) x scale
    assert energy["x"] == ["01-01 09:00 g1", "01-02 09:00 g2", "01-03 09:00 g3"]  # runs as categories, labeled
    fp16 = next(t for t in traces if t["name"] == "dtype=fp16" and t.get("yaxis", "y") == "y")
    assert len(fp16["y"]) == 4 and fp16["marker"]["symbol"] == ["circle", "circle", "circle", "circle-open"]


def test_cli_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results_root(tmp_path)
    out = tmp_path / "site" / "index.html"
    assert main(["report", "--history", str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and "charbench run history" in out.read_text()


def test_cli_history_errors_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--history", str(tmp_path / "nope")]) == 1
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    html = render_history(empty).read_text()
    assert "No run folders" in html


def test_headline_metrics_matter_and_vary(tmp_path: Path) -> None:
    """The study's declared metrics that vary; never the fixed window length (time_s) or an undeclared column."""
    root = tmp_path / "runs"
    make_run(root, "gemm-power", expand({"n": [1, 2]}), lambda p: {"energy_j": None, "hamming_frac": 0.5 * p["n"], "sm_clock_mhz": 1400.0,
                                                                   "time_s": 0.1 * p["n"], "loop_s": 0.25, "time_per_gemm_ms": 2.0 * p["n"],
                                                                   "throughput_tflop_s": 3.0}, now=dt.datetime(2026, 1, 1))
    runs = [summarize_run(r) for r in map(RunStore.open, root.glob("gemm-power/*"))]
    assert headline_metrics("gemm-power", runs) == ["time_per_gemm_ms"]  # throughput is constant: no trend
    # a study that declares no metrics: costs and throughputs that vary, but not the window length
    make_run(root, "my-plugin", expand({"n": [1, 2]}), lambda p: {"time_s": 0.1 * p["n"], "latency_ms": 3.0 * p["n"], "ratio_frac": 0.1 * p["n"]},
             now=dt.datetime(2026, 1, 2))
    runs = [summarize_run(r) for r in map(RunStore.open, root.glob("my-plugin/*"))]
    assert headline_metrics("my-plugin", runs) == ["latency_ms", "ratio_frac"]


def test_damaged_runs_are_listed_as_damaged_and_the_page_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results_root(tmp_path)
    runs = sorted(root.glob("gemm-power/*"))
    (runs[0] / "env.json").write_text("{not json")  # before: JSONDecodeError for the whole page
    (runs[1] / "run.json").write_text("")  # before: silently left out of the page
    assert main(["report", "--history", str(root)]) == 0
    html = (root / "index.html").read_text()
    p = _Links()
    p.feed(html)
    assert p.rows == 1 + 7  # every run still has its row
    assert "damaged: env.json: unreadable (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); the run folder is damaged" in html
    assert "damaged: run.json: unreadable (JSONDecodeError: Expecting value: line 1 column 1 (char 0)); the run folder is damaged" in html
    # the run with a damaged env.json still has readable results: it keeps its trend marker
    assert summarize_run(RunStore.open(runs[0])).medians["energy_per_gemm_j"] == pytest.approx(1.5)
    assert "gemm-power: trends (4 run(s))" in html


def test_a_running_run_whose_process_is_gone_is_stale(tmp_path: Path) -> None:
    import socket

    root = _results_root(tmp_path)
    run = sorted(root.glob("gemm-power/*"))[0]
    meta = json.loads((run / "run.json").read_text())
    meta.update(status="running", pid=2**22 + 1, host=socket.gethostname())  # above Linux's pid_max: never alive
    (run / "run.json").write_text(json.dumps(meta))
    assert summarize_run(RunStore.open(run)).facts["status"] == "stale"
