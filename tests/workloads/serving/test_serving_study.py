"""The study through run_study with simulated targets: records, files, report, failures, resume, modes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from charbench.config import CommonOptions
from charbench.errors import CharbenchError
from charbench.results import RunStore
from charbench.study import RunSettings, run_study
from charbench.workloads.serving.config import ServeSweepConfig
from charbench.profiles import FORMAT, load_profile
from charbench.workloads.serving.profile import export_profile
from charbench.workloads.serving.run import ServeSweepStudy

from report_content import close, report_content, trace_xy

from .fakes import FakeTarget, LoopbackSSE

SETTINGS = RunSettings(sample_interval_s=0.05)


def _cfg(**kw: Any) -> ServeSweepConfig:
    base = dict(request_rate_rps=[math.inf, 40.0], max_num_seqs=[2, 4], input_len=[8], output_len=[6], num_requests=16,
                warmup_requests=1, slo_ttft_ms=200.0, slo_tpot_ms=50.0)
    base.update(kw)
    return ServeSweepConfig(**base)


def _common(tmp_path: Path, **kw: Any) -> CommonOptions:
    return CommonOptions(out=tmp_path / "runs", device="cpu", **kw)


class Factory:
    def __init__(self, **target_kw: Any) -> None:
        self.kw = target_kw
        self.made: list[tuple[dict[str, Any], FakeTarget]] = []
        self.per_mns: dict[int, dict[str, Any]] = {}

    def __call__(self, knobs: dict[str, Any], device: str) -> FakeTarget:
        kw = {**self.kw, **self.per_mns.get(knobs["max_num_seqs"], {})}
        t = FakeTarget(max_num_seqs=knobs["max_num_seqs"], **kw)
        self.made.append((knobs, t))
        return t


def test_grid_records_files_and_report(tmp_path: Path, meter_branch: str) -> None:
    measured = meter_branch == "measured"
    f = Factory()
    res = run_study(ServeSweepStudy(_cfg(), target_factory=f), _common(tmp_path), SETTINGS)
    assert res.status == "completed" and res.points_done == 4
    assert [k["max_num_seqs"] for k, _ in f.made] == [2, 4]  # restart knobs vary slowest: one start each
    assert all(t.shutdowns == 1 for _, t in f.made)
    recs = RunStore.open(res.run_dir).records()
    # max throughput is the knob's own value inf, from the CLI to the stored record (no null, no second kind)
    burst = [r for r in recs if r["request_rate_rps"] == math.inf]
    assert len(burst) == 2 and all(r["load_kind"] == "rate" and r["point_key"].endswith("request_rate_rps=inf,tp=1") for r in burst)
    assert "request_rate_rps" not in json.loads(burst[0]["null_reasons"])
    assert json.loads((res.run_dir / "config.json").read_text())["study_config"]["request_rate_rps"] == ["inf", 40.0]
    for r in recs:
        assert r["completed_count"] == 16 and r["output_len_mismatch_count"] == 0
        assert r["median_ttft_ms"] > 0 and r["p99_tpot_ms"] >= r["median_tpot_ms"]
        assert (res.run_dir / r["requests_file"]).is_file()
        assert r["prompt_tokens_exact"] and r["workload_class"] == "in8-out6"
    for r in burst:  # all at once fills the batch: a steady window exists
        assert r["steady_time_s"] > 0 and r["steady_output_tokens"] > 0
        if measured:  # the fake meter's 45 W over the steady window
            assert r["steady_energy_j"] == pytest.approx(45.0 * r["steady_time_s"], rel=0.05)
        else:  # no meter: null with its reason, not 0
            assert r["steady_energy_j"] is None and "not measured" in json.loads(r["null_reasons"])["steady_energy_j"]
    per_req = pd.read_parquet(res.run_dir / burst[0]["requests_file"])
    assert len(per_req) == 16 and set(per_req["good"]) <= {True, False}
    tables = RunStore.open(res.run_dir).tables()  # per-request data are named tables written by the run store
    assert {t["file"] for t in tables.values()} == {r["requests_file"] for r in recs}
    assert all(n.startswith("requests/") and t["rows"] == 16 and t["file"] == f"tables/{n}.parquet" for n, t in tables.items())
    assert (res.run_dir / "report.html").is_file()
    _check_report_content(res.run_dir, recs, measured)
    assert res.summary["best_under_slo"][0]["workload_class"] == "in8-out6"


def _check_report_content(run: Path, recs: list[dict[str, Any]], measured: bool) -> None:
    """The serve-sweep sections' figures and tables hold the records' values (measured or null energy)."""
    from charbench.workloads.serving.profile import energy_per_token

    content = report_content(run)
    summary = content.table_with_column("p99 TTFT ms")
    assert close(list(summary["p99 TTFT ms"]), [r["p99_ttft_ms"] for r in recs])
    assert close(list(summary["out tok/s"]), [r["output_throughput_tok_s"] for r in recs])
    per_token = [energy_per_token(r) for r in recs]
    if measured:
        assert close(list(summary["J/out tok"]), [v for v, _ in per_token]) and all(v > 0 for v, _ in per_token)
        assert list(summary["J basis"]) == [{"steady": "steady", "point": "whole load"}[b] for _, b in per_token]
    else:
        assert summary["J/out tok"].isna().all() and set(summary["J basis"]) == {"not measured"}
    # the latency CDFs: per load, the sorted TTFTs of its per-request table, rising to 1
    store = RunStore.open(run)
    by_file = {t["file"]: name for name, t in store.tables().items()}
    cdf = content.figures[0]
    ttft_traces = [t for t in cdf.data if (t.xaxis or "x") == "x"]
    assert len(ttft_traces) == len(recs)
    for t, r in zip(ttft_traces, recs):
        req = store.read_table(by_file[r["requests_file"]])
        want = sorted(req[req["error"].isna()]["ttft_ms"])
        assert close(list(t.x), want) and close(list(t.y), [(i + 1) / len(want) for i in range(len(want))])
    # throughput vs latency: each configuration's loads in order of the throughput they reached
    tl = content.figures[1]
    for mns in (2, 4):
        mine = sorted((r for r in recs if r["max_num_seqs"] == mns), key=lambda r: r["output_throughput_tok_s"])
        x, y = trace_xy(tl, f"max_num_seqs={mns} median", axis="y")
        assert close(x, [r["output_throughput_tok_s"] for r in mine]) and close(y, [r["median_ttft_ms"] for r in mine])
    # energy per token vs knobs and the Pareto frontier are drawn only from measured energy
    energy_figs = [fig for fig in content.figures if any(t.name == "Pareto frontier" for t in fig.data)]
    if measured:
        (pareto,) = energy_figs
        x, y = trace_xy(pareto, "loads")
        assert close(y, [v for v, _ in per_token]) and close(x, [r["p90_tpot_ms"] for r in recs])
    else:
        assert energy_figs == [] and len(content.figures) == 2
    # steady windows: formed for the all-at-once loads, with the window's energy when it was measured
    steady = content.table_with_column("steady s")
    assert close(list(steady["steady s"]), [r.get("steady_time_s") for r in recs])
    assert close(list(steady["steady J"]), [r.get("steady_energy_j") for r in recs])
    best = content.table_with_column("best configuration")
    assert list(best["workload class"]) == ["in8-out6"] and list(best["loads"]) == [4]


def test_dead_target_fails_point_and_sweep_continues(tmp_path: Path) -> None:
    f = Factory()
    f.per_mns[2] = {"dead": True}
    res = run_study(ServeSweepStudy(_cfg(), target_factory=f), _common(tmp_path, continue_on_error=True), SETTINGS)
    assert res.points_done == 2 and res.points_failed == 2
    fail = RunStore.open(res.run_dir).failures()[0]
    assert "served no request" in fail["message"] and "connection refused" in fail["message"]
    assert len(f.made) >= 2  # a dead engine is rebuilt for the next point


def test_dead_target_stops_and_keeps_completed_points(tmp_path: Path) -> None:
    f = Factory()
    f.per_mns[4] = {"dead": True}
    with pytest.raises(CharbenchError, match="completed points are kept"):
        run_study(ServeSweepStudy(_cfg(), target_factory=f), _common(tmp_path), SETTINGS)
    store = RunStore.open(next((tmp_path / "runs" / "serve-sweep").iterdir()))
    assert len(store.records()) == 2 and store.meta["status"] == "failed"


def test_request_errors_are_counted_not_fatal(tmp_path: Path) -> None:
    f = Factory(fail_every=4)
    res = run_study(ServeSweepStudy(_cfg(request_rate_rps=[math.inf], max_num_seqs=[4]), target_factory=f), _common(tmp_path), SETTINGS)
    r = RunStore.open(res.run_dir).records()[0]
    assert r["error_count"] > 0 and r["completed_count"] + r["error_count"] == 16
    assert r["error_frac"] == pytest.approx(r["error_count"] / 16)


def test_interrupt_keeps_points_then_resume_finishes(tmp_path: Path) -> None:
    f = Factory()
    f.per_mns[4] = {"explode": True}
    cfg = _cfg()
    with pytest.raises(KeyboardInterrupt):
        run_study(ServeSweepStudy(cfg, target_factory=f), _common(tmp_path), SETTINGS)
    run_dir = next((tmp_path / "runs" / "serve-sweep").iterdir())
    store = RunStore.open(run_dir)
    assert store.meta["status"] == "interrupted" and len(store.records()) == 2
    # resume with the saved config (inf rates went through JSON as null)
    saved = ServeSweepConfig.from_dict(store.config()["study_config"])
    res = run_study(ServeSweepStudy(saved, target_factory=Factory()), _common(tmp_path, resume=run_dir), SETTINGS)
    assert res.status == "completed" and res.points_done == 4


def test_sweep_mode(tmp_path: Path) -> None:
    cfg = _cfg(mode="sweep", request_rate_rps=[math.inf], max_num_seqs=[4], sweep_rates=2, num_requests=12)
    res = run_study(ServeSweepStudy(cfg, target_factory=Factory(per_seq_s=0.002)), _common(tmp_path), SETTINGS)
    recs = RunStore.open(res.run_dir).records()
    assert [r["mode_step"] for r in recs] == ["synchronous", "throughput", "sweep-1", "sweep-2"]
    assert recs[0]["concurrency"] == 1 and recs[0]["max_in_flight_count"] == 1
    lo, hi = recs[0]["request_throughput_rps"], recs[1]["request_throughput_rps"]
    assert lo < recs[2]["request_rate_rps"] < recs[3]["request_rate_rps"] < hi
    assert len({r["requests_file"] for r in recs}) == 4
    assert "Sweep (synchronous" in (res.run_dir / "report.html").read_text()


def test_slo_search_mode(tmp_path: Path) -> None:
    cfg = _cfg(mode="slo-search", request_rate_rps=[math.inf], max_num_seqs=[2], num_requests=12, search_iters=2,
               slo_ttft_ms=60.0, slo_tpot_ms=None)
    res = run_study(ServeSweepStudy(cfg, target_factory=Factory(prefill_s=0.01, step_s=0.004)), _common(tmp_path), SETTINGS)
    recs = RunStore.open(res.run_dir).records()
    assert recs[0]["mode_step"] == "throughput"
    assert {r["slo_max_rate_rps"] for r in recs} == {next((r["request_rate_rps"] for r in recs if r["slo_search_best"]), None)}
    assert "SLO search" in (res.run_dir / "report.html").read_text()


def test_url_target_through_the_study(tmp_path: Path) -> None:
    with LoopbackSSE(tokens=5) as srv:
        cfg = ServeSweepConfig(target=srv.url, model=[], tp=[], dtype=[], max_num_seqs=[], request_rate_rps=[200.0],
                               input_len=[4], output_len=[5], num_requests=20, warmup_requests=1, prompt_format="text")
        res = run_study(ServeSweepStudy(cfg), _common(tmp_path), SETTINGS)
    r = RunStore.open(res.run_dir).records()[0]
    assert r["completed_count"] == 20 and r["target_kind"] == "url" and r["served_model"] == "fake-model"
    assert r["median_server_ttft_ms"] == 1.0 and r["median_ttft_client_minus_server_ms"] is not None
    assert "max_num_seqs is unknown" in json.loads(r["null_reasons"])["steady_time_s"]
    assert r["prompt_format"] == "text"


def test_profile_roundtrip(tmp_path: Path) -> None:
    res = run_study(ServeSweepStudy(_cfg(max_num_seqs=[4]), target_factory=Factory()), _common(tmp_path), SETTINGS)
    recs = RunStore.open(res.run_dir).records()
    for name in ("p.json", "p.csv"):
        path = export_profile(recs, tmp_path / name, run_id="x")
        prof = load_profile(path)
        assert len(prof) == 2
        assert sorted((e["load_kind"], e["request_rate_rps"]) for e in prof) == [("rate", 40.0), ("rate", math.inf)]
        e = next(e for e in prof if e["request_rate_rps"] == 40.0)
        assert e["max_num_seqs"] == 4 and e["median_ttft_ms"] > 0
        assert e["mean_power_w"] is None and e["provenance"]["mean_power_w"].startswith("not-measured:")
    assert json.loads((tmp_path / "p.json").read_text())["format"] == FORMAT
    (tmp_path / "bad.json").write_text(json.dumps({"format": FORMAT, "version": 99}))
    from charbench.errors import ConfigError

    with pytest.raises(ConfigError, match="version 99"):
        load_profile(tmp_path / "bad.json")


def test_trace_replay_and_azure_lengths(tmp_path: Path) -> None:
    csv = tmp_path / "trace.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2024-05-10 00:00:{i // 10:02d}.{(i % 10) * 100000:06d}+00:00,{20 + i},{3 + i % 4}\n" for i in range(30)))
    f = Factory()
    cfg = ServeSweepConfig(arrival="trace", trace_file=str(csv), time_scale=0.2, trace_start_s=1.0, num_requests=12,
                           max_num_seqs=[4], warmup_requests=0)
    res = run_study(ServeSweepStudy(cfg, target_factory=f), _common(tmp_path), SETTINGS)
    r = RunStore.open(res.run_dir).records()[0]
    assert r["load_kind"] == "trace" and r["workload_class"] == "trace" and r["request_count"] == 12
    assert r["total_input_tokens"] == sum(20 + i for i in range(10, 22))  # rows 10..21 (t >= 1 s)
    assert r["total_output_tokens"] == sum(3 + i % 4 for i in range(10, 22))
    per = pd.read_parquet(res.run_dir / r["requests_file"])
    assert list(per["scheduled_s"].round(6)) == pytest.approx([round(0.02 * k, 6) for k in range(12)], abs=1e-6)
    assert "input_len" not in r  # lengths come from the trace, not a knob

    cfg = ServeSweepConfig(length_dist="azure-code", length_scale=0.02, num_requests=10, max_num_seqs=[4], warmup_requests=0)
    res = run_study(ServeSweepStudy(cfg, target_factory=Factory()), _common(tmp_path), SETTINGS)
    r = RunStore.open(res.run_dir).records()[0]
    assert r["workload_class"] == "azure-code" and r["completed_count"] == 10


def test_gpus_cover_the_largest_tensor_parallel_point() -> None:
    study = ServeSweepStudy(_cfg(tp=[1, 4]))
    assert study.gpus("cuda:2") == [2, 3, 4, 5]
    assert study.gpus("cpu") is None
    assert ServeSweepStudy(_cfg(tp=[1])).gpus("cuda:0") is None


class _FailingPointMeter:
    """A meter whose load windows fail to close (a counter read that raises)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.available, self.reason = inner.available, inner.reason

    def domains(self) -> list[str]:
        return self.inner.domains()

    def begin_window(self, name: str) -> None:
        self.inner.begin_window(name)

    def end_window(self, name: str) -> Any:
        m = self.inner.end_window(name)
        if name.endswith((":point", ":steady")):
            raise RuntimeError("counter read failed")
        return m

    def close(self) -> None:
        self.inner.close()


