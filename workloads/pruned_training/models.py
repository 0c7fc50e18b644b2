"""CNNs with explicit per-layer channel counts, so that PruneTrain can rebuild them smaller.

A model is described by an :class:`Arch`: its family, its block layout and one width per
*channel space*. A channel space is a tensor dimension that several layers share and that
must therefore be pruned as one (PruneTrain's channel union):

- VGG: ``c<i>``, the output of conv ``i`` (and the input of conv ``i+1`` or of the FC);
- ResNet: ``s<i>``, the residual stream of stage ``i`` (the stem's output, every block's
  input and output, the projection shortcut's output), and ``b<i>.<j>.a`` (``.b``), the
  inside of block ``j`` of stage ``i``.

``input`` (the image channels) and ``classes`` (the logits) are fixed spaces. A block
whose last inner space has width 0 is an :class:`EmptyBlock` (PruneTrain's empty-block
removal: its convolutions are gone, only its last BN's constant output is left).
Every prunable tensor knows which space each of its dimensions lives in
(:func:`param_spaces`), which is all reconfiguration needs::

    arch = make_arch("resnet20", in_channels=1, num_classes=10)
    model = build(arch)                   # a ResNet-20 with 16/32/64 channels
    small = build(arch.with_widths({"s1": 20}))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

#: the image channels and the logits: never pruned
INPUT, CLASSES = "input", "classes"

#: blocks per stage of the CIFAR ResNets (depth = 6n + 2)
CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet56": 9, "resnet110": 18}
#: ImageNet ResNets: (blocks per stage, bottleneck)
IMAGENET_RESNETS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}
#: VGG layouts (numbers are conv widths, "M" a 2x2 max-pool)
VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
MODEL_NAMES = [*CIFAR_RESNETS, *IMAGENET_RESNETS, *VGG_LAYOUTS]


@dataclass(frozen=True)
class Arch:
    """A network's structure and the width of every channel space.

    Attributes:
        name: the model name (``resnet20``, ``vgg16``...).
        family: ``resnet`` or ``vgg``.
        stages: ResNet blocks per stage; VGG: the layout with widths replaced by space ids.
        bottleneck: ResNet bottleneck blocks (ResNet-50).
        imagenet_stem: a 7x7/2 conv and a 3x3/2 max-pool instead of one 3x3 conv.
        widths: channel space -> number of channels.
        in_channels: image channels.
        num_classes: logits.
    """

    name: str
    family: str
    stages: tuple[int | str, ...]
    bottleneck: bool
    imagenet_stem: bool
    widths: dict[str, int]
    in_channels: int
    num_classes: int

    def with_widths(self, widths: dict[str, int]) -> Arch:
        """The same structure with some spaces narrowed (or widened)."""
        return dataclasses.replace(self, widths={**self.widths, **widths})

    def total_channels(self) -> int:
        """Channels over every prunable space."""
        return sum(self.widths.values())


def make_arch(name: str, in_channels: int, num_classes: int) -> Arch:
    """The dense architecture of a named model.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name in CIFAR_RESNETS:
        n = CIFAR_RESNETS[name]
        return _resnet_arch(name, (n, n, n), (16, 32, 64), False, False, in_channels, num_classes)
    if name in IMAGENET_RESNETS:
        blocks, bottleneck = IMAGENET_RESNETS[name]
        return _resnet_arch(name, blocks, (64, 128, 256, 512), bottleneck, True, in_channels, num_classes)
    if name in VGG_LAYOUTS:
        layout: list[int | str] = []
        widths: dict[str, int] = {}
        for item in VGG_LAYOUTS[name]:
            if item == "M":
                layout.append("M")
            else:
                space = f"c{len(widths)}"
                widths[space] = int(item)
                layout.append(space)
        return Arch(name, "vgg", tuple(layout), False, False, widths, in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def _resnet_arch(name: str, blocks: tuple[int, ...], planes: tuple[int, ...], bottleneck: bool, imagenet_stem: bool,
                 in_channels: int, num_classes: int) -> Arch:
    expansion = 4 if bottleneck else 1
    widths: dict[str, int] = {"s0": planes[0]}
    for i, (n, p) in enumerate(zip(blocks, planes)):
        widths[f"s{i + 1}"] = p * expansion
        for j in range(n):
            widths[f"b{i + 1}.{j}.a"] = p
            if bottleneck:
                widths[f"b{i + 1}.{j}.b"] = p
    return Arch(name, "resnet", tuple(blocks), bottleneck, imagenet_stem, widths, in_channels, num_classes)


class ConvBN(nn.Module):
    """A bias-free conv and its BatchNorm, tagged with the channel spaces they connect."""

    def __init__(self, in_space: str, out_space: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.in_space, self.out_space = in_space, out_space
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Block(nn.Module):
    """A residual block (basic: 3x3-3x3; bottleneck: 1x1-3x3-1x1) with an optional projection shortcut."""

    def __init__(self, layers: list[ConvBN], shortcut: ConvBN | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, layer in enumerate(self.layers):
            out = layer(out)
            if i < len(self.layers) - 1:
                out = torch.relu(out)
        res = self.shortcut(x) if self.shortcut is not None else x
        return torch.relu(out + res)


class EmptyBlock(nn.Module):
    """A residual block whose branch lost every channel: ``relu(x + bn(0))``.

    With no channel left, the branch's last conv outputs exact zeros, so the branch adds
    its last BN applied to zeros: ``beta`` in training (batch statistics of zeros are 0),
    ``beta - gamma * mean / sqrt(var + eps)`` in eval. That BN is kept (renamed ``bn``) and
    applied to a ``[2, C, 1, 1]`` zero tensor, which gives the same output and the same
    running-statistics update as the full branch did, without its convolutions. Only
    blocks with an identity shortcut become empty (a projection shortcut would still need
    its conv, so such a block keeps one channel).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(2, x.shape[1], 1, 1, dtype=x.dtype, device=x.device)
        return torch.relu(x + self.bn(zeros)[:1])


class Net(nn.Module):
    """A ResNet or VGG built from an :class:`Arch` (its ``arch`` attribute)."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        w = arch.widths
        self.stem: nn.Module
        if arch.family == "vgg":
            feats: list[nn.Module] = []
            prev = INPUT
            for item in arch.stages:
                if item == "M":
                    feats.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 16x16 inputs survive five pools
                else:
                    space = str(item)
                    feats += [ConvBN(prev, space, _width(w, prev, arch), w[space], 3), nn.ReLU()]
                    prev = space
            self.stem = nn.Sequential(*feats)
            self.blocks = nn.Sequential()
            self.block_spaces: list[tuple[str, list[str], bool]] = []
        else:
            k, s = (7, 2) if arch.imagenet_stem else (3, 1)
            stem: list[nn.Module] = [ConvBN(INPUT, "s0", arch.in_channels, w["s0"], k, s), nn.ReLU()]
            if arch.imagenet_stem:
                stem.append(nn.MaxPool2d(3, stride=2, padding=1))
            self.stem = nn.Sequential(*stem)
            blocks: list[nn.Module] = []
            #: per block: its module name, its inner spaces (last one last), identity shortcut?
            self.block_spaces = []
            prev = "s0"
            for i, n in enumerate(arch.stages):
                stream = f"s{i + 1}"
                for j in range(int(n)):
                    stride = 2 if (j == 0 and i > 0) else 1
                    blocks.append(self._block(prev, stream, f"b{i + 1}.{j}", stride))
                    prev = stream
            self.blocks = nn.Sequential(*blocks)
        self.last_space = prev
        self.fc = nn.Linear(w[prev], arch.num_classes)

    def _block(self, src: str, dst: str, name: str, stride: int) -> nn.Module:
        w = self.arch.widths
        inner = [f"{name}.a", f"{name}.b"] if self.arch.bottleneck else [f"{name}.a"]
        identity = (src == dst or self._same_stream(src, dst)) and stride == 1
        self.block_spaces.append((f"blocks.{len(self.block_spaces)}", inner, identity))
        if w[inner[-1]] == 0:
            if not identity:
                raise ValueError(f"block {name}: only a block with an identity shortcut can be empty")
            return EmptyBlock(w[dst])
        if self.arch.bottleneck:
            a, b = f"{name}.a", f"{name}.b"
            layers = [ConvBN(src, a, w[src], w[a], 1), ConvBN(a, b, w[a], w[b], 3, stride), ConvBN(b, dst, w[b], w[dst], 1)]
        else:
            a = f"{name}.a"
            layers = [ConvBN(src, a, w[src], w[a], 3, stride), ConvBN(a, dst, w[a], w[dst], 3)]
        shortcut = None if identity else ConvBN(src, dst, w[src], w[dst], 1, stride)
        return Block(layers, shortcut)

    def _same_stream(self, src: str, dst: str) -> bool:
        # a basic ResNet's stage 1 reads s0 and writes s1 at equal width and stride 1: an identity
        # shortcut, so s0 and s1 are one residual node (see merged_spaces)
        return not self.arch.bottleneck and src == "s0" and dst == "s1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

    def convbns(self) -> Iterator[ConvBN]:
        """Every conv+BN in forward order (shortcuts after their block's layers)."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                yield m


def _width(w: dict[str, int], space: str, arch: Arch) -> int:
    return arch.in_channels if space == INPUT else w[space]


def merged_spaces(arch: Arch) -> dict[str, str]:
    """Spaces that are one residual node: space -> its representative.

    A basic ResNet's stem output ``s0`` and stage-1 stream ``s1`` are joined by identity
    shortcuts, so they must keep the same channels.
    """
    if arch.family == "resnet" and not arch.bottleneck:
        return {"s0": "s1"}
    return {}


def canonical(arch: Arch) -> Arch:
    """The arch with merged spaces given equal widths (their representative's)."""
    merged = merged_spaces(arch)
    return arch.with_widths({s: arch.widths[r] for s, r in merged.items()})


def build(arch: Arch) -> Net:
    """A freshly initialised network of this architecture (Kaiming conv init, BN weight 1)."""
    net = Net(canonical(arch))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def _block_stream(net: Net, block_name: str) -> str:
    """The residual stream space an empty block adds to (its stage's ``s<i>``)."""
    for name, inner, _ in net.block_spaces:
        if name == block_name:
            return "s" + inner[0][1:].split(".")[0]
    raise KeyError(block_name)


def param_spaces(net: Net) -> dict[str, tuple[str | None, ...]]:
    """For every state_dict entry, the channel space of each dimension (None: not a channel dim).

    Conv weights are ``(out, in, None, None)``, BN tensors ``(out,)``, the FC weight
    ``(classes, last space)``; BN's ``num_batches_tracked`` is a scalar ``()``.
    """
    merged = merged_spaces(net.arch)
    rep = lambda s: merged.get(s, s)  # noqa: E731 - a one-line alias map
    out: dict[str, tuple[str | None, ...]] = {}
    for name, m in net.named_modules():
        if isinstance(m, ConvBN):
            o, i = rep(m.out_space), rep(m.in_space)
            out[f"{name}.conv.weight"] = (o, i, None, None)
            for t in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.bn.{t}"] = (o,)
            out[f"{name}.bn.num_batches_tracked"] = ()
        elif isinstance(m, EmptyBlock):
            stream = rep(_block_stream(net, name))
            for t in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.bn.{t}"] = (stream,)
            out[f"{name}.bn.num_batches_tracked"] = ()
    out["fc.weight"] = (CLASSES, rep(net.last_space))
    out["fc.bias"] = (CLASSES,)
    return out
