"""cluster-sim end to end (small) and its option errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from charbench.cli import main
from charbench.results import RunStore


class _Res:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.exit_code, self.stdout, self.output = rc, out, out + err


def _invoke(args: list[str], capsys: pytest.CaptureFixture[str]) -> _Res:
    rc = main(["cluster-sim", *args])
    out = capsys.readouterr()
    return _Res(rc, out.out, out.err)


def test_default_run_small_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _invoke(["--out", str(tmp_path), "--duration", "10m", "--rate", "6", "--json"], capsys)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert payload["status"] == "completed" and payload["points_done"] == 4
    store = RunStore.open(Path(payload["run_dir"]))
    recs = store.records()
    assert [r["policy"] for r in recs] == ["static", "dynamollm", "polca", "greener"]
    for r in recs:
        prov = json.loads(r["provenance"])
        assert prov["energy_kwh"] == "estimated (simulated; nothing was measured)"
        assert r["energy_kwh"] > 0 and 0 <= r["slo_attainment_frac"] <= 1 and r["carbon_kgco2e"] > 0 and r["cost_usd"] > 0
    comp = store.read_table("comparison")
    assert comp.loc[comp["policy"] == "static", "energy_delta_pct"].iloc[0] == 0.0
    assert set(store.tables()) >= {"requests", "timeline", "comparison"}
    n = recs[0]["request_count"]
    assert len(store.read_table("requests")) == n * 3 + recs[2]["request_count"]  # polca serves its extra servers' load
    run = Path(payload["run_dir"])
    assert (run / "report.html").is_file()
    # the report's content (a simulator has only the not-measured branch: every value is simulated)
    from report_content import close, report_content, trace_xy

    content = report_content(run)
    table = content.table_with_column("energy_delta_pct")
    assert list(table["policy"]) == ["static", "dynamollm", "polca+0.3", "greener"]  # POLCA labeled with its oversubscription
    assert close(list(table["energy_kwh"]), [r["energy_kwh"] for r in recs])
    assert close(list(table["energy_delta_pct"]), [(r["energy_kwh"] - recs[0]["energy_kwh"]) / recs[0]["energy_kwh"] * 100 for r in recs])
    timeline = store.read_table("timeline")
    cluster = timeline[(timeline["pool"] == -1) & (timeline["policy"] == "static")]
    fig = content.figure_with_trace("static")
    x, y = trace_xy(fig, "static", axis="y2")  # cluster power, the second row
    assert close(x, list(cluster["t_s"] / 3600)) and close(y, list(cluster["power_w"]))
    requests = store.read_table("requests")
    ttft = sorted(requests[requests["policy"] == "static"]["ttft_ms"].dropna())
    cdf = content.figures[-1]
    x, y = trace_xy(cdf, "static", axis="y")
    assert x[0] == ttft[0] and x[-1] == ttft[-1] and y[-1] == 1.0


@pytest.mark.parametrize(("args", "message"), [
    (["--policies", "static,foo"], "Error: --policies: unknown policy 'foo'; valid: dynamollm, greener, polca, static (add one with --policy-file)"),
    (["--duration", "soon"], "Error: --duration: 'soon' is not a duration; e.g. --duration 1h, 30m or 600"),
    (["--rate", "0"], "Error: --rate must be a finite number > 0 and <= 100000 (got 0.0)"),
    (["--profile", "v100"], "Error: --profile: unknown GPU 'v100'; valid: a100, h100, h200, or a profile file (.json/.csv)"),
    (["--model", "gpt-9"], "Error: --model: unknown model 'gpt-9'; valid: llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, llama-3-70b"),
    (["--tp", "1"], "Error: --tp 1: profile h100 covers tp 2, 4, 8 for llama-2-70b"),
    (["--routing", "random"], "Error: --routing: unknown routing 'random'; valid: least-outstanding, round-robin"),
    (["--profile", "x.json"], "Error: --profile x.json: a measured profile does not record the KV-cache size; give --kv-capacity-tokens"),
    (["--chunk-tokens", "64"], "Error: --chunk-tokens 64 must exceed --max-num-seqs 128: an iteration carries every running decode plus prompt tokens"),
    (["--predictor-accuracy", "1.5"], "Error: --predictor-accuracy must be a finite number >= 0 and <= 1 (got 1.5)"),
    (["--trace", "missing.csv"], "Error: --trace: file not found: missing.csv"),
])
def test_bad_options_give_exact_errors(tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    res = _invoke(["--out", str(tmp_path), "--duration", "2m", *args], capsys)
    assert res.exit_code == 1
    assert message in res.output, res.output
    assert "Traceback" not in res.output


def test_azure_2024_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "AzureLLMInferenceTrace_conv_1week.csv"
    rows = [f"2024-05-12 00:00:{s:02d}.{'1' * (1 + s % 6)}+00:00,{100 + s},{20 + s}" for s in range(0, 60, 2)]
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    res = _invoke(["--out", str(tmp_path), "--trace", str(f), "--policies", "static,greener", "--instances", "1", "--json"], capsys)
    assert res.exit_code == 0, res.output
    recs = RunStore.open(Path(json.loads(res.stdout[res.stdout.index("{"):])["run_dir"])).records()
    assert [r["request_count"] for r in recs] == [30, 30] and "AzureLLMInferenceTrace_conv_1week.csv" in recs[0]["trace"]


def test_measured_profile_without_power_gives_null_energy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charbench.profiles import write_profile

    entries = [{"model": "tiny", "tp": 1, "sm_freq_mhz": None, "max_num_seqs": 8, "input_len": 64, "output_len": 32, "load_kind": "rate",
                "request_rate_rps": rate, "request_throughput_rps": rate, "median_e2el_ms": 30 + 31 * tpot, "median_tpot_ms": tpot,
                "median_ttft_ms": 30.0, "mean_power_w": None, "error_frac": 0.0, "provenance": {}} for rate, tpot in ((2.0, 6.0), (6.0, 9.0))]
    prof = write_profile(entries, tmp_path / "cpu.json")
    res = _invoke(["--out", str(tmp_path), "--profile", str(prof), "--kv-capacity-tokens", "100000", "--model", "tiny", "--tp", "1",
                   "--policies", "static", "--duration", "2m", "--rate", "2", "--json"], capsys)
    assert res.exit_code == 0, res.output
    rec = RunStore.open(Path(json.loads(res.stdout[res.stdout.index("{"):])["run_dir"])).records()[0]
    reasons = json.loads(rec["null_reasons"])
    assert rec["energy_kwh"] is None and rec["carbon_kgco2e"] is None and rec["max_power_w"] is None
    assert reasons["energy_kwh"] == "profile cpu.json has no measured power (mean_power_w null)"
    assert rec["p50_ttft_ms"] > 0 and rec["gpu_cost_usd"] > 0 and rec["profile_kind"] == "measured"
