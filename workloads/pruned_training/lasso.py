"""PruneTrain's group-lasso regulariser and the coefficient that makes it a ratio of the loss.

For every conv weight ``W[K, C, R, S]`` the penalty sums the L2 norms of its output-channel
groups ``W[k]`` and of its input-channel groups ``W[:, c]`` (not for the first conv, whose
inputs are the image); the FC contributes its input-column groups. Each norm is
``sqrt(sum(w^2) + 1e-8)`` as in PruneTrain's ``group_lasso_regs.py`` (differentiable at 0)::

    lam = penalty_coefficient(ce_loss, group_lasso(net), ratio=0.2)   # once, first mini-batch
    loss = ce + lam * group_lasso(net)
"""

from __future__ import annotations

import torch

from charbench.workloads.pruned_training.models import INPUT, Net

#: added under every group's square root (PruneTrain's value)
NORM_EPS = 1e-8


def group_norms(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norm of every slice of ``weight`` along ``dim`` (``sqrt(sum w^2 + 1e-8)``).

    Args:
        weight: a conv ``[K, C, R, S]`` or FC ``[K, C]`` weight.
        dim: 0 for output-channel groups, 1 for input-channel groups.
    """
    other = [d for d in range(weight.dim()) if d != dim]
    return torch.sqrt(weight.pow(2).sum(dim=other) + NORM_EPS)


def group_lasso(net: Net) -> torch.Tensor:
    """The group-lasso penalty ``R`` of a network (a scalar with autograd history)."""
    terms: list[torch.Tensor] = []
    for cb in net.convbns():
        w = cb.conv.weight
        terms.append(group_norms(w, 0).sum())
        if cb.in_space != INPUT:
            terms.append(group_norms(w, 1).sum())
    terms.append(group_norms(net.fc.weight, 1).sum())
    return torch.stack(terms).sum()


def penalty_coefficient(ce_loss: float, penalty: float, ratio: float) -> float:
    """lambda such that ``lambda * R / (L_CE + lambda * R) == ratio`` on the first mini-batch.

    Raises:
        ValueError: ``ratio`` outside (0, 1) or a non-positive penalty.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--penalty-ratio must be in (0, 1), got {ratio}")
    if penalty <= 0.0:
        raise ValueError(f"group-lasso penalty is {penalty}; a network with all-zero weights cannot be regularised")
    return ratio * ce_loss / ((1.0 - ratio) * penalty)