def test_meter_failure_is_the_null_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charbench import measure

    real = measure.make_meters

    def failing(device: str, gpus: Any = None) -> Any:
        meter, notes = real(device, gpus)
        return _FailingPointMeter(meter), notes

    monkeypatch.setattr(measure, "make_meters", failing)
    cfg = _cfg(request_rate_rps=[math.inf], max_num_seqs=[2])
    res = run_study(ServeSweepStudy(cfg, target_factory=Factory()), _common(tmp_path), SETTINGS)
    r = RunStore.open(res.run_dir).records()[0]
    reasons = json.loads(r["null_reasons"])
    assert r["energy_j"] is None and r["mean_power_w"] is None
    assert reasons["energy_j"] == "the energy meter failed: RuntimeError: counter read failed"
    assert reasons["energy_per_output_token_j"] == reasons["energy_j"]
    assert r["steady_time_s"] > 0 and r["steady_energy_j"] is None
    assert reasons["steady_energy_j"] == "the energy meter failed: RuntimeError: counter read failed"


def test_unknown_preemption_counts_are_not_zero() -> None:
    from charbench.record import Record
    from charbench.workloads.serving.metrics import ClientRecord

    def rec(i: int, server: dict[str, Any] | None) -> ClientRecord:
        r = ClientRecord(i, f"r{i}", 4, 2, send_s=0.0, first_token_s=0.1, token_times_s=[0.1, 0.2], end_s=0.2, output_tokens=2)
        r.server = server
        return r

    study = ServeSweepStudy(_cfg())
    out = Record()
    study._server_fields(out, [rec(0, {"ttft_ms": 90.0}), rec(1, {"ttft_ms": 95.0, "preemptions": None})])
    assert out["total_server_preemption_count"] is None
    assert out.reasons["total_server_preemption_count"] == "the target reports no preemption counts"
    out = Record()
    study._server_fields(out, [rec(0, {"preemptions": 2}), rec(1, {"ttft_ms": 95.0}), rec(2, {"preemptions": 1})])
    assert out["total_server_preemption_count"] == 3
