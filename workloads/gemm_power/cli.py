"""``charbench gemm-power``: options -> config -> run -> report (thin; the study is in run.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from charbench.cli_common import given_options, run_and_emit, study_inputs, with_common_options
from charbench.config import CommonOptions
from charbench.errors import ConfigError

if TYPE_CHECKING:
    from charbench.workloads.gemm_power.config import GemmPowerConfig

app = typer.Typer(add_completion=False)

ExperimentsOpt = Annotated[Optional[str], typer.Option("--experiments", help="Experiment names, comma-separated, or 'all' (default: the preset's).")]
DtypesOpt = Annotated[Optional[str], typer.Option("--dtypes", help="fp32, tf32, fp16, fp16-simt, bf16, int8, fp8-e4m3, fp8-e5m2 (comma-separated).")]
BackendsOpt = Annotated[Optional[str], typer.Option("--backends", help="torch, cupy, cuda-simt, cuda-tc, triton (comma-separated).")]
SizeOpt = Annotated[Optional[str], typer.Option("--size", help="M,N,K or one number for a cube (paper: 2048).")]
SeedsOpt = Annotated[Optional[str], typer.Option("--seeds", help="Input seeds: 1,2,3 or 1-10.")]
RepeatsOpt = Annotated[Optional[int], typer.Option("--repeats", help="Measured repeats per (point, seed).")]
DurationOpt = Annotated[Optional[float], typer.Option("--duration", help="Seconds each point keeps the GEMM running (default 5 on GPU).")]
PresetOpt = Annotated[str, typer.Option("--preset", help="quick (default, CPU-friendly) or paper (the full table, 10 seeds).")]
GeneratorOpt = Annotated[Optional[str], typer.Option("--generator", help="paper (the paper's host inputs bit for bit, column-major; paper preset) or charbench (torch on the device, fill along K; quick preset).")]
AccumulateOpt = Annotated[Optional[str], typer.Option("--accumulate", help="out (accumulate in the output type, as CUTLASS defaults: fp16 for FP16; paper preset) or fp32.")]
ImportDcgmOpt = Annotated[Optional[Path], typer.Option("--import-dcgm", help="Import dcgmi dmon traces (the paper's <gpu>_expt_results/<dtype>/<n-name>/<seed>_<param>.tsv layout, or a folder with mapping.csv) into a run folder; nothing is measured.")]
PredictOpt = Annotated[Optional[Path], typer.Option("--predict", help="Calibration file from a GPU run: add estimated power to every point.")]


def parse_size(text: str) -> list[int]:
    """``2048`` -> [2048]*3; ``M,N,K`` -> [M, N, K].

    Raises:
        ConfigError: not one or three positive integers.
    """
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    try:
        vals = [int(p) for p in parts]  # an empty part ("3x", "4,,4") is an error, not skipped
    except ValueError:
        raise ConfigError(f"--size: expected M,N,K (e.g. 2048,2048,2048) or one number, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or any(v < 1 for v in vals):
        raise ConfigError(f"--size: expected three positive integers M,N,K, got {text!r}")
    return vals


#: more seeds than this is a typo (each seed multiplies the points), not a sweep
MAX_SEEDS = 10_000


def parse_seeds(text: str) -> list[int]:
    """``1,2,3`` or ``1-10`` (or a mix) -> list of ints.

    Raises:
        ConfigError: anything else.
    """
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                count = int(hi) - int(lo) + 1
                if len(seeds) + max(count, 0) > MAX_SEEDS:  # checked before the list is built
                    raise ConfigError(f"--seeds: {text!r} is {len(seeds) + count} seeds; at most {MAX_SEEDS} (each seed is a separate point)")
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"--seeds: expected integers like 1,2,3 or 1-10, got {text!r}") from None
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds: {len(seeds)} seeds; at most {MAX_SEEDS} (each seed is a separate point)")
    if not seeds:
        raise ConfigError(f"--seeds: no seed in {text!r}; e.g. --seeds 1-10")
    return seeds


@app.command("gemm-power")
@with_common_options
def gemm_power(
    ctx: typer.Context,
    experiments: ExperimentsOpt = None,
    dtypes: DtypesOpt = None,
    backends: BackendsOpt = None,
    size: SizeOpt = None,
    seeds: SeedsOpt = None,
    repeats: RepeatsOpt = None,
    duration: DurationOpt = None,
    preset: PresetOpt = "quick",
    predict: PredictOpt = None,
    generator: GeneratorOpt = None,
    accumulate: AccumulateOpt = None,
    import_dcgm: ImportDcgmOpt = None,
    *,
    common: CommonOptions,
) -> None:
    """Input-dependent GEMM power: values, bits, placement and sparsity vs power, per dtype and kernel.

    Reproduces Gregersen et al. (SC24) experiments 1-18 (16-18: --experiments memory-ones,memory-zeros,bit-flips). With no options on a CPU-only machine: the quick preset (each point 0.1 s, repeated 3 times: the spread is the noise the report shows; about 31 s on 2 quiet cores, 163 s on 2 busy ones), timing of every input variation, and power where RAPL is readable.

    On a GPU each point keeps the GEMM running for 5 s (--duration) and records NVML energy, power, SM clock, temperature and throttle reasons; the run fits power = a + b*toggle + c*hamming + d*zeros and saves power_calibration.json for --predict.
    """
    from charbench.config import parse_csv_list
    from charbench.device import resolve_device
    from charbench.kernels.gemm import backend_names, dtype_names
    from charbench.workloads.gemm_power.config import PRESETS
    from charbench.workloads.gemm_power.experiments import experiment_names
    from charbench.workloads.gemm_power.run import GemmPowerStudy

    changes: dict[str, object] = {}
    if experiments is not None:
        changes["experiments"] = parse_csv_list(experiments, "--experiments", experiment_names())
    if dtypes is not None:
        changes["dtypes"] = parse_csv_list(dtypes, "--dtypes", dtype_names())
    if backends is not None:
        changes["backends"] = parse_csv_list(backends, "--backends", backend_names())
    if size is not None:
        changes["size"] = parse_size(size)
    if seeds is not None:
        changes["seeds"] = parse_seeds(seeds)
    if repeats is not None:
        changes["repeats"] = repeats
    if duration is not None:
        changes["duration_s"] = duration
    if predict is not None:
        changes["predict"] = str(predict)
    if generator is not None:
        changes["generator"] = generator
    if accumulate is not None:
        changes["accumulate"] = accumulate
    if import_dcgm is not None:
        from charbench.workloads.gemm_power.dcgm_import import DcgmImportStudy, entries_for

        # the traces say what was run: only --dtypes/--experiments (filters) and --size (of the regenerated inputs) apply
        entries = entries_for(import_dcgm, changes.get("dtypes"), changes.get("experiments"))  # type: ignore[arg-type]
        sz = changes.get("size")
        imp = study_inputs(PRESETS, preset, common, {}, study="gemm-power", given=given_options(ctx), finish=_finish)
        run_and_emit(DcgmImportStudy(import_dcgm, entries, feature_size=int(sz[0]) if sz else 2048), imp)  # type: ignore[index]
        return
    # preset + --config + these options (type and range checked), or with --resume the run's saved config
    inputs = study_inputs(PRESETS, preset, common, changes, study="gemm-power", given=given_options(ctx), finish=_finish)
    dev = resolve_device(inputs.common.device)
    run_and_emit(GemmPowerStudy(inputs.cfg, dev), inputs)


def _finish(cfg: GemmPowerConfig, common: CommonOptions) -> GemmPowerConfig:
    """The device-dependent defaults (dtypes from a --predict calibration first, when none are given)."""
    from charbench.device import resolve_device
    from charbench.workloads.gemm_power.config import resolve

    dev = resolve_device(common.device)
    if cfg.predict and cfg.dtypes is None:
        cfg = _dtypes_from_calibration(cfg, dev)
    return resolve(cfg, dev)


def _dtypes_from_calibration(cfg, device: str):  # type: ignore[no-untyped-def]
    """With --predict and no --dtypes: the calibration's dtypes this device can run (torch)."""
    from charbench.kernels.gemm import get_backend, get_dtype
    from charbench.workloads.gemm_power.analysis import load_calibration

    cal = load_calibration(cfg.predict)
    torch_be = get_backend("torch")
    names = []
    for m in cal.models:
        if m.dtype not in names and torch_be.unavailable_reason(get_dtype(m.dtype), device) is None:
            names.append(m.dtype)
    return dataclasses.replace(cfg, dtypes=names) if names else cfg
