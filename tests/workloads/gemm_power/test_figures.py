"""The report's GPU path (measured power, clocks, fitted model) on a synthetic run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from charbench.report import render_run
from charbench.results import RunStore
from charbench.workloads.gemm_power.experiments import get_experiment


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    recs = []
    i = 0
    for dtype in ("fp16", "bf16"):
        for name in ("sparsity", "sort-rows", "bits-low", "unique"):
            exp = get_experiment(name)
            for v in exp.values("fp", "quick", 16):
                for seed in (1, 2):
                    t, h, z = rng.uniform(0, 0.5), rng.uniform(0.2, 0.6), rng.uniform(0, 1)
                    p = 180 + 250 * t + 30 * h - 40 * z + rng.normal(0, 1)
                    recs.append({
                        "point_key": f"p{i}", "point_index": i, "dtype": dtype, "backend": "torch", "experiment": name,
                        "param": exp.param, "value": float(v), "seed": seed, "repeat": 0, "device_name": "NVIDIA H200",
                        "m": 2048, "n": 2048, "k": 2048, "avg_power_w": p, "energy_j": p * 5, "energy_net_j": (p - 80) * 5,
                        "energy_per_gemm_j": p * 5 / 1000, "tflop_per_s": 600 - 0.5 * p, "time_per_gemm_ms": 0.03,
                        "gpu0_sm_clock_mean_mhz": 1980 - p, "gpu0_power_mean_w": p + 1, "toggle_k_frac": t, "hamming_frac": h,
                        "zero_operand_frac": z, "toggle_mn_frac": t, "bit_alignment_frac": 0.5, "zero_product_frac": z,
                        "provenance": json.dumps({"energy_j": "nvml-energy-counter"}), "null_reasons": "{}",
                    })
                    i += 1
    return recs


def test_gpu_report_has_power_model_and_paper_overlay(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "gemm-power", config={"study_config": {"size": [2048] * 3, "duration_s": 5.0}},
                            env={}, report_hook="charbench.workloads.gemm_power.figures:report_sections")
    store.update_meta(device="cuda:0")
    store.append_records(_records())
    store.finish("completed")
    html = render_run(store.path).read_text()
    assert "Power source: " in html and ">NVML</span>" in html
    assert "Power was not measured" not in html
    for text in ("11. sparsity", "8. sort-rows", "5. bits-low", "3. unique", "SM clock (MHz)", "TFLOP",
                 "energy per GEMM (mJ)", "paper A100 fp16", "leave-one-experiment-out MAE (W)", "toggle_w",
                 "paper A100 baseline (W)", "297"):
        assert text in html, text
    assert "No power data to fit" not in html


def test_sampled_power_fallback_is_labeled_sampled(tmp_path: Path) -> None:
    """Without counter energy the figures fall back to the sampler's mean power: labeled, not shown as measured."""
    recs = _records()
    for r in recs:
        r["avg_power_w"] = r["energy_j"] = r["energy_net_j"] = r["energy_per_gemm_j"] = None
        r["provenance"] = "{}"
        r["null_reasons"] = json.dumps({"energy_j": "gpu0: energy counter unreadable"})
    store = RunStore.create(tmp_path, "gemm-power", config={"study_config": {"size": [2048] * 3}},
                            env={}, report_hook="charbench.workloads.gemm_power.figures:report_sections")
    store.update_meta(device="cuda:0")
    store.append_records(recs)
    store.finish("completed")
    html = render_run(store.path).read_text()
    assert '<span class="badge estimated">sampled</span>' in html and "gpu0_power_mean_w" in html
    assert "power, sampled mean (W)" in html and "fp16\\u002ftorch sampled" in html  # "/" is JSON-escaped in figures
    assert "torch measured" not in html
    assert ">NVML</span>" not in html
