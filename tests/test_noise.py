"""The machine's noise made visible: busy rule, per-point machine columns, spread of repeated points."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from charbench import envinfo
from charbench.noise import busy_summary, is_busy, point_machine, run_noise_pct, spread
from charbench.record import BOOKKEEPING, DESCRIPTOR, KNOB, MACHINE, METRIC, column_role, point_key_names, run_knobs
from charbench.report import RunData, provenance_rows, render_run
from charbench.study import finalize_record

_spec = importlib.util.spec_from_file_location("charbench_test_fakeruns_noise", Path(__file__).parent / "browser" / "fakeruns.py")
_fakeruns = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_fakeruns)  # type: ignore[union-attr]
make_run = _fakeruns.make_run


def test_busy_is_load_above_the_cpu_count() -> None:
    assert is_busy(2.0, 2) is False
    assert is_busy(2.01, 2) is True
    assert is_busy(None, 2) is None and is_busy(1.0, None) is None and is_busy(math.nan, 2) is None


def test_point_machine_takes_the_larger_load_and_busy_of_either_end() -> None:
    before = {"load1": 3.5, "cpu_cores": 2, "cpu_mhz": 2000.0, "process_threads": 3, "reasons": {}}
    after = {"load1": 1.0, "cpu_cores": 2, "cpu_mhz": 2400.0, "process_threads": 5, "reasons": {}}
    rec = point_machine(before, after)
    assert rec.to_dict() == {"machine_load1_count": 3.5, "machine_cpu_mhz": 2400.0, "machine_threads_count": 5, "machine_busy": True}
    blind = point_machine({"reasons": {"load1": "no getloadavg"}}, {"reasons": {"cpu_mhz": "no cpufreq"}})
    assert blind.to_dict() == {"machine_load1_count": None, "machine_cpu_mhz": None, "machine_threads_count": None, "machine_busy": None}
    assert blind.reasons == {"machine_load1_count": "no getloadavg", "machine_cpu_mhz": "no cpufreq",
                             "machine_threads_count": "thread count not readable", "machine_busy": "load average or CPU count not readable"}


def test_machine_state_reads_load_clock_and_threads() -> None:
    m = envinfo.machine_state()
    assert set(m) >= {"load1", "load5", "load15", "procs_running", "cpu_cores", "cpu_mhz", "process_threads", "omp_num_threads", "busy", "reasons"}
    assert m["load1"] is not None and m["load1"] >= 0 and m["process_threads"] >= 1
    assert m["busy"] == is_busy(m["load1"], m["cpu_cores"])
    assert m["cpu_mhz"] is not None or "cpu_mhz" in m["reasons"]


def test_finalize_record_puts_machine_columns_on_every_record_without_provenance() -> None:
    machine = point_machine({"load1": 0.5, "cpu_cores": 4, "reasons": {}}, {"load1": 0.7, "cpu_cores": 4, "cpu_mhz": 3000.0, "process_threads": 2, "reasons": {}})
    out = finalize_record({"time_s": 1.0}, {"dtype": "fp32"}, "dtype=fp32", 0, machine=machine)
    assert (out["machine_load1_count"], out["machine_cpu_mhz"], out["machine_threads_count"], out["machine_busy"]) == (0.7, 3000.0, 2, False)
    assert json.loads(out["provenance"]) == {} and json.loads(out["null_reasons"]) == {}


def test_column_role_asks_the_schema_not_the_name() -> None:
    knobs = run_knobs(["dtype=fp16,request_rate_rps=inf", "dtype=bf16,request_rate_rps=4.0"], ["burstiness", "max_duration_s"])
    assert point_key_names("dtype=fp16,request_rate_rps=inf") == ["dtype", "request_rate_rps"]
    roles = {c: column_role(c, knobs) for c in ("request_rate_rps", "max_duration_s", "burstiness", "p99_ttft_ms", "output_throughput_tok_s",
                                                "machine_busy", "machine_cpu_mhz", "point_key", "experiment")}
    assert roles == {"request_rate_rps": KNOB, "max_duration_s": KNOB, "burstiness": KNOB, "p99_ttft_ms": METRIC,
                     "output_throughput_tok_s": METRIC, "machine_busy": MACHINE, "machine_cpu_mhz": MACHINE,
                     "point_key": BOOKKEEPING, "experiment": DESCRIPTOR}


def test_spread_per_point_pools_repeats() -> None:
    df = pd.DataFrame({"dtype": ["fp32"] * 3 + ["bf16"], "value": [1.0] * 4, "time_ms": [1.0, 2.0, 3.0, 5.0],
                       "machine_busy": [False, True, False, False]})
    s = spread(df, "time_ms", by=["dtype", "value"])
    rows = s.to_dict("records")
    assert rows[0] == {"dtype": "bf16", "value": 1.0, "n": 1, "mean": 5.0, "min": 5.0, "max": 5.0, "spread_pct": None, "busy": False}
    assert rows[1] == {"dtype": "fp32", "value": 1.0, "n": 3, "mean": 2.0, "min": 1.0, "max": 3.0, "spread_pct": 100.0, "busy": True}
    assert run_noise_pct(df, "time_ms", by=["dtype", "value"]) == 100.0
    assert spread(df, "energy_j", by=["dtype"]) is None


def _busy_run(root: Path, loads: list[float]) -> Path:
    env = {"charbench_version": "0.1.0", "hostname": "h", "cpu_cores": 2, "meters": [], "gpus": [],
           "machine": {"load1": loads[0], "load5": 1.0, "load15": 1.0, "cpu_cores": 2, "cpu_mhz": 2600.0, "process_threads": 1, "busy": loads[0] > 2}}

    def m(p: dict) -> dict:
        return {"time_s": 0.1, "machine_load1_count": loads[p["i"]], "machine_busy": loads[p["i"]] > 2}

    return make_run(root, "gemm-power", [{"i": i} for i in range(len(loads))], m, env=env)


def test_run_page_warns_when_the_machine_was_busy(tmp_path: Path) -> None:
    busy = _busy_run(tmp_path / "a", [1.0, 4.5, 3.0])
    summary = busy_summary(RunData.load(busy).results, RunData.load(busy).env)
    assert (summary["busy_points"], summary["points"], summary["max_load1"], summary["cores"]) == (2, 3, 4.5, 2)
    html = render_run(busy).read_text()
    assert '<div class="busy" id="busy-warning"><b>Busy machine.</b> The machine was busy during 2 of 3 point(s): 1-minute load average up to 4.50 on 2 logical CPU(s)' in html
    assert "load average 1.00/1.00/1.00 (1/5/15 min) on 2 CPUs · CPU 2600 MHz · 1 thread(s) in charbench" in html
    quiet = _busy_run(tmp_path / "b", [0.5, 1.0])
    assert busy_summary(RunData.load(quiet).results, RunData.load(quiet).env) is None
    assert 'id="busy-warning"' not in render_run(quiet).read_text()


def test_provenance_leaves_knobs_out_and_has_one_row_per_metric_and_status(tmp_path: Path) -> None:
    from charbench.record import Record

    def m(p: dict) -> Record:
        rec = Record({"time_s": 1.0}).set("max_concurrency", None, reason="no --max-concurrency")
        return rec.null("mean_steady_power_w", "no RAPL" if p["rate"] == 1 else "no steady state")

    run = make_run(tmp_path, "serve-sweep", [{"rate": 1}, {"rate": 2}], m)
    cfg = json.loads((run / "config.json").read_text())
    cfg["study_config"] = {"max_concurrency": None}
    (run / "config.json").write_text(json.dumps(cfg))
    rows = provenance_rows(RunData.load(run))
    assert rows == [{"metric": "mean_steady_power_w", "status": "not measured", "source": "no RAPL; no steady state", "points": "2"}]


@pytest.mark.parametrize("cores", [None, 0])
def test_busy_unknown_without_cores(cores: int | None) -> None:
    assert is_busy(5.0, cores) is None
