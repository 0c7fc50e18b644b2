"""GPU checks of gemm-power in one short run (< 3 minutes on an H200); prints JSON.

Targets (issue 3):
  * every backend x dtype correct against float64 on fresh random inputs;
  * custom SIMT fp32 >= 50% and tensor-core fp16 >= 40% of cuBLAS (torch) at 4096^3;
  * input generation of an 8192^2 matrix <= 100 ms;
  * switching analysis of a 4096^2 fp32 pair <= 50 ms;
  * harness TFLOP/s >= 97% of a bare torch.matmul loop (same inputs, same run).

Run::

    python tests/perf/bench_gemm_gpu.py --json-out gemm_gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_bench_common import harness_vs_bare, switching_time  # noqa: E402

from charbench.kernels.gemm import backend_names, get_backend, get_dtype, output_scale  # noqa: E402
from charbench.kernels.reference import check_gemm, random_operands  # noqa: E402
from charbench.measure.timer import Timer  # noqa: E402
from charbench.workloads.gemm_power.experiments import get_experiment  # noqa: E402
from charbench.workloads.gemm_power.generators import generate_matrix  # noqa: E402


def correctness(device: str) -> list[dict[str, Any]]:
    """Every backend x dtype it implements, two shapes, both B layouts."""
    out = []
    for be_name in backend_names():
        be = get_backend(be_name)
        for dt in be.dtypes:
            spec = get_dtype(dt)
            why = be.unavailable_reason(spec, device)
            if why:
                out.append({"backend": be_name, "dtype": dt, "skipped": why})
                continue
            for (m, n, k), tb in (((256, 384, 512), True), ((512, 256, 256), False)):
                try:
                    r = check_gemm(be, spec, device, m, n, k, seed=int(time.time_ns() % 100000), transpose_b=tb)
                    out.append({"backend": be_name, "dtype": dt, "shape": [m, n, k], "b_kmajor": tb, "rel_error": r.rel_error,
                                "bound": r.bound, "ok": r.ok})
                except Exception as exc:
                    out.append({"backend": be_name, "dtype": dt, "shape": [m, n, k], "b_kmajor": tb, "ok": False,
                                "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]})
    return out


def tflops(device: str, backend: str, dtype: str, n: int, repeats: int = 20) -> float:
    """Median TFLOP/s of one backend on an n^3 GEMM (CUDA events)."""
    spec = get_dtype(dtype)
    a, b = random_operands(spec, n, n, n, seed=7, device=device, transpose_b=True)
    g = get_backend(backend).prepare(a, b, spec, alpha=output_scale(a, b, spec))
    with g:
        st = Timer(device).time(g, warmup=5, repeats=repeats)
    return 2.0 * n**3 / st.median_s / 1e12


def speed(device: str, n: int) -> dict[str, Any]:
    """Custom kernels against cuBLAS (torch) at n^3."""
    res: dict[str, Any] = {"n": n}
    pairs = [("torch", "fp32"), ("cuda-simt", "fp32"), ("torch", "fp16"), ("cuda-tc", "fp16"), ("torch", "bf16"), ("cuda-tc", "bf16"),
             ("cupy", "fp16"), ("triton", "fp16"), ("triton", "fp32"), ("cuda-simt", "fp16-simt"), ("torch", "int8"), ("torch", "fp8-e4m3")]
    for be, dt in pairs:
        try:
            res[f"{be}/{dt}_tflop_per_s"] = tflops(device, be, dt, n)
        except Exception as exc:
            res[f"{be}/{dt}_error"] = f"{type(exc).__name__}: {exc}"
    simt, cub32 = res.get("cuda-simt/fp32_tflop_per_s"), res.get("torch/fp32_tflop_per_s")
    tc, cub16 = res.get("cuda-tc/fp16_tflop_per_s"), res.get("torch/fp16_tflop_per_s")
    res["simt_fp32_vs_cublas"] = simt / cub32 if simt and cub32 else None
    res["tc_fp16_vs_cublas"] = tc / cub16 if tc and cub16 else None
    res["simt_ok"] = bool(res["simt_fp32_vs_cublas"] and res["simt_fp32_vs_cublas"] >= 0.5)
    res["tc_ok"] = bool(res["tc_fp16_vs_cublas"] and res["tc_fp16_vs_cublas"] >= 0.4)
    return res


def generation(device: str, n: int) -> dict[str, Any]:
    """Wall time to generate one n x n fp16 matrix per generator family (best of 3, synced)."""
    timer = Timer(device)
    spec = get_dtype("fp16")
    out: dict[str, Any] = {"n": n}
    for name, value in (("baseline", 0.0), ("sparsity", 0.5), ("sort-rows", 0.5), ("bits-low", 8.0), ("bits-random", 8.0), ("unique", 4.0)):
        exp = get_experiment(name)
        times = []
        for i in range(3):
            timer.sync()
            t0 = time.perf_counter()
            generate_matrix(exp, value, spec, n, n, 1 + i, device)
            timer.sync()
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1e3 * min(times)
    out["baseline_ok"] = out["baseline_ms"] <= 100.0
    return out


def main() -> int:
    """Run every GPU check and print one JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--skip-harness", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    device = "cuda:0"
    report: dict[str, Any] = {"device_name": torch.cuda.get_device_name(0), "torch": torch.__version__}
    t0 = time.perf_counter()
    report["correctness"] = correctness(device)
    report["correctness_all_ok"] = all(r.get("ok", True) for r in report["correctness"])
    report["speed"] = speed(device, args.size)
    report["generation"] = generation(device, 8192)
    sw = switching_time(device, 4096)
    sw["ok"] = sw["best_s"] <= 0.050
    report["switching"] = sw
    if not args.skip_harness:
        report["harness"] = [harness_vs_bare(device, 4096, "fp16", 2.0, 3), harness_vs_bare(device, 2048, "fp32", 2.0, 3)]
    report["wall_s"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    s = report["speed"]
    print(f"\nSIMT fp32 / cuBLAS = {s.get('simt_fp32_vs_cublas')} (target >= 0.5); TC fp16 / cuBLAS = {s.get('tc_fp16_vs_cublas')} (target >= 0.4)")
    print(f"generation 8192^2 baseline = {report['generation']['baseline_ms']:.1f} ms (target <= 100); switching 4096^2 = {1e3 * sw['best_s']:.1f} ms (target <= 50)")
    if "harness" in report:
        print("harness/bare = " + ", ".join(f"{h['dtype']} {h['size']}: {h['ratio']:.3f}" for h in report["harness"]) + " (target >= 0.97)")
    print(f"correctness all ok: {report['correctness_all_ok']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
