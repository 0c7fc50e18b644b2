"""Configuration of ``charbench gemm-power``: a typed dataclass and two presets.

``quick`` (the default) is small enough for a CPU-only machine (<= 2 minutes on 2 cores);
``paper`` is the paper's full table at 2048^3 with 10 seeds (hours on a GPU)::

    cfg = select_preset(PRESETS, "quick")
    cfg = resolve(cfg, "cpu")        # fills the device-dependent defaults (None fields)

Fields left ``None`` are chosen per device by :func:`resolve`: GPU runs keep every point
running for 5 s (NVML's power reading is a ~1 s average on recent GPUs) at the paper's
2048^3; CPU runs use 256^3 and a fraction of a second per point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from charbench.config import MAX_WAIT_S, check, validate_fields
from charbench.errors import ConfigError
from charbench.workloads.gemm_power.experiments import EXPERIMENTS, QUICK_EXPERIMENTS


@dataclass
class GemmPowerConfig:
    """What ``charbench gemm-power`` sweeps and how it measures each point.

    Attributes:
        preset: name of the preset this config started from.
        experiments: experiment names (see ``experiments.py``), or ``["all"]``.
        sweep: ``quick`` (2-4 values per experiment) or ``paper`` (the full table).
        dtypes: dtype names; None = the device's default set.
        backends: backend names; None = ``torch`` (plus ``cuda-simt`` on a GPU for the paper preset).
        size: ``[M, N, K]``; None = 2048^3 on a GPU, 256^3 on a CPU.
        seeds: input seeds (each seed is a separate point).
        repeats: measured repeats of every (point, seed); None = :data:`SHORT_POINT_REPEATS` when a point
            lasts under :data:`SHORT_POINT_S` (a CPU's fraction of a second, which the machine's other work
            can swamp: the repeats' spread is the noise the report shows), else 1.
        duration_s: minimum measured time per point; None = 5 s on a GPU, ``cpu_duration_s`` on a CPU.
        cpu_duration_s: the CPU default of ``duration_s``.
        warmup_s: un-measured warm-up before each point; None = 1 s on a GPU, 0.02 s on a CPU.
        check_correctness: check every (dtype, backend) against float64 before measuring.
        predict: calibration file: add ``power_estimated_w`` (labeled estimated) to every point.
        generator: ``paper`` (the paper's host inputs bit for bit, column-major; the paper
            preset's default) or ``charbench`` (torch on the device, along K; quick's default).
        accumulate: ``out`` (accumulate in the output type, as CUTLASS defaults: fp16 for
            FP16, int32 for INT8) or ``fp32`` (fp32 accumulation for 16-bit floats).

    The runner settings (idle baseline 30 s and cooldown 1 s, paper 2 s, on a GPU; none on a
    CPU) are the spine's: ``STUDY.settings`` in ``__init__.py``, ``[settings]`` in ``--config``.
    """

    preset: str = "quick"
    experiments: list[str] = field(default_factory=lambda: list(QUICK_EXPERIMENTS))
    sweep: str = "quick"
    dtypes: list[str] | None = None
    backends: list[str] | None = None
    size: list[int] | None = None
    seeds: list[int] = field(default_factory=lambda: [1])
    repeats: int | None = field(default=None, metadata=check("--repeats", ge=1))
    duration_s: float | None = field(default=None, metadata=check("--duration", gt=0, le=MAX_WAIT_S))
    cpu_duration_s: float = field(default=0.1, metadata=check(gt=0, le=MAX_WAIT_S))
    warmup_s: float | None = field(default=None, metadata=check(ge=0, le=MAX_WAIT_S))
    check_correctness: bool = True
    predict: str | None = None
    generator: str = "charbench"
    accumulate: str = "fp32"


#: a point shorter than this (s) is repeated :data:`SHORT_POINT_REPEATS` times unless --repeats says otherwise
SHORT_POINT_S = 1.0
SHORT_POINT_REPEATS = 3

PRESETS: dict[str, GemmPowerConfig] = {
    "quick": GemmPowerConfig(),
    "paper": GemmPowerConfig(
        preset="paper",
        experiments=list(EXPERIMENTS),
        sweep="paper",
        size=[2048, 2048, 2048],
        seeds=list(range(1, 11)),
        cpu_duration_s=1.0,
        generator="paper",
        accumulate="out",
    ),
}

#: default dtypes per (preset, device kind)
DEFAULT_DTYPES = {
    ("quick", "cpu"): ["fp32", "bf16"],
    ("quick", "cuda"): ["fp32", "fp16", "bf16"],
    ("paper", "cpu"): ["fp32", "bf16", "fp16", "int8"],
    ("paper", "cuda"): ["fp32", "fp16", "fp16-simt", "int8"],
}


def resolve(cfg: GemmPowerConfig, device: str) -> GemmPowerConfig:
    """Fill the device-dependent defaults and validate ranges.

    Raises:
        ConfigError: a bad value, naming the option and the fix.
    """
    gpu = device.startswith("cuda")
    kind = "cuda" if gpu else "cpu"
    preset = cfg.preset if cfg.preset in ("quick", "paper") else "quick"
    changes: dict[str, object] = {}
    if cfg.experiments == ["all"]:
        changes["experiments"] = list(EXPERIMENTS)
    if cfg.backends is None:
        changes["backends"] = _auto_backends(preset, device)
    if cfg.dtypes is None:
        changes["dtypes"] = _auto_dtypes(preset, device, changes.get("backends", cfg.backends))  # type: ignore[arg-type]
    if cfg.size is None:
        changes["size"] = [2048, 2048, 2048] if gpu else [256, 256, 256]
    if cfg.duration_s is None:
        changes["duration_s"] = 5.0 if gpu else cfg.cpu_duration_s
    if cfg.repeats is None:
        duration = changes.get("duration_s", cfg.duration_s)
        changes["repeats"] = SHORT_POINT_REPEATS if float(duration) < SHORT_POINT_S else 1  # type: ignore[arg-type]
    if cfg.warmup_s is None:
        changes["warmup_s"] = 1.0 if gpu else 0.02
    out = dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
    validate(out)
    return out


def _auto_backends(preset: str, device: str) -> list[str]:
    """torch, plus the CUDA-core kernel for the paper preset on a GPU when CuPy can load it."""
    if device.startswith("cuda") and preset == "paper":
        from charbench.kernels.gemm import get_backend

        if get_backend("cuda-simt").probe(device) is None:
            return ["torch", "cuda-simt"]
    return ["torch"]


def _auto_dtypes(preset: str, device: str, backends: list[str]) -> list[str]:
    """The preset's default dtypes that one of ``backends`` can run on ``device``."""
    from charbench.kernels.gemm import get_backend, get_dtype

    kind = "cuda" if device.startswith("cuda") else "cpu"
    return [dt for dt in DEFAULT_DTYPES[(preset, kind)]
            if any(dt in get_backend(b).dtypes and get_backend(b).unavailable_reason(get_dtype(dt), device) is None for b in backends)]


def validate(cfg: GemmPowerConfig) -> None:
    """Check ranges of a resolved config (the numeric ones are declared on the fields).

    Raises:
        ConfigError: a bad value, naming the option.
    """
    validate_fields(cfg)
    if cfg.sweep not in ("quick", "paper"):
        raise ConfigError(f"sweep = {cfg.sweep!r}; valid: quick, paper")
    if cfg.size is not None:
        if len(cfg.size) != 3 or any(int(v) < 1 for v in cfg.size):
            raise ConfigError(f"--size: expected three positive integers M,N,K, got {cfg.size}")
    if cfg.generator not in ("paper", "charbench"):
        raise ConfigError(f"--generator: unknown generator {cfg.generator!r}; valid: paper, charbench")
    if cfg.accumulate not in ("out", "fp32"):
        raise ConfigError(f"--accumulate: unknown accumulation {cfg.accumulate!r}; valid: out, fp32")
    if cfg.generator == "paper":
        from charbench.kernels.gemm import get_dtype
        from charbench.workloads.gemm_power.paper_generators import check_supported

        for dt in cfg.dtypes or []:
            check_supported(get_dtype(dt))
    if not cfg.seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. --seeds 1,2,3")
    for name in cfg.experiments:
        if name not in EXPERIMENTS:
            raise ConfigError(f"--experiments: unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)} or all")
