"""Training and inference FLOPs, counted with PruneTrain's formulas (``scripts/calc_cost.py``).

Per sample and conv layer (``C`` in, ``K`` out, ``R x S`` kernel, ``H x W`` input,
``P x Q`` output), in multiply-accumulates (FLOPs = 2 x MACs):

- inference (forward): ``C*R*S * K * P*Q``
- training: forward + weight gradient (each the inference count) + data gradient
  ``(H + pad) * (W + pad) * K*R*S * C``, with ``pad`` the layer's total padding
  (PruneTrain: 0 for 1x1 convs, 2 for 3x3; it hard-codes 3 for ResNet-50's 7x7 stem,
  whose total padding is 6: ours counts 6). Like PruneTrain, the first conv's data
  gradient is counted although autograd skips it, so totals compare with the paper's.
- FC: ``K*C`` inference, ``3*K*C`` training.

BN and pooling are not counted (PruneTrain counts BN as memory traffic, not FLOPs)::

    cost = count_cost(net, (1, 16, 16))
    cost.train_flops_per_sample, cost.inference_flops, cost.param_count
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from charbench.workloads.pruned_training.models import Net


@dataclass
class LayerCost:
    """One conv or FC layer's shape and MACs per sample."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    pad: int
    inference_macs: int
    train_macs: int


@dataclass
class Cost:
    """A network's FLOPs per sample and parameters."""

    layers: list[LayerCost] = field(default_factory=list)
    param_count: int = 0

    @property
    def inference_flops(self) -> int:
        """Forward FLOPs per sample."""
        return 2 * sum(layer.inference_macs for layer in self.layers)

    @property
    def train_flops_per_sample(self) -> int:
        """Forward + weight-gradient + data-gradient FLOPs per training sample."""
        return 2 * sum(layer.train_macs for layer in self.layers)


def conv_macs(c: int, k: int, r: int, s: int, in_hw: tuple[int, int], out_hw: tuple[int, int], pad: int) -> tuple[int, int]:
    """(inference, training) MACs per sample of one conv (PruneTrain's formulas; ``pad`` is the total padding)."""
    inference = c * r * s * k * out_hw[0] * out_hw[1]
    data_grad = (in_hw[0] + pad) * (in_hw[1] + pad) * k * r * s * c
    return inference, 2 * inference + data_grad


def fc_macs(c: int, k: int) -> tuple[int, int]:
    """(inference, training) MACs per sample of a fully connected layer."""
    return k * c, 3 * k * c


def count_cost(net: Net, image_shape: tuple[int, int, int]) -> Cost:
    """Cost of ``net`` on images of shape ``(channels, height, width)`` (one shape-tracing forward)."""
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, (tuple(inp[0].shape[2:]), tuple(out.shape[2:])))))
    was_training = net.training
    net.eval()
    try:
        p = next(net.parameters())
        with torch.no_grad():
            net(torch.zeros((1, *image_shape), device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    cost = Cost(param_count=sum(t.numel() for t in net.parameters()))
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            in_hw, out_hw = shapes[name]
            r, s = m.kernel_size  # type: ignore[misc]
            pad = 2 * int(m.padding[0])  # type: ignore[index]
            inf, train = conv_macs(m.in_channels, m.out_channels, r, s, in_hw, out_hw, pad)  # type: ignore[arg-type]
            cost.layers.append(LayerCost(name, m.in_channels, m.out_channels, (r, s), in_hw, out_hw, pad, inf, train))  # type: ignore[arg-type]
    inf, train = fc_macs(net.fc.in_features, net.fc.out_features)
    cost.layers.append(LayerCost("fc", net.fc.in_features, net.fc.out_features, (1, 1), (1, 1), (1, 1), 0, inf, train))
    return cost
