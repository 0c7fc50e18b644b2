"""Input-dependent GEMM power (Gregersen, Patel, Choukse; SC24), reproduced and extended.

The values inside GEMM operands change how much power a GPU draws: sparsity, sorting,
bit patterns and value ranges move an A100's FP16 tensor-core power by ~40%. This study
regenerates every GEMM experiment of the paper's table (1-15) on the device that runs the
GEMM, across dtypes (fp32, tf32, fp16 on tensor and CUDA cores, bf16, int8, fp8) and kernels
(cuBLAS via torch, CuPy, charbench's own SIMT and tensor-core CUDA kernels, Triton), keeps
each GEMM running long enough for the energy counter, and relates power to the operands'
switching activity with a fitted, saved model::

    charbench gemm-power                                   # quick preset (CPU: ~1 minute)
    charbench gemm-power --preset paper --device cuda      # the paper's table at 2048^3
    charbench gemm-power --experiments sparsity,sort-rows --dtypes fp16,bf16 \\
        --backends torch,cuda-tc --size 4096 --duration 5 --seeds 1-3
    charbench gemm-power --predict runs/gemm-power/<gpu-run>/power_calibration.json

On a CPU without readable RAPL, power is not measured (null, never 0): the report shows
time per GEMM and GFLOP/s per variation instead, and the power model says so.
"""

from charbench.studies import StudySpec

STUDY = StudySpec(
    command="gemm-power",
    help="Input-dependent GEMM power: values, bits, placement, sparsity, across dtypes and kernels.",
    cli_module="charbench.workloads.gemm_power.cli",
    # energy per GEMM is normalized by the iteration count (energy_j covers a window of any length)
    gates=("energy_per_gemm_j", "mean_power_w"),
    # without a power meter both gates are null: time per GEMM is measured everywhere
    fallback_gates=("time_per_gemm_ms",),
    report_hook="charbench.workloads.gemm_power.figures:report_sections",
    metrics=(
        "time_per_gemm_ms", "throughput_tflop_s", "energy_per_gemm_j", "energy_net_per_gemm_j",
        "energy_per_flop_pj", "energy_net_per_flop_pj", "power_estimated_w",
    ),
    # on a GPU: 30 s of idle power for the net energy, and a cooldown between points (the paper's 2 s)
    settings={"cuda": {"idle_baseline_s": 30.0, "cooldown_s": 1.0}, "paper/cuda": {"cooldown_s": 2.0}},
)
