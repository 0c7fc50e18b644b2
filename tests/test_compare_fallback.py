"""charbench compare on CPU runs: unmeasured energy gates fall back to time gates; one verdict line."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from charbench import compare as cm
from charbench.cli import main
from charbench.record import Record
from charbench.sweep import expand

_spec = importlib.util.spec_from_file_location("charbench_test_fakeruns", Path(__file__).parent / "browser" / "fakeruns.py")
fakeruns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakeruns)  # type: ignore[union-attr]

REASON = "no power meter readable on this machine"
GRID = expand({"dtype": ["fp32", "bf16"], "size": [64, 128]})


def _cpu(slowdown: float) -> Callable[[dict[str, Any]], Record]:
    """A gemm-power record on a CPU without RAPL: time measured, energy and power null."""
    def measure(p: dict[str, Any]) -> Record:
        rec = Record({"time_per_gemm_ms": slowdown * 0.01 * p["size"]})
        return rec.null("energy_per_gemm_j", REASON).null("mean_power_w", REASON)
    return measure


def _runs(tmp_path: Path, slowdown: float) -> tuple[Path, Path]:
    b = fakeruns.make_run(tmp_path, "gemm-power", GRID, _cpu(1.0), label="base", now=dt.datetime(2026, 1, 1, 12))
    c = fakeruns.make_run(tmp_path, "gemm-power", GRID, _cpu(slowdown), label="cand", now=dt.datetime(2026, 1, 2, 12))
    return b, c


def test_two_cpu_runs_with_a_2x_slowdown_exit_3_with_one_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _runs(tmp_path, 2.0)
    assert main(["compare", str(b), str(c), "--out", str(tmp_path / "cmp.html")]) == 3
    cap = capsys.readouterr()
    verdict = ("REGRESSION: 4 point(s) of time_per_gemm_ms worse by more than 5% and outside noise; gated on time_per_gemm_ms "
               "because energy_per_gemm_j, mean_power_w were not measured (exit 3)")
    assert verdict in cap.out.splitlines()
    assert f"note: energy_per_gemm_j, mean_power_w not measured (null in every point: {REASON}); gating on time_per_gemm_ms instead" in cap.out
    # one message per verdict: no second "Error: regression ..." line
    assert cap.out.count("REGRESSION") == 1 and "Error" not in cap.err
    assert verdict in (tmp_path / "cmp.html").read_text()


def test_cpu_runs_without_slowdown_pass_on_the_time_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _runs(tmp_path, 1.0)
    assert main(["compare", str(b), str(c), "--out", str(tmp_path / "cmp.html")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == ("OK: no gated metric (time_per_gemm_ms) regressed beyond 5%; gated on time_per_gemm_ms because "
                       "energy_per_gemm_j, mean_power_w were not measured (exit 0)")


def test_fallback_gate_in_json_and_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _runs(tmp_path, 2.0)
    cmp = cm.compare_runs(b, c)
    assert [(m.name, m.direction, m.fallback_for) for m in cmp.gated] == [("time_per_gemm_ms", "lower", ("energy_per_gemm_j", "mean_power_w"))]
    assert main(["compare", str(b), str(c), "--json", "--out", str(tmp_path / "x.html")]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 3 and data["verdict"] == cmp.verdict()


def test_explicit_metric_regression_prints_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _runs(tmp_path, 2.0)
    assert main(["compare", str(b), str(c), "--metric", "time_per_gemm_ms", "--out", str(tmp_path / "c.html")]) == 3
    cap = capsys.readouterr()
    assert "REGRESSION: 4 point(s) of time_per_gemm_ms worse by more than 5% and outside noise (exit 3)" in cap.out
    assert cap.err == ""
