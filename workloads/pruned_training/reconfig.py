"""PruneTrain's reconfiguration: drop dead channels and keep training the smaller dense network.

A channel of a space (see :mod:`models`) is dead when every group that touches it, the
producers' output-channel groups ``W[k]`` and the consumers' input-channel groups
``W[:, c]`` (the FC's columns included), has ``max |w| < threshold`` (PruneTrain's union
rule, with a real absolute value: PruneTrain's released ``torch.where(param < threshold, 0,
param)`` compares signed values). Reconfiguration first zeroes every group below the
threshold in place (PruneTrain's ``_makeSparse``), then slices conv weights, BN parameters
and running statistics, the FC, and the SGD momentum buffers, and points the *same*
optimizer at the new parameters::

    net, report = reconfigure(net, optimizer, threshold=1e-4)

After the zeroing the removal is exact: a dead channel's activation reaches no consumer.
Empty blocks are removed where safe: a residual block with an identity shortcut whose
branch has no channel left becomes an :class:`~.models.EmptyBlock` (no convolutions; its
last BN's constant is kept, so the output is unchanged). Any other space that would be
left empty keeps its strongest channel (an empty stream would cut the network; a block
with a projection shortcut still needs its branch's BN behind a conv).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charbench.workloads.pruned_training.models import CLASSES, INPUT, Net, merged_spaces, param_spaces

FIXED_SPACES = (INPUT, CLASSES)


@dataclass
class Reconfiguration:
    """What one reconfiguration did.

    Attributes:
        keep: space -> the sorted channel indices kept.
        widths_before: space -> channels before.
        widths_after: space -> channels after.
        zeroed_groups: groups whose weights were set to 0 (max |w| below the threshold).
    """

    keep: dict[str, list[int]]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    zeroed_groups: int

    @property
    def removed_channels(self) -> int:
        """Channels removed over every space."""
        return sum(self.widths_before.values()) - sum(self.widths_after.values())


def _groups(net: Net) -> list[tuple[torch.Tensor, int, str]]:
    """(weight, group dim, space) for every group family that touches a prunable space."""
    spaces = param_spaces(net)
    params = dict(net.named_parameters())
    out: list[tuple[torch.Tensor, int, str]] = []
    for name, dims in spaces.items():
        if not (name.endswith("conv.weight") or name == "fc.weight"):
            continue
        for dim, space in enumerate(dims[:2]):
            if space is not None and space not in FIXED_SPACES:
                out.append((params[name], dim, space))
    return out


def group_max_abs(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """max |w| of every slice of ``weight`` along ``dim`` (absolute value: a negative weight counts)."""
    other = [d for d in range(weight.dim()) if d != dim]
    return weight.detach().abs().amax(dim=other)


def sparsify(net: Net, threshold: float) -> int:
    """Zero, in place, every group whose max |w| is below ``threshold``; returns how many groups."""
    count = 0
    with torch.no_grad():
        for w, dim, _ in _groups(net):
            dead = group_max_abs(w, dim) < threshold
            if bool(dead.any()):
                w.index_fill_(dim, dead.nonzero().flatten(), 0.0)
                count += int(dead.sum())
    return count


def removable_blocks(net: Net) -> dict[str, list[str]]:
    """Blocks that may become empty: module name -> inner spaces, for identity-shortcut blocks
    that still have their convolutions."""
    return {name: inner for name, inner, identity in net.block_spaces
            if identity and net.arch.widths[inner[-1]] > 0}


def live_channels(net: Net, threshold: float) -> dict[str, torch.Tensor]:
    """space -> bool mask of channels that some group touching the space keeps (the union rule).

    An empty mask is left only for the last inner space of a block that may become empty
    (:func:`removable_blocks`); every other empty space keeps its strongest channel.
    """
    may_empty = {inner[-1] for inner in removable_blocks(net).values()}
    alive: dict[str, torch.Tensor] = {}
    strength: dict[str, torch.Tensor] = {}
    for w, dim, space in _groups(net):
        m = group_max_abs(w, dim)
        alive[space] = alive.get(space, torch.zeros_like(m, dtype=torch.bool)) | (m >= threshold)
        strength[space] = torch.maximum(strength.get(space, torch.zeros_like(m)), m)
    for space, mask in alive.items():
        if not bool(mask.any()) and space not in may_empty:
            # an empty space would delete a block or cut the network; keep its strongest channel
            mask[int(strength[space].argmax())] = True
    return alive


def slice_state(state: dict[str, torch.Tensor], spaces: dict[str, tuple[str | None, ...]], keep: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Every tensor of ``state`` with its channel dimensions reduced to the kept indices."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        for dim, space in enumerate(spaces[name]):
            if space in keep:
                t = t.index_select(dim, torch.tensor(keep[space], dtype=torch.long, device=t.device))
        out[name] = t.clone()
    return out


def reconfigure(net: Net, optimizer: torch.optim.Optimizer | None, threshold: float) -> tuple[Net, Reconfiguration]:
    """Remove dead channels; returns the smaller network (the optimizer now trains it).

    Args:
        net: the network (zeroed in place below the threshold).
        optimizer: an SGD whose one param group holds ``net.parameters()`` in order, or None.
        threshold: a group is zero when its max |w| is below this.
    """
    zeroed = sparsify(net, threshold)
    masks = live_channels(net, threshold)
    keep = {s: m.nonzero().flatten().tolist() for s, m in masks.items()}
    renames: dict[str, str] = {}  # old parameter name -> its name in the small net
    for block, inner in removable_blocks(net).items():
        if not keep.get(inner[-1], [None]):
            for space in inner:  # the branch's other inner spaces feed only the emptied conv
                keep[space] = []
            last = f"{block}.layers.{len(inner)}.bn."
            renames.update({k: f"{block}.bn.{k[len(last):]}" for k in net.state_dict() if k.startswith(last)})
    before = dict(net.arch.widths)
    after = {s: len(keep[s]) for s in keep}
    for space, rep in merged_spaces(net.arch).items():
        after[space] = after[rep]
    spaces = param_spaces(net)
    small = Net(net.arch.with_widths(after)).to(next(net.parameters()).device)
    sliced = slice_state(net.state_dict(), spaces, keep)
    small_keys = set(small.state_dict())
    small.load_state_dict({renames.get(k, k): t for k, t in sliced.items() if renames.get(k, k) in small_keys})
    small.to(memory_format=_memory_format(net))
    if optimizer is not None:
        _move_optimizer(optimizer, net, small, spaces, keep, {v: k for k, v in renames.items()})
    return small, Reconfiguration(keep, before, dict(small.arch.widths), zeroed)


def _memory_format(net: Net) -> torch.memory_format:
    w = next(cb.conv.weight for cb in net.convbns())
    return torch.channels_last if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() else torch.contiguous_format


def _move_optimizer(opt: torch.optim.Optimizer, old: Net, new: Net, spaces: dict[str, tuple[str | None, ...]], keep: dict[str, list[int]],
                    old_names: dict[str, str] | None = None) -> None:
    """Point ``opt`` at ``new``'s parameters, its per-parameter state sliced like the parameters.

    ``old_names`` maps a new parameter name to its old one where they differ (an emptied
    block's BN); the removed convolutions' state is dropped.
    """
    old_names = old_names or {}
    old_params = dict(old.named_parameters())
    if len(opt.param_groups) != 1 or [id(p) for p in opt.param_groups[0]["params"]] != [id(p) for p in old_params.values()]:
        raise ValueError("reconfigure: the optimizer must hold exactly the network's parameters in one param group")
    state = {}
    for name, p_new in new.named_parameters():
        old_name = old_names.get(name, name)
        st = opt.state.get(old_params[old_name])
        if st:
            state[p_new] = {k: (slice_state({old_name: v}, spaces, keep)[old_name] if torch.is_tensor(v) and v.dim() > 0 else v)
                            for k, v in st.items()}
    opt.param_groups[0]["params"] = list(new.parameters())
    opt.state.clear()
    opt.state.update(state)
