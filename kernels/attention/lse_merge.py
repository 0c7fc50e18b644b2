"""Merge partial attention results by their log-sum-exps.

Attention over keys split into disjoint parts ``P1..Pk`` (split-K decoding, KV cache
sharded across devices) gives per part an output ``o_i = softmax(s_i) @ v_i`` and the
log-sum-exp ``lse_i = log(sum(exp(s_i)))``. The exact result over all keys is::

    lse = log(sum_i exp(lse_i))
    o   = sum_i exp(lse_i - lse) * o_i

A part with no keys has ``lse_i = -inf`` and contributes nothing. Example::

    out, lse = merge_attention_states([o1, o2], [lse1, lse2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def merge_attention_states(
    outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention outputs computed over disjoint key sets.

    Args:
        outs: ``k`` tensors ``[..., head_dim]`` (e.g. ``[B, num_heads, head_dim]``).
        lses: ``k`` tensors ``[...]`` matching ``outs`` without the last dim; natural log.
            ``-inf`` marks a part without keys.

    Returns:
        ``(out, lse)``: ``out`` in the dtype of ``outs[0]``, ``lse`` in float32. Where
        every part is empty, ``out`` is 0 and ``lse`` is ``-inf``.
    """
    if len(outs) != len(lses) or not outs:
        raise ValueError("merge_attention_states needs as many lses as outs, at least one")
    lse_all = torch.stack([x.float() for x in lses])  # [k, ...]
    lse_max = lse_all.amax(dim=0)
    # A slice whose every part is empty has lse_max = -inf; shift by 0 there to avoid NaN.
    finite_max = torch.where(torch.isinf(lse_max), torch.zeros_like(lse_max), lse_max)
    weights = torch.exp(lse_all - finite_max)  # [k, ...]; exp(-inf) = 0 for empty parts
    total = weights.sum(dim=0)
    lse = torch.log(total) + finite_max
    norm = torch.where(total > 0, total, torch.ones_like(total))
    out = sum(w[..., None] * o.float() for w, o in zip(weights, outs)) / norm[..., None]
    return out.to(outs[0].dtype), lse
