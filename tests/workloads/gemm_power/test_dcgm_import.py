"""--import-dcgm: small synthetic dmon files in the paper's layout and with a mapping.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from charbench.cli import main
from charbench.workloads.gemm_power.dcgm_import import discover, parse_dmon, steady_stats

HEADER = ("#Entity   SMCLK        MMCLK        POWER             GPUTL\n"
          "ID                                    W                      \n")


def _dmon(path: Path, rows: list[tuple[float, float, float]]) -> None:
    """rows: (SMCLK, POWER, GPUTL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"GPU 0     {c:<12g} 1512         {p:<17.3f} {u:g}\n" for c, p, u in rows)
    path.write_text(HEADER + body + "GPU 0     1410\n")  # the last line cut short when dmon was killed


def _paper_tree(root: Path) -> Path:
    res = root / "a100_expt_results"
    for seed in (1, 2):
        _dmon(res / "fp16-t" / "baseline" / f"{seed}.tsv", [(1410, 70.0, 2), (1380, 290.0 + seed, 95), (1380, 292.0 + seed, 96)])
        for p, w in ((0.0, 300.0), (0.5, 280.0), (1.0, 200.0)):
            _dmon(res / "fp16-t" / "11-sparsity" / f"{seed}_{p}.tsv", [(1380, w + seed, 99), (1410, 60.0, 10)])
        for n, w in ((0, 250.0), (8, 230.0), (16, 190.0)):
            _dmon(res / "fp16-t" / "14-bits-least-zeros" / f"{seed}_{n}.tsv", [(1395, w - seed, 97)])
    _dmon(res / "other_expt" / "ones.tsv", [(1410, 72.0, 0), (1410, 71.0, 0)])
    _dmon(res / "other_expt" / "bit_flips" / "3.tsv", [(1410, 230.0, 100)])
    (res / "bit_metrics" / "fp16").mkdir(parents=True)
    return res


def test_parse_and_steady_samples(tmp_path: Path) -> None:
    _dmon(tmp_path / "t.tsv", [(1410, 70.0, 2), (1380, 290.0, 95), (1370, 294.0, 90)])
    cols = parse_dmon(tmp_path / "t.tsv")
    assert cols["POWER"] == [70.0, 290.0, 294.0] and cols["GPUTL"] == [2.0, 95.0, 90.0]
    s = steady_stats(cols)
    assert (s["mean_power_w"], s["mean_sm_clock_mhz"], s["sample_count"], s["steady_sample_count"]) == (292.0, 1375.0, 3, 2)
    assert steady_stats(cols, steady=False)["mean_power_w"] == pytest.approx(218.0)


def test_discover_reads_the_papers_layout(tmp_path: Path) -> None:
    entries = discover(_paper_tree(tmp_path))  # the <gpu>_expt_results folder itself
    assert len(entries) == 2 + 6 + 6 + 2
    assert {(e.dtype, e.experiment) for e in entries} >= {("fp16", "baseline"), ("fp16", "sparsity"), ("fp16", "zero-low-bits"),
                                                           ("int8", "memory-ones"), ("int8", "bit-flips")}
    assert len(discover(tmp_path)) == len(entries)  # or its parent


def test_import_makes_a_run_folder_with_fit_and_headline(tmp_path: Path, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _paper_tree(tmp_path)
    assert main(["gemm-power", "--device", "cpu", "--import-dcgm", str(tmp_path), "--size", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["points_failed"] == 0
    run = sorted((charbench_home / "gemm-power").iterdir())[-1]
    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 16 and set(df["backend"]) == {"cutlass (DCGM, imported)"} and set(df["dtype"]) == {"fp16", "int8"}
    base = df[(df["experiment"] == "baseline") & (df["seed"] == 1)].iloc[0]
    assert base["mean_power_w"] == 292.0 and base["mean_sm_clock_mhz"] == 1380.0 and base["steady_sample_count"] == 2
    assert json.loads(base["provenance"])["mean_power_w"].startswith("DCGM, imported (a100_expt_results/fp16-t/baseline/1.tsv")
    sparse = df[(df["experiment"] == "sparsity") & (df["value"] == 1.0)]
    assert (sparse["zero_a_frac"] == 1.0).all() and (sparse["features_seed"] == 1).all()  # inputs regenerated (paper generator)
    ones = df[df["experiment"] == "memory-ones"].iloc[0]
    assert ones["mean_power_w"] == 71.5  # all samples: nothing runs during experiment 16
    (h,) = summary["summary"]["headline"]
    assert h["dtype"] == "fp16" and h["baseline"] == 292.5 and h["lowest"] == 188.5 and h["at_lowest"] == "zero-low-bits=16"
    assert (run / "report.html").is_file()


def test_mapping_folder_and_its_errors(tmp_path: Path, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _dmon(tmp_path / "a.tsv", [(1410, 100.0, 99)])
    (tmp_path / "mapping.csv").write_text("file,dtype,experiment,value,seed\na.tsv,fp32,11,0.5,3\n")
    (e,) = discover(tmp_path)
    assert (e.dtype, e.experiment, e.value, e.seed) == ("fp32", "sparsity", 0.5, 3)
    (tmp_path / "mapping.csv").write_text("file,dtype,experiment,value,seed\nb.tsv,fp32,sparsity,0.5,3\n")
    assert main(["gemm-power", "--device", "cpu", "--import-dcgm", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"Error: --import-dcgm: {tmp_path}/mapping.csv line 2: file not found: {tmp_path}/b.tsv"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["gemm-power", "--device", "cpu", "--import-dcgm", str(empty)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"Error: --import-dcgm: no traces in {empty}; expected the paper's layout")
