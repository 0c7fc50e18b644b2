"""The report's GPU path (measured power, clocks, fitted model) on a synthetic run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from charbench.report import render_run
from charbench.results import RunStore
from charbench.workloads.gemm_power.experiments import get_experiment
from report_content import SectionContent, capture_sections


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
                        "m": 2048, "n": 2048, "k": 2048, "mean_power_w": p, "energy_j": p * 5, "energy_net_j": (p - 80) * 5,
                        "energy_per_gemm_j": p * 5 / 1000, "throughput_tflop_s": 600 - 0.5 * p, "time_per_gemm_ms": 0.03,
                        "mean_gpu0_sm_clock_mhz": 1980 - p, "mean_gpu0_power_w": p + 1, "toggle_k_frac": t, "hamming_frac": h,
                        "zero_operand_frac": z, "toggle_mn_frac": t, "bit_alignment_frac": 0.5, "zero_product_frac": z,
                        "provenance": json.dumps({"energy_j": "nvml-energy-counter"}), "null_reasons": "{}",
                    })
                    i += 1
    return recs


def _content(path: Path, builder: str, *args: object) -> SectionContent:
    """What one section builder draws for the run folder (figures and tables as data)."""
    from charbench.report import RunData
    from charbench.workloads.gemm_power import figures

    (content,) = capture_sections(lambda d: [getattr(figures, builder)(d, *args)], figures, RunData.load(path)).sections
    return content


def test_gpu_report_has_power_model_and_paper_overlay(tmp_path: Path) -> None:
    from charbench.report import RunData
    from charbench.workloads.gemm_power.analysis import paper_a100
    from charbench.workloads.gemm_power.figures import power_provenance

    recs = _records()
    path = _store(tmp_path, recs)
    assert render_run(path).is_file()
    assert power_provenance(RunData.load(path).results) == ("NVML", "energy counter delta per point (nvml-energy-counter)")
    trends = paper_a100()["trends"]
    for name in ("sparsity", "sort-rows", "bits-low", "unique"):
        (fig,) = _content(path, "_experiment_section", name).figures
        mine = [r for r in recs if r["experiment"] == name and r["dtype"] == "fp16"]
        values = sorted({r["value"] for r in mine})
        # rows: power, energy per GEMM (mJ), SM clock, TFLOP/s (a GPU run), toggle rate
        for axis, col, scale in (("y", "mean_power_w", 1), ("y2", "energy_per_gemm_j", 1e3), ("y3", "mean_gpu0_sm_clock_mhz", 1),
                                 ("y4", "throughput_tflop_s", 1), ("y5", "toggle_k_frac", 1)):
            x, y = _traces(fig, axis)["fp16 / torch"]
            assert x == values and np.allclose(y, [np.mean([r[col] * scale for r in mine if r["value"] == v]) for v in values]), (name, col)
        for dt, pts in trends[name].items():
            x, y = _traces(fig, "y")[f"paper A100 {dt}"]
            assert x == [p[0] for p in pts] and y == [p[1] for p in pts]
    # the fitted model recovers the synthetic power = 180 + 250 toggle + 30 hamming - 40 zeros (+ 1 W noise)
    model = _content(path, "_model_section")
    (table,) = model.tables
    assert list(table["dtype"]) == ["bf16", "fp16"] and list(table["points"]) == [len(recs) // 2] * 2
    for col, want in (("intercept_w", 180.0), ("toggle_w", 250.0), ("hamming_w", 30.0), ("zero_w", -40.0)):
        assert np.allclose(table[col], want, atol=5.0), col
    assert (table["leave-one-experiment-out MAE (W)"] < 3.0).all() and (table["R^2"] > 0.99).all()
    (scatter,) = model.figures
    x, y = _traces(scatter, "y")["fp16/torch measured"]
    fp16 = [r for r in recs if r["dtype"] == "fp16"]
    assert np.allclose(x, [r["toggle_k_frac"] for r in fp16]) and np.allclose(y, [r["mean_power_w"] for r in fp16])


def test_sampled_power_fallback_is_labeled_sampled(tmp_path: Path) -> None:
    """Without counter energy the figures fall back to the sampler's mean power: labeled, not shown as measured."""
    from charbench.report import RunData
    from charbench.workloads.gemm_power.figures import power_provenance

    recs = _records()
    for r in recs:
        r["mean_power_w"] = r["energy_j"] = r["energy_net_j"] = r["energy_per_gemm_j"] = None
        r["provenance"] = "{}"
        r["null_reasons"] = json.dumps({"energy_j": "gpu0: energy counter unreadable"})
    path = _store(tmp_path, recs)
    assert render_run(path).is_file()
    badge, why = power_provenance(RunData.load(path).results)
    assert badge == "sampled" and "mean_gpu0_power_w" in why
    (fig,) = _content(path, "_experiment_section", "sparsity").figures
    mine = [r for r in recs if r["experiment"] == "sparsity" and r["dtype"] == "fp16"]
    values = sorted({r["value"] for r in mine})
    x, y = _traces(fig, "y")["fp16 / torch"]  # the sampler's mean power in the power row
    assert x == values and np.allclose(y, [np.mean([r["mean_gpu0_power_w"] for r in mine if r["value"] == v]) for v in values])
    (scatter,) = _content(path, "_model_section").figures
    assert sorted(t.name for t in scatter.data) == ["bf16/torch model", "bf16/torch sampled", "fp16/torch model", "fp16/torch sampled"]


