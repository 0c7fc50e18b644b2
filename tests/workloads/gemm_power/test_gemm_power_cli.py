"""``charbench gemm-power`` end to end on the CPU, --predict, and bad input (exact messages, exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from charbench.cli import main
from charbench.workloads.gemm_power.analysis import paper_a100
from report_content import SectionContent, capture_sections, close, trace_xy

# one repeat: the tests check values per point (the default repeats short CPU points 3 times, tests/workloads/gemm_power/test_noise_defaults.py)
SMALL = ["--device", "cpu", "--experiments", "sparsity,unique", "--size", "32", "--duration", "0.02", "--cooldown", "0", "--repeats", "1"]


def _run_dir(home: Path) -> Path:
    runs = sorted((home / "gemm-power").iterdir())
    assert runs, "no run folder"
    return runs[-1]


def _section(run: Path, builder: str, *args: object) -> SectionContent:
    """What one gemm-power section builder draws for the run folder (figures and tables, as data)."""
    from charbench.report import RunData
    from charbench.workloads.gemm_power import figures

    (content,) = capture_sections(lambda d: [getattr(figures, builder)(d, *args)], figures, RunData.load(run)).sections
    return content


def _means(df: pd.DataFrame, metric: str, dtype: str, experiment: str, scale: float = 1.0) -> tuple[list, list]:
    d = df[(df["dtype"] == dtype) & (df["experiment"] == experiment)].groupby("value", sort=True)[metric].mean()
    return list(d.index), [v * scale for v in d.tolist()]


def test_quick_run_on_cpu_writes_a_full_report(charbench_home: Path, capsys: pytest.CaptureFixture[str], meter_branch: str) -> None:
    assert main(["gemm-power", *SMALL, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["points_failed"] == 0
    run = _run_dir(charbench_home)
    df = pd.read_parquet(run / "results.parquet")
    assert set(df["dtype"]) == {"fp32", "bf16"} and set(df["backend"]) == {"torch"}
    assert len(df) == 2 * (4 + 3)
    # timing is always measured; a missing meter never stops the run
    assert df["time_per_gemm_ms"].notna().all() and (df["throughput_tflop_s"] > 0).all()
    assert df["toggle_k_frac"].notna().all() and df["zero_operand_frac"].between(0, 1).all()
    sparse = df[(df["experiment"] == "sparsity") & (df["value"] == 1.0)]
    assert (sparse["zero_operand_frac"] == 1.0).all() and (sparse["toggle_k_frac"] == 0).all()
    measured = meter_branch == "measured"
    if measured:  # the fake meter draws 45 W in every window
        assert df["mean_power_w"].between(44.0, 46.0).all() and df["energy_per_gemm_j"].notna().all()
    else:
        reasons = json.loads(df["null_reasons"].iloc[0])
        assert df["energy_j"].isna().all() and reasons["energy_j"] and reasons["energy_per_gemm_j"] == reasons["energy_j"]
    assert (run / "report.html").is_file()
    # every experiment's figure plots the records' means per swept value: power (measured) or time per GEMM (not)
    for name in ("sparsity", "unique"):
        (fig,) = _section(run, "_experiment_section", name).figures
        for dtype in ("fp32", "bf16"):
            x, y = trace_xy(fig, f"{dtype} / torch", axis="y")
            ex, ey = _means(df, "mean_power_w" if measured else "time_per_gemm_ms", dtype, name)
            assert x == ex and close(y, ey), (name, dtype)
            x, y = trace_xy(fig, f"{dtype} / torch", axis="y2")
            ex, ey = _means(df, "energy_per_gemm_j", dtype, name, 1e3) if measured else _means(df, "throughput_tflop_s", dtype, name, 1e3)
            assert x == ex and close(y, ey), (name, dtype)
        # the paper's A100 trend is drawn beside measured power only, with the paper's numbers
        trend = paper_a100().get("trends", {}).get(name, {})
        overlays = {t.name for t in fig.data if t.name.startswith("paper A100")}
        assert overlays == ({f"paper A100 {dt}" for dt in trend} if measured else set())
        for dt, pts in trend.items() if measured else ():
            assert trace_xy(fig, f"paper A100 {dt}") == ([p[0] for p in pts], [p[1] for p in pts])
    # the power model: fitted on measured power (one row per dtype), nothing to fit or plot without it
    model = _section(run, "_model_section")
    if measured:
        (table,) = model.tables
        assert sorted(table["dtype"]) == ["bf16", "fp32"] and set(table["power column"]) == {"mean_power_w"}
        assert list(table["points"]) == [int((df["dtype"] == d).sum()) for d in table["dtype"]]
        (scatter,) = model.figures
        x, y = trace_xy(scatter, "fp32/torch measured")
        fp32 = df[df["dtype"] == "fp32"]
        assert close(x, list(fp32["toggle_k_frac"])) and close(y, list(fp32["mean_power_w"]))
    else:
        assert model.tables == [] and model.figures == []
    # switching activity of the first dtype's inputs, means over seeds
    (features,) = _section(run, "_features_section").tables
    first = df[df["dtype"] == df["dtype"].iloc[0]].groupby(["experiment", "value"], sort=False)["toggle_k_frac"].mean()
    assert close(list(features["toggle_k_frac"]), first.tolist())
    # the correctness check against float64, one row per dtype/backend
    (correct,) = _section(run, "_summary_section").tables
    assert json.loads((run / "correctness.json").read_text())["fp32/torch"]["ok"] is True
    assert len(correct) == 2


def test_predict_labels_power_estimated(charbench_home: Path, tmp_path: Path) -> None:
    from charbench.workloads.gemm_power.analysis import PowerModel, save_calibration

    cal = save_calibration([
        PowerModel("GPU X", "fp32", "torch", [100.0, 200.0, 10.0, -50.0], r2=0.9),
        PowerModel("GPU X", "bf16", "torch", [120.0, 180.0, 0.0, -40.0], r2=0.8),
    ], tmp_path / "cal.json", source="gpu-run")
    assert main(["gemm-power", "--device", "cpu", "--experiments", "sparsity", "--size", "64", "--duration", "0.05",
                 "--predict", str(cal)]) == 0
    run = _run_dir(charbench_home)
    df = pd.read_parquet(run / "results.parquet")
    assert df["power_estimated_w"].notna().all()
    p0 = df[(df["dtype"] == "fp32") & (df["value"] == 1.0)]["power_estimated_w"].iloc[0]
    assert p0 == pytest.approx(100.0 - 50.0)  # all zeros: no toggles, no ones, zero fraction 1
    prov = json.loads(df["provenance"].iloc[0])
    assert prov["power_estimated_w"].startswith("estimated: calibration cal.json")
    from charbench.workloads.gemm_power.figures import power_provenance

    assert (run / "report.html").is_file() and power_provenance(df)[0] == "estimated"
    # the estimated power is what the power row plots (the figure's note says estimated)
    sec = _section(run, "_experiment_section", "sparsity")
    for dtype in ("fp32", "bf16"):
        x, y = trace_xy(sec.figures[0], f"{dtype} / torch", axis="y")
        ex, ey = _means(df, "power_estimated_w", dtype, "sparsity")
        assert x == ex and close(y, ey)
    assert sec.note.endswith("Power is estimated (calibration), not measured.")


def test_nan_output_fails_the_point_with_the_reason(charbench_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from charbench.kernels.gemm.torch_backend import TorchGemm

    real = TorchGemm.prepare

    def poisoned(self, a, b, spec, *, alpha=1.0):  # type: ignore[no-untyped-def]
        g = real(self, a, b, spec, alpha=alpha)
        inner = g.run

        def run():  # type: ignore[no-untyped-def]
            inner()
            g.out[0, 0] = float("nan")

        g.run = run
        return g

    monkeypatch.setattr(TorchGemm, "prepare", poisoned)
    base = ["gemm-power", "--device", "cpu", "--experiments", "sigma", "--dtypes", "fp32", "--size", "64",
            "--duration", "0.02", "--continue-on-error", "--repeats", "1"]
    # the correctness check against float64 catches the broken kernel first ...
    assert main(base) == 0
    run = _run_dir(charbench_home)
    fails = [json.loads(p.read_text()) for p in (run / "failures").glob("*.json")]
    assert len(fails) == 3 and all(f["error_type"] == "PointFailedError" for f in fails)
    assert "backend torch with fp32 failed its correctness check: torch fp32 128x128x128: relative error inf" in fails[0]["message"]
    # ... and without it, the NaN in the output fails each point with the reason
    cfg = charbench_home.parent / "nocheck.toml"
    cfg.write_text("check_correctness = false\n")
    assert main([*base, "--config", str(cfg)]) == 0
    run = _run_dir(charbench_home)
    fails = [json.loads(p.read_text()) for p in (run / "failures").glob("*.json")]
    assert len(fails) == 3
    assert fails[0]["error_type"] == "PointFailedError"
    assert "output has 1 non-finite element(s) of 4096 (1 NaN, 0 Inf)" in fails[0]["message"]
    assert "the inputs cannot overflow" in fails[0]["message"]
    assert json.loads((run / "run.json").read_text())["points_failed"] == 3
    assert torch.isnan(torch.tensor(float("nan")))


@pytest.mark.parametrize("args,message", [
    (["--experiments", "sparsity,bogus"],
     "Error: --experiments: unknown name 'bogus'; valid: sigma, mu, unique, bits-random, bits-low, bits-high, sorted-mu, "
     "sort-rows, sort-cols, sort-within-rows, sparsity, sorted-sparsity, sort-rows-no-transpose, zero-low-bits, "
     "zero-high-bits, baseline, memory-ones, memory-zeros, bit-flips, idle or all"),
    (["--dtypes", "fp64"],
     "Error: --dtypes: unknown name 'fp64'; valid: fp32, tf32, fp16, fp16-simt, bf16, int8, fp8-e4m3, fp8-e5m2 or all"),
    (["--backends", "cutlass"], "Error: --backends: unknown name 'cutlass'; valid: torch, cupy, cuda-simt, cuda-tc, triton or all"),
    (["--dtypes", "tf32"],
     "Error: --dtypes tf32: tf32 runs on tensor cores: it needs a CUDA GPU with compute capability >= 8.0; this device is cpu"),
    (["--dtypes", "fp8-e4m3"],
     "Error: --dtypes fp8-e4m3: fp8-e4m3 runs on tensor cores: it needs a CUDA GPU with compute capability >= 8.9; this device is cpu"),
    (["--dtypes", "fp16-simt"],
     "Error: --dtypes fp16-simt: none of the requested backends (torch) implements it; use --backends cuda-simt"),
    (["--backends", "cuda-tc", "--dtypes", "fp16"],
     "Error: --backends cuda-tc: backend cuda-tc runs charbench's CUDA kernels: it needs a CUDA GPU (and CuPy); this device is cpu"),
    (["--size", "12,abc"], "Error: --size: expected M,N,K (e.g. 2048,2048,2048) or one number, got '12,abc'"),
    (["--seeds", "a-b"], "Error: --seeds: expected integers like 1,2,3 or 1-10, got 'a-b'"),
    (["--preset", "huge"], "Error: --preset: unknown preset 'huge'; valid: quick, paper"),
    (["--duration", "0"], "Error: --duration must be a finite number > 0 and <= 86400 (got 0.0)"),
])
def test_bad_input_exact_messages(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gemm-power", "--device", "cpu", *args]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_size_that_does_not_fit_is_refused_before_allocation(capsys: pytest.CaptureFixture[str], charbench_home: Path) -> None:
    assert main(["gemm-power", "--device", "cpu", "--size", "400000", "--dtypes", "fp32"]) == 1
    err = capsys.readouterr().err
    assert "Error: --size 400000,400000,400000 with fp32: needs about" in err
    assert "GiB is free; use a smaller --size" in err
    assert not (charbench_home / "gemm-power").exists()  # refused before any run folder or allocation


def test_predict_with_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["gemm-power", "--device", "cpu", "--predict", str(tmp_path / "nope.json")]) == 1
    assert f"Error: --predict: calibration file not found: {tmp_path / 'nope.json'}" in capsys.readouterr().err


def test_parse_size_accepts_cubes_and_triples_only() -> None:
    from charbench.errors import ConfigError
    from charbench.workloads.gemm_power.cli import parse_size

    assert parse_size("256") == [256, 256, 256]
    assert parse_size("128,256, 512") == [128, 256, 512]
    assert parse_size("128x256X512") == [128, 256, 512]
    for bad in ("3x", "4,,4,4", "256,", "abc", "1,2", "0", ""):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(bad)


def test_parse_seeds_ranges_and_limit() -> None:
    from charbench.errors import ConfigError
    from charbench.workloads.gemm_power.cli import MAX_SEEDS, parse_seeds

    assert parse_seeds("1,2,5-7") == [1, 2, 5, 6, 7]
    assert len(parse_seeds(f"1-{MAX_SEEDS}")) == MAX_SEEDS
    with pytest.raises(ConfigError, match=r"--seeds: '1-100000000' is 100000000 seeds; at most 10000"):
        parse_seeds("1-100000000")  # refused at once, without building the list
    with pytest.raises(ConfigError, match="at most 10000"):
        parse_seeds(",".join(str(i) for i in range(MAX_SEEDS + 1)))


def test_point_count_matches_points_and_huge_sweeps_are_refused(capsys: pytest.CaptureFixture[str], charbench_home: Path) -> None:
    import dataclasses

    from charbench.workloads.gemm_power.config import PRESETS, resolve
    from charbench.workloads.gemm_power.run import GemmPowerStudy

    cfg = resolve(dataclasses.replace(PRESETS["quick"], dtypes=["fp32", "bf16"], seeds=[1, 2], repeats=3, size=[8, 8, 8]), "cpu")
    study = GemmPowerStudy(cfg, "cpu")
    assert study.point_count() == len(study.points())
    assert main(["gemm-power", "--device", "cpu", "--size", "8", "--repeats", "100000000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: gemm-power: ") and "is more than 1000000; lower --repeats or --seeds" in err
    assert not (charbench_home / "gemm-power").exists()


def test_resume_continues_the_saved_config_and_refuses_other_options(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--device", "cpu", "--experiments", "sigma", "--dtypes", "fp32", "--size", "16", "--duration", "0.01", "--cooldown", "0"]
    assert main(["gemm-power", *tiny, "--seeds", "1,2", "--json"]) == 0
    run = _run_dir(charbench_home)
    done = json.loads(capsys.readouterr().out)["points_done"]
    # before: a bare --resume rebuilt the quick preset, whose config differs from the run's
    assert main(["gemm-power", "--resume", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["run_dir"], out["status"], out["points_done"]) == (str(run), "completed", done)
    # the options the run was made with are accepted; others are refused by name
    assert main(["gemm-power", "--resume", str(run), "--dtypes", "fp32", "--size", "16", "--json"]) == 0
    capsys.readouterr()
    assert main(["gemm-power", "--resume", str(run), "--dtypes", "bf16", "--seeds", "1-3", "--shuffle"]) == 1
    assert capsys.readouterr().err == (
        f"Error: --resume {run}: the options given differ from the run's (in: dtypes, seeds, shuffle); "
        f"drop them to continue with the saved ones (see {run / 'config.json'}), or start a new run without --resume\n"
    )
    (run / "config.json").unlink()
    # before: the quick preset's points were added to this run
    assert main(["gemm-power", "--resume", str(run)]) == 1
    assert capsys.readouterr().err == (
        f"Error: --resume {run}: config.json is missing; this is not a resumable run folder (start a new run without --resume)\n"
    )
