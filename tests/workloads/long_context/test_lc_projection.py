"""The analytic projection on hand-computed values, and the calibration from measured ratios."""

from __future__ import annotations

import dataclasses

import pytest
from charbench.sim.hardware import GpuSpec, ModelSpec
from charbench.workloads.long_context.analysis import calibration, paper_rows, projection_rows
from charbench.workloads.long_context.config import PRESETS
from charbench.workloads.long_context.projection import Calibration, ideal_decode_ratio, ideal_prefill_ratio, project

MODEL = ModelSpec("toy", 1e9, 10, 1000, 2, 100, 1 << 20)
GPU = GpuSpec("h100", 1e15, 1e12, 80e9, 700.0, 75.0, 1980.0, 800.0, (1980.0,), 100e9, "test")


def test_one_gpu_by_hand() -> None:
    p = project(MODEL, GPU, (1, 1, 1), 4096, Calibration())
    # (2e9 x 4096 + 2 x 10 x 1000 x 4096^2) FLOPs at 0.5 x 1e15 FLOP/s; one chunk bubble-free pipeline of 1 stage
    assert p.ttft_s == pytest.approx((8.192e12 + 3.3554432e11) / 5e14, rel=1e-12)
    # weights 2e9 B + KV 4096 x 8000 B at 0.7 x 1e12 B/s, plus the 4 ms iteration overhead
    assert p.tbt_s == pytest.approx(2e9 / 0.7e12 + 4096 * 8000 / 0.7e12 + 0.004, rel=1e-12)
    assert p.memory_per_gpu_bytes == 2e9 + 4096 * 8000 and p.fits and p.gpus == 1


def test_3d_layout_with_calibration_by_hand() -> None:
    p = project(MODEL, GPU, (2, 2, 2), 4096, Calibration(eta_spp=0.8, eta_kvp=0.5, eta_tp=1.0))
    compute = (8.192e12 / 2 + 3.3554432e11 / 4) / 2 * 1.5 / 5e14 / 0.8  # 2 chunks + 1 bubble over 2 chunks
    comm = 2 * 5 * 8.192e6 / 100e9 + 5 * 8.192e6 / 100e9 + 2048 * 1000 * 2 / 100e9  # TP, KVP, SPP on NVLink (8 GPUs)
    assert p.ttft_s == pytest.approx(compute + comm, rel=1e-12)
    lat = 2 * 10 * 8e-6 + 10 * 5e-6 + 5e-6
    assert p.tbt_s == pytest.approx(2e9 / 2 / 0.7e12 + 4096 * 8000 / 4 / 0.7e12 / 0.5 + lat + 0.004, rel=1e-12)
    assert p.memory_per_gpu_bytes == 2e9 / 4 + 4096 * 8000 / 8 and p.gpus == 8


def test_ideal_ratios() -> None:
    assert ideal_prefill_ratio(1.0, 3.0, 2, 1, 1, 4) == pytest.approx(0.5 * 5 / 4)
    assert ideal_prefill_ratio(1.0, 3.0, 1, 2, 1, 4) == pytest.approx((1 + 1.5) / 4)
    assert ideal_decode_ratio(1.0, 3.0, 1, 2) == pytest.approx(2.5 / 4)


def _rec(parallel: str, context: int, ttft: float, tbt: float) -> dict[str, object]:
    return {"workload": "prefill", "parallel": parallel, "context": context, "ttft_ms": ttft, "p50_tbt_ms": tbt}


def test_calibration_from_measured_ratios() -> None:
    cfg = dataclasses.replace(PRESETS["quick"], prefill_chunk=256)
    recs = [_rec("1x1x1", 512, 40.0, 5.0), _rec("1x1x1", 1024, 100.0, 10.0), _rec("1x2x1", 1024, 80.0, 11.0),
            _rec("1x1x2", 1024, 90.0, 12.0), _rec("1x2x1", 512, 30.0, 6.0)]
    recs[2].update(machine_busy=True, machine_load1_count=7.5)
    calib, rows = calibration(recs, cfg)
    assert rows[0]["note"] == "used (capped at 1); busy machine (1-min load 7.5): ranks shared cores, a lower bound"
    # spp at the largest common context (1024): measured 0.8, ideal 0.5 x (4 chunks + 1) / 4 = 0.625
    from charbench.workloads.long_context.analysis import _cpu_flops

    lin, attn, _, _ = _cpu_flops("nano-long", 1024)
    ideal = ideal_prefill_ratio(lin, attn, 2, 1, 1, 4)
    assert ideal == pytest.approx(0.625)
    assert calib.eta_spp == pytest.approx(0.625 / 0.8)
    # kvp=2 decode slower than 1x1x1 (1.2x): latency-bound, not used
    assert calib.eta_kvp == 1.0 and calib.eta_tp == 1.0
    assert [(r["degree"], r["context"], r["measured_ratio"]) for r in rows] == [("spp", 1024, 0.8), ("kvp", 1024, 1.2)]
    assert rows[1]["note"].startswith("not used: the parallel layout was not faster than 1x1x1")


def test_projection_and_paper_tables() -> None:
    cfg = PRESETS["quick"]
    rows = projection_rows(cfg, Calibration())
    assert len(rows) == 2 * 3 * 4 * 7 and {r["kind"] for r in rows} == {"projected"}
    from charbench.sim.hardware import gpu_spec, model_spec

    r = next(r for r in rows if (r["model"], r["gpu"], r["context"], r["layout"]) == ("llama-3-70b", "a100", 10_485_760, "8x4x2"))
    p = project(model_spec("llama-3-70b"), gpu_spec("a100"), (8, 4, 2), 10_485_760, Calibration())
    assert r["projected_ttft_s"] == p.ttft_s and r["projected_tbt_ms"] == p.tbt_s * 1e3 and r["fits_memory"] == p.fits
    paper = paper_rows(Calibration())
    assert [x["paper_value"] for x in paper] == [1000 / 30, 40.0, 250.0, 85.0, 16.0, 2.0]
    b = project(model_spec("llama-3-8b"), gpu_spec("h100"), (8, 1, 1), 10_485_760, Calibration())
    k = project(model_spec("llama-3-8b"), gpu_spec("h100"), (8, 1, 2), 10_485_760, Calibration())
    assert paper[1]["projected_value"] == pytest.approx(100 * (1 - k.tbt_s / b.tbt_s))
