"""The comparison page answers "what moved": worst first, labeled bars, no empty charts, no quiet-machine claim when busy."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from charbench import compare as cm
from charbench import compare_page
from charbench.progress import naming_knobs
from charbench.sweep import expand

_spec = importlib.util.spec_from_file_location("charbench_test_fakeruns_moved", Path(__file__).parent / "browser" / "fakeruns.py")
_fakeruns = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_fakeruns)  # type: ignore[union-attr]
make_run = _fakeruns.make_run

POINTS = [{"experiment": e, "param": {"sigma": "sigma", "sparsity": "p"}[e], "value": v} for e in ("sigma", "sparsity") for v in (1, 2, 3)]


def _runs(tmp_path: Path, slow: dict[tuple[str, int], float], env: dict[str, Any] | None = None) -> tuple[Path, Path]:
    def m(scale: dict[tuple[str, int], float]):
        return lambda p: {"energy_j": 1.0, "latency_ms": 10.0 * scale.get((p["experiment"], p["value"]), 1.0)}

    b = make_run(tmp_path, "toy-study", POINTS, m({}), label="b", now=dt.datetime(2026, 1, 1))
    c = make_run(tmp_path, "toy-study", POINTS, m(slow), label="c", now=dt.datetime(2026, 1, 2), env=env)
    return b, c


def test_naming_knobs_drop_what_another_knob_decides() -> None:
    pts = [{"experiment": p["experiment"], "param": p["param"], "value": str(p["value"])} for p in POINTS]
    assert naming_knobs(pts) == ["experiment", "value"]  # param follows from experiment
    assert naming_knobs([{"a": "1"}]) == ["a"]


def test_bars_worst_first_labeled_and_unchanged_metrics_in_a_sentence(tmp_path: Path) -> None:
    b, c = _runs(tmp_path, {("sparsity", 2): 2.0, ("sigma", 3): 1.3})
    cmp = cm.compare_runs(b, c, ["latency_ms"])
    html = compare_page._delta_figures(cmp)
    (payload,) = re.findall(r"var f=(\{.*?\});Plotly", html)
    fig = json.loads(payload)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == ["regression", "unchanged"]
    assert bars[0]["y"] == ["experiment=sparsity value=2", "experiment=sigma value=3"] and bars[0]["text"] == ["+100.0%", "+30.0%"]
    # the category axis runs bottom-up: the worst bar is drawn on top
    order = fig["layout"]["yaxis"]["categoryarray"]
    assert order[-2:] == ["experiment=sigma value=3", "experiment=sparsity value=2"] and len(order) == 6
    assert fig["layout"]["yaxis"]["title"]["text"] == "all 6 matched points, worst first"
    assert fig["layout"]["xaxis"]["title"]["text"] == "candidate vs baseline (%)"
    # energy_j did not move: a sentence, no chart
    cmp_all = cm.compare_runs(b, c, ["latency_ms", "energy_j"])
    html = compare_page._delta_figures(cmp_all)
    assert len(re.findall(r"Plotly.newPlot", html)) == 1
    assert "Unchanged within the 5% threshold (or within noise) at every matched point, so not charted: energy_j." in html


def test_points_table_starts_with_the_worst_regression(tmp_path: Path) -> None:
    b, c = _runs(tmp_path, {("sparsity", 2): 2.0, ("sigma", 3): 1.3})
    cmp = cm.compare_runs(b, c, ["latency_ms"])
    rows = re.findall(r"<tr>(.*?)</tr>", compare_page._points_table(cmp, gated_only=False))
    first = re.findall(r"<td[^>]*>(.*?)</td>", rows[1])  # rows[0] is the header
    assert first[:4] == ["latency_ms", "regression", "100", "experiment=sparsity, param=p, value=2"]
    assert first[4:7] == ["ms", "10", "20"]


def test_no_same_environment_claim_when_a_run_was_busy(tmp_path: Path) -> None:
    env = {"hostname": "testhost", "cpu_cores": 2, "gpus": [], "meters": [], "charbench_version": "0.1.0", "git_sha": "0123456789abcdef",
           "cpu_model": "Fake CPU", "machine": {"load1": 7.5, "cpu_cores": 2, "busy": True}}
    b, c = _runs(tmp_path, {}, env=env)
    cmp = cm.compare_runs(b, c, ["latency_ms"])
    text = compare_page._differences(cmp)
    assert "Same configuration and environment" not in text
    assert "the candidate ran on a busy machine (at its start; load up to 7.50 on 2 CPUs)" in text


def test_a_fixed_setting_the_records_repeat_is_not_compared_as_a_metric(tmp_path: Path) -> None:
    # the records carry the setting (as serve-sweep's carry max_duration_s), under a unit-suffixed name
    b2 = make_run(tmp_path / "x", "toy-study", POINTS, lambda p: {"latency_ms": 10.0, "max_duration_s": 10.0}, label="b")
    c2 = make_run(tmp_path / "x", "toy-study", POINTS, lambda p: {"latency_ms": 10.0, "max_duration_s": 20.0}, label="c")
    assert "max_duration_s" in {m.name for m in cm.compare_runs(b2, c2).metrics}  # no config saying it is a setting
    for run in (b2, c2):
        cfg = json.loads((run / "config.json").read_text())
        cfg["study_config"] = {"max_duration_s": None}
        (run / "config.json").write_text(json.dumps(cfg))
    assert {m.name for m in cm.compare_runs(b2, c2).metrics} == {"latency_ms"}
