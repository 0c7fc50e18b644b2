"""``charbench prune-train``: options -> config -> run -> report (thin; the study is in run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charbench.cli_common import CpuThreadsOpt, given_options, run_and_emit, study_inputs, with_common_options
from charbench.config import CommonOptions

app = typer.Typer(add_completion=False)

PresetOpt = Annotated[str, typer.Option("--preset", help="quick (default: digits, ResNet-20, CPU <= 10 min) or paper (ResNet-32/CIFAR-10, r=0.2, 1e-4).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="resnet20/32/56/110, resnet18/50, vgg11/13/16.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="digits (bundled), cifar10, cifar100, imagenet (ImageFolder).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Local dataset folder (never downloaded).")]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", help="Digits upscale / ImageFolder resize (CIFAR: 32).")]
NoiseOpt = Annotated[Optional[float], typer.Option("--noise-sigma", help="Gaussian noise on the standardised digits.")]
RunsOpt = Annotated[Optional[str], typer.Option("--runs", help="dense,prunetrain (default both, in this order).")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Epochs of each training.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Mini-batch size.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Initial learning rate (x0.1 at 50% and 75% of the epochs).")]
WdOpt = Annotated[Optional[float], typer.Option("--weight-decay", help="SGD weight decay (paper: 5e-4 CIFAR).")]
RatioOpt = Annotated[Optional[float], typer.Option("--penalty-ratio", help="r: group-lasso share of the first mini-batch's loss (paper 0.2).")]
ThresholdOpt = Annotated[Optional[float], typer.Option("--threshold", help="Remove channels with max|w| below this (paper 1e-4).")]
IntervalOpt = Annotated[Optional[int], typer.Option("--reconfig-interval", help="Epochs between reconfigurations (paper 10 on CIFAR).")]
DynBatchOpt = Annotated[Optional[bool], typer.Option("--dynamic-batch/--no-dynamic-batch", help="Grow the mini-batch as the model shrinks (in the SC19 paper, not in its released code; rule unverified).")]
MaxBatchOpt = Annotated[Optional[int], typer.Option("--max-batch-size", help="Upper bound for --dynamic-batch.")]
AmpOpt = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="CUDA autocast fp16 with a gradient scaler.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit-train", help="Train on the first N samples of each epoch's order.")]


@app.command("prune-train")
@with_common_options
def prune_train(
    ctx: typer.Context,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = None,
    noise_sigma: NoiseOpt = None,
    runs: RunsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    weight_decay: WdOpt = None,
    penalty_ratio: RatioOpt = None,
    threshold: ThresholdOpt = None,
    reconfig_interval: IntervalOpt = None,
    dynamic_batch: DynBatchOpt = None,
    max_batch_size: MaxBatchOpt = None,
    amp: AmpOpt = None,
    limit_train: LimitOpt = None,
    cpu_threads: CpuThreadsOpt = None,
    preset: PresetOpt = "quick",
    *,
    common: CommonOptions,
) -> None:
    """PruneTrain vs dense training: group lasso, channel removal every few epochs, FLOPs/time/energy/accuracy.

    With no options: the quick preset (digits + noise at 16x16, ResNet-20, r=0.7, threshold 1e-2, 100 epochs), dense and PruneTrain trainings one after the other (100 epochs each). One torch thread (--cpu-threads 1; a second thread gains the narrow pruned convolutions almost nothing). Measured on a quiet 2-core machine: about 5 minutes for both runs (5 min 14 s, seed 0), wall -25%, training FLOPs -42%, accuracy -0.8 points. --epochs N shortens it. --preset paper uses the paper's r=0.2 and 1e-4 (ResNet-32, CIFAR-10 from --data-dir).
    """
    from charbench.config import parse_csv_list
    from charbench.device import resolve_device
    from charbench.workloads.pruned_training.config import PRESETS, RUNS
    from charbench.workloads.pruned_training.run import PruneTrainStudy

    options = {"model": model, "dataset": dataset, "data_dir": str(data_dir) if data_dir is not None else None, "image_size": image_size,
               "noise_sigma": noise_sigma, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
               "penalty_ratio": penalty_ratio, "threshold": threshold, "reconfig_interval": reconfig_interval,
               "dynamic_batch": dynamic_batch, "max_batch_size": max_batch_size, "amp": amp, "limit_train": limit_train,
               "cpu_threads": cpu_threads}
    changes: dict[str, object] = {k: v for k, v in options.items() if v is not None}
    if runs is not None:
        changes["runs"] = parse_csv_list(runs, "--runs", RUNS, allow_all=False)
    inputs = study_inputs(PRESETS, preset, common, changes, study="prune-train", given=given_options(ctx), finish=_finish)
    run_and_emit(PruneTrainStudy(inputs.cfg, resolve_device(inputs.common.device)), inputs)


def _finish(cfg, common: CommonOptions):  # type: ignore[no-untyped-def]
    """Checks that need the device (--amp) and the names of models, datasets and runs."""
    from charbench.device import resolve_device
    from charbench.workloads.pruned_training.config import validate

    return validate(cfg, resolve_device(common.device))
