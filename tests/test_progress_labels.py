"""Progress lines name a point by the knobs that vary, and say early when a point starts."""

from __future__ import annotations

import io

import pytest

from charbench import progress
from charbench.progress import Progress, short_label, varying_knobs

KEYS = [
    "backend=torch,dtype=fp32,experiment=sigma,param=sigma,repeat=0,seed=1,value=0.03125",
    "backend=torch,dtype=fp32,experiment=sigma,param=sigma,repeat=1,seed=1,value=8.0",
    "backend=torch,dtype=bf16,experiment=sigma,param=sigma,repeat=0,seed=1,value=8.0",
]


def test_varying_knobs_and_short_labels() -> None:
    assert varying_knobs(KEYS) == ["dtype", "repeat", "value"]
    assert short_label(KEYS[1], varying_knobs(KEYS)) == "dtype=fp32 repeat=1 value=8.0"
    assert varying_knobs(["a=1,b=2"]) == ["a", "b"]  # one point: every knob names it
    assert short_label("model=a,b,c,tp=1", ["model"]) == "model=a,b,c"  # a value with commas stays whole
    assert short_label("x=1", None) == "x=1"


def test_plain_lines_show_the_varying_values_and_a_start_line_after_a_long_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    with Progress(3, stream=out, keys=KEYS) as bar:
        for k, took in zip(KEYS, (6.0, 1.0, 1.0)):
            bar.describe(k)
            now[0] += took
            bar.advance()
    lines = [line.split(" (elapsed")[0] for line in out.getvalue().splitlines()]
    assert lines == [
        "[charbench] 1/3 started: dtype=fp32 repeat=0 value=0.03125",
        "[charbench] 1/3 dtype=fp32 repeat=0 value=0.03125",
        "[charbench] 2/3 started: dtype=fp32 repeat=1 value=8.0",  # the first point took 6 s >= LONG_POINT_S
        "[charbench] 2/3 dtype=fp32 repeat=1 value=8.0",
        "[charbench] 3/3 dtype=bf16 repeat=0 value=8.0",  # the second took 1 s and the mean is 3.5 s: no start line
    ]


def test_run_summary_pools_repeats_into_one_row_per_setting(tmp_path, monkeypatch) -> None:
    import datetime as dt
    import importlib.util
    from pathlib import Path

    from charbench.run_summary import print_summary

    spec = importlib.util.spec_from_file_location("charbench_test_fakeruns_summary", Path(__file__).parent / "browser" / "fakeruns.py")
    fakeruns = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fakeruns)  # type: ignore[union-attr]
    monkeypatch.setenv("CI", "true")
    pts = [{"experiment": e, "param": {"sigma": "sigma", "p": "p"}[e], "value": 1.0, "repeat": r} for e in ("sigma", "p") for r in range(3)]
    run = fakeruns.make_run(tmp_path, "gemm-power", pts, lambda p: {"time_per_gemm_ms": 1.0 + p["repeat"]}, now=dt.datetime(2026, 1, 1))
    out = io.StringIO()
    print_summary(run, out)
    assert out.getvalue().splitlines() == [
        "gemm-power: 2 point(s)",
        "experiment  n  mean time_per_gemm_ms",
        "----------  -  ---------------------",
        "sigma       3  2",
        "p           3  2",
    ]