# -- the figures' data (not their titles), measured and not measured --------------------------

def _figures(html: str) -> list[dict]:
    """The plotly figures a section's HTML draws (figure_html embeds each as JSON)."""
    import re

    return [json.loads(m) for m in re.findall(r"var f=(\{.*?\});Plotly", html)]


def _array(v: object) -> list:
    """A plotly JSON array as a list (plotly 6 writes numeric arrays as ``{"dtype", "bdata"}``)."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)  # type: ignore[call-overload]


def _traces(fig: dict, axis: str) -> dict[str, tuple[list, list]]:
    """name -> (x, y) of the traces on y axis ``axis`` ('y' is the first subplot); a Figure or its JSON."""
    if not isinstance(fig, dict):
        fig = fig.to_plotly_json()
    return {t["name"]: (_array(t["x"]), _array(t["y"])) for t in fig["data"] if t.get("yaxis", "y") == axis}


def _store(tmp_path: Path, recs: list[dict]) -> Path:
    store = RunStore.create(tmp_path, "gemm-power", config={"study_config": {"size": [2048] * 3}},
                            env={}, report_hook="charbench.workloads.gemm_power.figures:report_sections")
    store.update_meta(device="cuda:0")
    store.append_records(recs)
    store.finish("completed")
    return store.path


def test_measured_experiment_figure_plots_the_mean_power_per_value(tmp_path: Path) -> None:
    from charbench.report import RunData
    from charbench.workloads.gemm_power.figures import _experiment_section

    recs = _records()
    data = RunData.load(_store(tmp_path, recs))
    (fig,) = _figures(_experiment_section(data, "sparsity").html)
    power = _traces(fig, "y")
    sparsity = [r for r in recs if r["experiment"] == "sparsity" and r["dtype"] == "fp16"]
    values = sorted({r["value"] for r in sparsity})
    expect = [np.mean([r["mean_power_w"] for r in sparsity if r["value"] == v]) for v in values]
    x, y = power["fp16 / torch"]
    assert x == values and np.allclose(y, expect)
    # the second row is energy per GEMM in mJ: the same points, scaled
    x2, y2 = _traces(fig, "y2")["fp16 / torch"]
    assert x2 == values and np.allclose(y2, [np.mean([r["energy_per_gemm_j"] * 1e3 for r in sparsity if r["value"] == v]) for v in values])


def test_not_measured_experiment_figure_has_no_power_row(tmp_path: Path) -> None:
    """On a CPU without RAPL (this machine, or any): no power trace, time per GEMM from the records."""
    from charbench.report import RunData
    from charbench.workloads.gemm_power.figures import _experiment_section

    recs = _records()
    for r in recs:
        for k in ("mean_power_w", "energy_j", "energy_net_j", "energy_per_gemm_j", "mean_gpu0_power_w", "mean_gpu0_sm_clock_mhz"):
            r[k] = None
        r["null_reasons"] = json.dumps({"energy_j": "no RAPL package zones", "mean_power_w": "no RAPL package zones"})
        r["time_per_gemm_ms"] = 0.01 * (1 + r["value"])
    path = _store(tmp_path, recs)
    RunStore.open(path).update_meta(device="cpu")
    data = RunData.load(path)
    sec = _experiment_section(data, "unique")
    (fig,) = _figures(sec.html)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    # the fake records run at ~600 TFLOP/s: shown in TFLOP/s (a CPU's small values read GFLOP/s, as on every page: pages.display_unit)
    assert titles == ["time per GEMM (ms)", "throughput (TFLOP/s)", "toggle rate along K (flipped bits per bit)"]
    unique = sorted({r["value"] for r in recs if r["experiment"] == "unique"})
    x, y = _traces(fig, "y")["bf16 / torch"]
    assert x == unique and np.allclose(y, [0.01 * (1 + v) for v in unique])
    assert sec.note.endswith("Power was not measured on this machine; time per GEMM and GFLOP/s are measured.")


def test_other_experiments_have_their_own_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from charbench.workloads.gemm_power import figures

    class _D:
        results = pd.DataFrame([
            {"dtype": "int8", "backend": "non-gemm", "experiment": "bit-flips", "value": v, "seed": 0, "time_per_launch_ms": t}
            for v, t in ((0.0, 1.0), (4.0, 2.0), (4.0, 4.0))
        ] + [{"dtype": "int8", "backend": "non-gemm", "experiment": "memory-ones", "value": 0.0, "seed": 0, "fill_ms": 5.0}])

    sec = figures._other_section(_D())  # type: ignore[arg-type]
    assert sec is not None and sec.title == "Experiments 16-18 and idle (no GEMM)"
    assert "time per launch (ms)" in sec.html and "memory-ones" in sec.html
    assert figures._experiment_section(_D(), "bit-flips") is None  # type: ignore[arg-type]
