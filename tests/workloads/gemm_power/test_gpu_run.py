"""A 2-point gemm-power run on a GPU with NVML energy (skipped without CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_two_point_run_records_nvml_energy(charbench_home: Path) -> None:
    import pandas as pd

    from charbench.cli import main

    rc = main(["gemm-power", "--device", "cuda", "--experiments", "baseline", "--seeds", "1,2", "--dtypes", "fp16",
               "--size", "2048", "--duration", "2", "--cooldown", "0", "--idle-baseline", "2"])
    assert rc == 0
    run = next((charbench_home / "gemm-power").iterdir())
    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 2
    assert df["energy_j"].notna().all() and (df["energy_j"] > 0).all()
    assert (df["mean_power_w"] > 20).all()
    assert df["energy_net_j"].notna().all()
    assert (df["throughput_tflop_s"] > 1).all()
    assert df["mean_gpu0_sm_clock_mhz"].notna().all()
    prov = json.loads(df["provenance"].iloc[0])
    assert "nvml" in prov["energy_j"]
    assert (run / "report.html").is_file()
