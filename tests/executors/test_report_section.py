"""The report's executor sections: one row per node, metrics split by GPU model or node, the node timeline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from executor_toy import ToyStudy

from charbench.config import CommonOptions
from charbench.executors.base import LocalExecutor
from charbench.executors.report_section import node_rows, node_sections, split_section, timeline_figure_section, timeline_frame
from charbench.report import RunData
from charbench.study import RunSettings, run_study

A100 = {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "driver": "550.54", "sm_clock_mhz": 1410}
H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "driver": "560.28", "sm_clock_mhz": 1980}


def _nodes() -> dict:
    env = {"python": "3.11.7", "torch": "2.4.0", "cpu_model": "EPYC", "cpu_cores": 64, "charbench_version": "0.1.0", "git_sha": "abcdef1234567",
           "backends": {"cupy": {"ok": True, "version": "13.0"}, "triton": {"ok": False, "version": None}}}
    return {"n1": {"gpu": "NVIDIA A100-SXM4-40GB (cuda:0)", "device": "cuda:0", "env": {**env, "gpus": [A100]}, "baseline": {"mean_w": 60}},
            "n2": {"gpu": "NVIDIA H100 80GB HBM3 (cuda:0)", "device": "cuda:0", "env": {**env, "gpus": [H100]}},
            "cpu-box": {"gpu": None, "device": "cpu", "env": {**env, "gpus": [], "gpus_reason": "no NVIDIA driver"}}}


def _results() -> pd.DataFrame:
    return pd.DataFrame({
        "point_key": ["x=0", "x=1", "x=2", "x=3"], "x": [0, 1, 2, 3],
        "node": ["n1", "n1", "n2", "n2"], "gpu": ["NVIDIA A100-SXM4-40GB (cuda:0)"] * 2 + ["NVIDIA H100 80GB HBM3 (cuda:0)"] * 2,
        "energy_j": [10.0, 14.0, 6.0, 8.0], "machine_load1_count": [1.0, 1.0, 1.0, 1.0],
        "point_started_at": ["2026-12-04T10:00:00.000+00:00", "2026-12-04T10:00:02.000+00:00", "2026-12-04T11:00:00.500+01:00", None],
        "point_ended_at": ["2026-12-04T10:00:01.500+00:00", "2026-12-04T10:00:03.000+00:00", "2026-12-04T11:00:01.000+01:00", None],
    })


def test_one_row_per_node_with_its_gpu_driver_clocks_and_versions() -> None:
    rows = {r["node"]: r for r in node_rows(_nodes(), _results())}
    assert list(rows) == ["cpu-box", "n1", "n2"]
    assert rows["n1"]["GPU models"] == "NVIDIA A100-SXM4-40GB" and rows["n1"]["driver"] == "550.54"
    assert rows["n2"]["SM clock at start (MHz)"] == "1980" and rows["n1"]["points"] == "2" and rows["cpu-box"]["points"] == "0"
    assert rows["n1"]["libraries"] == "torch 2.4.0, cupy 13.0" and rows["n1"]["charbench"] == "0.1.0 abcdef1234"
    assert rows["n1"]["idle baseline"] == "measured" and rows["n2"]["idle baseline"] == "none"
    # a missing fact says why, never a blank that reads as zero
    assert rows["cpu-box"]["driver"] == "n/a: no NVIDIA driver" and rows["cpu-box"]["used"] == "n/a: the points ran on cpu"


def test_metrics_are_split_by_gpu_model_and_machine_columns_are_not_metrics() -> None:
    sec = split_section(_results())
    assert sec is not None and sec.title == "By GPU model" and sec.anchor == "by-gpu"
    assert "median energy_j" in sec.html and "machine_load1_count" not in sec.html
    assert ">12<" in sec.html and ">7<" in sec.html  # the medians of A100's (10, 14) and H100's (6, 8) energy
    one_node = _results().assign(node="n1", gpu="NVIDIA A100-SXM4-40GB (cuda:0)")
    assert split_section(one_node) is None  # nothing to split when one node ran everything


def test_timeline_places_each_point_on_its_node_from_its_own_times() -> None:
    frame, missing = timeline_frame(_results())
    assert frame.to_dict("list") == {"node": ["n1", "n1", "n2"], "point_key": ["x=0", "x=1", "x=2"],
                                     "start_s": [0.0, 2.0, 0.5],  # n2's +01:00 clock: 11:00:00.5 there is 10:00:00.5 UTC
                                     "duration_s": [1.5, 1.0, 0.5]}
    assert missing == 1
    sec = timeline_figure_section(_results())
    assert sec is not None and sec.title == "Which node ran which point" and "1 point(s) without time stamps" in sec.note
    assert timeline_frame(_results().drop(columns=["point_started_at"])) is None


def test_a_local_run_reports_its_node_and_timeline(tmp_path: Path) -> None:
    res = run_study(ToyStudy(3, work_s=0.05), CommonOptions(out=tmp_path, device="cpu"), RunSettings(sample_interval_s=0), executor=LocalExecutor())
    titles = [s.title for s in node_sections(RunData.load(res.run_dir))]
    assert titles == ["Nodes", "Which node ran which point"]
    assert "Which node ran which point" in res.report.read_text()
