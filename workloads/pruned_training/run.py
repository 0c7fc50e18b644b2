"""The prune-train study: dense training and PruneTrain, epoch by epoch, side by side.

Points are ``(run, epoch)`` with ``run`` a resource group (``dense`` then ``prunetrain``):
``acquire`` builds the group's trainer (seeded, so both start from the same weights) or
restores it from the checkpoint, each point trains one epoch inside the ``epoch`` window
(time, energy), evaluates, reconfigures every ``reconfig_interval`` epochs (PruneTrain), and
checkpoints the trainer, so ``--resume`` continues from the last completed epoch::

    result = run_study(PruneTrainStudy(validate(cfg, "cpu"), "cpu"), common, settings)

Per-step losses go to the ``steps`` table, channels per space and epoch to ``channels``.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from charbench.study import Context, Study
from charbench.workloads.pruned_training import STUDY
from charbench.workloads.pruned_training.config import PruneTrainConfig
from charbench.workloads.pruned_training.data import Dataset, build_digits, load_dataset
from charbench.workloads.pruned_training.train import Trainer

NO_PENALTY = "dense run: no group-lasso penalty"
NO_RECONFIG = "no reconfiguration after this epoch"
CPU_PEAK = "CPU: torch keeps no allocator peak; max_rss_bytes is the process's high-water mark"


def max_rss_bytes() -> int:
    """The process's peak resident set size (bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


class PruneTrainStudy(Study):
    """Dense vs PruneTrain training, one point per (run, epoch)."""

    name = STUDY.command
    report_hook = STUDY.report_hook
    resource_knobs = ("run",)
    ordered = True

    def __init__(self, cfg: PruneTrainConfig, device: str) -> None:
        self.cfg = cfg
        self.device = device
        self._data: Dataset | None = None

    def points(self) -> list[dict[str, Any]]:
        """Every epoch of every run, runs in the configured order."""
        return [{"run": run, "epoch": e} for run in self.cfg.runs for e in range(self.cfg.epochs)]

    def prepare_inputs(self) -> Any:
        """The digits conversion depends on its size and noise; other datasets are read in place."""
        if self.cfg.dataset != "digits":
            return None
        return {"dataset": "digits", "image_size": self.cfg.image_size, "noise_sigma": self.cfg.noise_sigma, "seed": 0}

    def prepare(self, cache_dir: Path, log: Any) -> None:
        """Convert scikit-learn's digits once (upscaled, noisy, split) into the cache."""
        log(f"prepare: digits at {self.cfg.image_size}x{self.cfg.image_size}, noise sigma {self.cfg.noise_sigma:g}")
        build_digits(cache_dir, self.cfg.image_size, self.cfg.noise_sigma)

    def data(self, ctx: Context) -> Dataset:
        """The dataset, loaded once per run."""
        if self._data is None:
            self._data = load_dataset(self.cfg.dataset, self.cfg.data_dir, ctx.cache_dir, self.cfg.image_size, self.cfg.noise_sigma)
            ctx.log(f"data: {self._data.description}")
        return self._data

    def setup(self, ctx: Context) -> None:
        """Set the CPU thread count, load the data before the first group (a missing dataset fails before any training)."""
        from charbench.device import set_cpu_threads

        if (line := set_cpu_threads(self.device, self.cfg.cpu_threads)) is not None:
            ctx.log(line)
        self.data(ctx)

    def acquire(self, group: dict[str, Any], ctx: Context) -> Trainer:
        """The run's trainer: restored from the checkpoint when it is this run's, else new (seeded)."""
        run = group["run"]
        prune = run == "prunetrain"
        saved = ctx.restore_checkpoint()
        if saved is not None and saved.get("run") == run:
            ctx.log(f"{run}: continuing after epoch {saved['epoch']}")
            return Trainer.restore(self.cfg, self.data(ctx), self.device, saved["trainer"], prune)
        return Trainer.new(self.cfg, self.data(ctx), self.device, ctx.seed, prune)

    def run_point(self, params: dict[str, Any], ctx: Context) -> Any:
        """Train one epoch (measured), evaluate, maybe reconfigure, checkpoint."""
        tr: Trainer = ctx.resource
        run, epoch = params["run"], int(params["epoch"])
        widths = dict(tr.net.arch.widths)
        cost = tr.cost
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        with ctx.window("epoch") as w:
            stats = tr.train_epoch(epoch, ctx.seed)
        rec = w.fields()
        t0 = time.perf_counter()
        acc = tr.evaluate()
        eval_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        recon = tr.maybe_reconfigure(epoch)
        reconfig_s = time.perf_counter() - t0 if recon is not None else None
        rec.update({
            "mean_train_loss": stats.mean_train_loss, "test_accuracy_pct": acc, "lr": tr.opt.param_groups[0]["lr"],
            "batch_size": stats.steps[0]["batch_size"] if stats.steps else 0,
            "step_count": stats.step_count, "sample_count": stats.sample_count,
            "train_flop": stats.train_flops, "total_train_flop": tr.cumulative_train_flops,
            "per_sample_train_flop": cost.train_flops_per_sample, "inference_flop": cost.inference_flops,
            "param_count": cost.param_count, "channel_count": sum(widths.values()),
            "removed_channel_count": recon.removed_channels if recon is not None else 0,
            "eval_time_s": eval_s, "max_rss_bytes": max_rss_bytes(),
        })
        rec.set("mean_group_lasso", stats.mean_penalty, reason=NO_PENALTY)
        rec.set("penalty_coefficient", tr.lam, reason=NO_PENALTY)
        rec.set("reconfig_time_s", reconfig_s, reason=NO_RECONFIG)
        rec.set("max_memory_bytes", int(torch.cuda.max_memory_allocated(self.device)) if cuda else None, reason=CPU_PEAK)
        ctx.store.append_table("steps", pd.DataFrame([{"run": run, **s} for s in stats.steps]))
        ctx.store.append_table("channels", pd.DataFrame([{"run": run, "epoch": epoch, "space": s, "channel_count": n} for s, n in widths.items()]))
        ctx.checkpoint({"run": run, "epoch": epoch, "trainer": tr.state()})
        return rec

    def finalize(self, store: Any, ctx: Context) -> dict[str, Any]:
        """Dense vs PruneTrain: training FLOPs, wall time and accuracy differences."""
        from charbench.workloads.pruned_training.analysis import summarize

        return summarize(store.results_frame())
