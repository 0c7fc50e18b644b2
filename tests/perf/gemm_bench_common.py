"""Shared pieces of the gemm-power benchmarks (imported by bench_gemm_*.py, not a test).

:func:`harness_vs_bare` runs the study's own ``run_point`` (generation, switching analysis,
warm-up, measured window, meters and sampler on) and, on the same inputs in the same run, a
bare ``torch.matmul`` loop for the same time; it alternates the two and compares median
TFLOP/s. :func:`switching_time` times the switching analysis of one pair.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from charbench.kernels.gemm import get_dtype
from charbench.kernels.switching import switching_stats
from charbench.measure import Sampler
from charbench.measure.timer import Timer
from charbench.results import RunStore
from charbench.study import Context, RunSettings
from charbench.workloads.gemm_power.config import GemmPowerConfig, resolve
from charbench.workloads.gemm_power.experiments import get_experiment
from charbench.workloads.gemm_power.generators import generate_pair
from charbench.workloads.gemm_power.run import GemmPowerStudy


def harness_vs_bare(device: str, size: int, dtype: str, duration_s: float, pairs: int) -> dict[str, Any]:
    """Median TFLOP/s of the measured loop vs a bare torch.matmul loop (alternating, same inputs)."""
    cfg = resolve(GemmPowerConfig(experiments=["baseline"], dtypes=[dtype], size=[size] * 3, duration_s=duration_s,
                                  warmup_s=0.2 if device.startswith("cuda") else 0.02, check_correctness=False), device)
    study = GemmPowerStudy(cfg, device)
    tmp = Path(tempfile.mkdtemp(prefix="gemm-bench-"))
    store = RunStore.create(tmp, "gemm-power", config={}, env={})
    ctx = Context(device, store, 0, RunSettings(), log=lambda msg: None)
    ctx.sampler = Sampler(interval_s=0.1, gpus=ctx.gpus or None).start()
    study.setup(ctx)
    params = {"dtype": dtype, "backend": "torch", "experiment": "baseline", "param": "none", "value": 0.0, "seed": 1, "repeat": 0}
    spec = get_dtype(dtype)
    a, b, _ = generate_pair(get_experiment("baseline"), 0.0, spec, size, size, size, 1, device, base_seed=0)
    timer = Timer(device)
    flops = 2.0 * size**3
    harness, bare = [], []
    try:
        for _ in range(pairs):
            rec = study.run_point(dict(params), ctx)
            harness.append(float(rec["throughput_tflop_s"]))
            for _ in range(3):
                torch.matmul(a, b)
            timer.sync()
            n = 0
            t0 = time.perf_counter()
            while True:
                for _ in range(8):
                    torch.matmul(a, b)
                n += 8
                timer.sync()
                if time.perf_counter() - t0 >= duration_s:
                    break
            el = time.perf_counter() - t0
            bare.append(flops * n / el / 1e12)
    finally:
        ctx.close()
    ratio = statistics.median(harness) / statistics.median(bare)
    pair_ratio = statistics.median(h / b for h, b in zip(harness, bare))  # robust to load drifting between pairs
    return {"device": device, "size": size, "dtype": dtype, "duration_s": duration_s, "pairs": pairs,
            "harness_tflop_per_s": harness, "bare_tflop_per_s": bare,
            "median_harness_tflop_per_s": statistics.median(harness), "median_bare_tflop_per_s": statistics.median(bare),
            "ratio": ratio, "median_pair_ratio": pair_ratio, "target": 0.97, "ok": ratio >= 0.97}


def switching_time(device: str, n: int, dtype: str = "fp32", repeats: int = 3) -> dict[str, Any]:
    """Best-of wall time of :func:`switching_stats` on an n x n pair (B as a K-major view)."""
    spec = get_dtype(dtype)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(getattr(torch, spec.storage))
    b = torch.randn(n, n, device=device, generator=g).to(getattr(torch, spec.storage)).t()
    timer = Timer(device)
    switching_stats(a, b, spec)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        timer.sync()
        t0 = time.perf_counter()
        switching_stats(a, b, spec)
        timer.sync()
        times.append(time.perf_counter() - t0)
    return {"device": device, "n": n, "dtype": dtype, "times_s": times, "best_s": min(times), "median_s": statistics.median(times)}
