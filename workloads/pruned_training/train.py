"""One training (dense or PruneTrain): model, SGD, group lasso, reconfiguration, resumable state.

Both trainings start from the same seeded initial weights and see the same mini-batches
(the order is a function of the seed and the epoch), so they differ only in the penalty
and the reconfigurations; a trainer restored from :meth:`Trainer.state` continues exactly::

    tr = Trainer.new(cfg, data, "cpu", seed=0, prune=True)
    stats = tr.train_epoch(0); acc = tr.evaluate(); rec = tr.maybe_reconfigure(0)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from charbench.workloads.pruned_training.config import PruneTrainConfig, lr_at
from charbench.workloads.pruned_training.data import Dataset
from charbench.workloads.pruned_training.flops import Cost, count_cost
from charbench.workloads.pruned_training.lasso import group_lasso, penalty_coefficient
from charbench.workloads.pruned_training.models import Arch, Net, build, make_arch
from charbench.workloads.pruned_training.reconfig import Reconfiguration, reconfigure


@dataclass
class EpochStats:
    """What one epoch of training did."""

    mean_train_loss: float
    mean_penalty: float | None
    step_count: int
    sample_count: int
    train_flops: int
    steps: list[dict[str, Any]] = field(default_factory=list)


def make_sgd(net: Net, cfg: PruneTrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the network's parameters (one group, in order)."""
    return torch.optim.SGD(list(net.parameters()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Trainer:
    """A network, its optimizer and PruneTrain's state (lambda, batch size, cumulative counts)."""

    def __init__(self, cfg: PruneTrainConfig, data: Dataset, device: str, net: Net, prune: bool) -> None:
        self.cfg, self.data, self.device, self.prune = cfg, data, device, prune
        self.net = self._place(net)
        self.opt = make_sgd(self.net, cfg)
        self.lam: float | None = None
        self.batch_size = cfg.batch_size
        self.cumulative_train_flops = 0
        self.dense_cost = count_cost(self.net, data.train.image_shape)
        self.cost: Cost = self.dense_cost
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp else None

    @classmethod
    def new(cls, cfg: PruneTrainConfig, data: Dataset, device: str, seed: int, prune: bool) -> Trainer:
        """A trainer whose initial weights depend only on ``seed`` (dense and PruneTrain share them)."""
        torch.manual_seed(seed)
        arch = make_arch(cfg.model, data.train.image_shape[0], data.num_classes)
        return cls(cfg, data, device, build(arch), prune)

    def _place(self, net: Net) -> Net:
        net = net.to(self.device)
        if self.device.startswith("cuda") and self.cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    # -- resumable state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue: architecture, weights, optimizer, lambda, counters (CPU tensors)."""
        cpu = lambda sd: {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in sd.items()}  # noqa: E731
        opt = self.opt.state_dict()
        opt["state"] = {i: cpu(s) for i, s in opt["state"].items()}
        return {"arch": self.net.arch, "model": cpu(self.net.state_dict()), "optimizer": opt, "lam": self.lam,
                "batch_size": self.batch_size, "cumulative_train_flops": self.cumulative_train_flops,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    @classmethod
    def restore(cls, cfg: PruneTrainConfig, data: Dataset, device: str, state: dict[str, Any], prune: bool) -> Trainer:
        """The trainer saved by :meth:`state`."""
        arch: Arch = state["arch"]
        net = Net(arch)
        net.load_state_dict(state["model"])
        tr = cls(cfg, data, device, net, prune)
        tr.dense_cost = count_cost(Net(make_arch(arch.name, arch.in_channels, arch.num_classes)), data.train.image_shape)
        tr.opt.load_state_dict(state["optimizer"])
        tr.lam, tr.batch_size = state["lam"], int(state["batch_size"])
        tr.cumulative_train_flops = int(state["cumulative_train_flops"])
        if tr.scaler is not None and state.get("scaler"):
            tr.scaler.load_state_dict(state["scaler"])
        return tr

    # -- training --------------------------------------------------------------------------------
    def lr(self, epoch: int) -> float:
        """The epoch's learning rate (scaled linearly with a grown mini-batch under --dynamic-batch)."""
        return lr_at(self.cfg, epoch) * self.batch_size / self.cfg.batch_size

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.float16) if self.cfg.amp else contextlib.nullcontext()

    def train_epoch(self, epoch: int, seed: int) -> EpochStats:
        """One pass over the training set (order from ``seed`` and ``epoch``)."""
        self.net.train()
        lr = self.lr(epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        losses: list[float] = []
        penalties: list[float] = []
        steps: list[dict[str, Any]] = []
        samples = 0
        per_sample = self.cost.train_flops_per_sample
        for step, (x, y) in enumerate(self.data.train.batches(self.batch_size, seed=seed, epoch=epoch, limit=self.cfg.limit_train)):
            x, y = self._to_device(x), y.to(self.device)
            with self._autocast():
                ce = nn.functional.cross_entropy(self.net(x), y)
            loss = ce
            pen_value = None
            if self.prune:
                pen = group_lasso(self.net)
                if self.lam is None:  # set once, from the first mini-batch of the run
                    self.lam = penalty_coefficient(ce.item(), pen.item(), self.cfg.penalty_ratio)
                loss = ce + self.lam * pen
                pen_value = pen.item()
                penalties.append(pen_value)
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
            n = int(y.shape[0])
            samples += n
            losses.append(ce.item())
            steps.append({"epoch": epoch, "step": step, "batch_size": n, "lr": lr, "ce_loss": ce.item(),
                          "group_lasso": pen_value, "train_flops": per_sample * n})
        flops = per_sample * samples
        self.cumulative_train_flops += flops
        return EpochStats(sum(losses) / max(len(losses), 1), (sum(penalties) / len(penalties)) if penalties else None,
                          len(losses), samples, flops, steps)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.device.startswith("cuda") and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def evaluate(self) -> float:
        """Test accuracy in percent."""
        self.net.eval()
        correct = 0
        with torch.no_grad(), self._autocast():
            for x, y in self.data.test.batches(self.cfg.eval_batch_size):
                correct += int((self.net(self._to_device(x)).argmax(1).cpu() == y).sum())
        return 100.0 * correct / max(len(self.data.test), 1)

    def maybe_reconfigure(self, epoch: int) -> Reconfiguration | None:
        """Every ``reconfig_interval`` epochs (PruneTrain only): shrink the network, keep the optimizer."""
        if not self.prune or (epoch + 1) % self.cfg.reconfig_interval != 0 or epoch + 1 >= self.cfg.epochs:
            return None
        self.net, rec = reconfigure(self.net, self.opt, self.cfg.threshold)
        self.cost = count_cost(self.net, self.data.train.image_shape)
        if self.cfg.dynamic_batch:
            grown = round(self.cfg.batch_size * self.dense_cost.train_flops_per_sample / self.cost.train_flops_per_sample)
            self.batch_size = max(self.cfg.batch_size, min(self.cfg.max_batch_size, grown))
        return rec
