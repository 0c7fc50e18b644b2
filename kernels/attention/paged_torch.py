"""Batched attention over a paged KV cache in plain torch (CPU and GPU).

* :func:`paged_decode_torch` -- one query per sequence, sequences of different lengths in
  one batched call: gather every sequence's blocks (padded to the longest table), mask the
  padding, one batched matmul per step.
* :func:`paged_prefill_torch` -- a prefill chunk against the cached prefix, causal within
  the chunk, through ``scaled_dot_product_attention`` with a lower-right causal bias
  (flash/efficient kernels on GPU, grouped-query heads without copying K/V).

Example::

    valid = decode_valid_mask(seq_lens, block_tables.shape[1] * block_size)
    out = paged_decode_torch(q, k_cache, v_cache, block_tables, seq_lens, scale, valid=valid)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def decode_valid_mask(seq_lens: torch.Tensor, padded_len: int) -> torch.Tensor:
    """Mask of real (not padding) key slots for batched decode.

    Args:
        seq_lens: ``[B]`` tokens per sequence.
        padded_len: key slots per sequence after gathering (``max_blocks * block_size``).

    Returns:
        bool ``[B, padded_len]``, True where the key is a real token.
    """
    pos = torch.arange(padded_len, device=seq_lens.device)
    return pos[None, :] < seq_lens[:, None]


def paged_decode_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    valid: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode attention for a batch of sequences of different lengths.

    Args:
        q: ``[B, num_heads, head_dim]``, query of sequence ``b`` at position ``seq_lens[b]-1``.
        k_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        v_cache: same shape as ``k_cache``.
        block_tables: long ``[B, max_blocks]``; entries past a sequence's blocks may hold any
            valid block id (they are masked).
        seq_lens: ``[B]`` tokens in the cache per sequence, the query's own included.
        scale: softmax scale.
        valid: optional precomputed :func:`decode_valid_mask` (shared across layers).
        return_lse: also return the natural-log log-sum-exp ``[B, num_heads]`` (float32).

    Returns:
        ``[B, num_heads, head_dim]`` in ``q``'s dtype, or ``(out, lse)``.
    """
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    padded_len = block_tables.shape[1] * block_size
    if valid is None:
        valid = decode_valid_mask(seq_lens, padded_len)
    # [B, max_blocks, block_size, kv_heads, D] -> [B, kv_heads, L, D]
    k = k_cache[block_tables].view(batch, padded_len, num_kv_heads, head_dim).transpose(1, 2)
    v = v_cache[block_tables].view(batch, padded_len, num_kv_heads, head_dim).transpose(1, 2)
    qg = q.view(batch, num_kv_heads, group, head_dim)
    # softmax in at least float32 (float64 inputs stay float64 for references)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(qg, k.transpose(-1, -2)).to(acc_dtype) * scale  # [B, kv_heads, G, L]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    if return_lse:
        lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse[..., None])
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.to(v.dtype), v).reshape(batch, num_heads, head_dim)
    if return_lse:
        return out, lse.reshape(batch, num_heads).float()
    return out


def paged_prefill_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    start_pos: int,
    scale: float,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """A prefill chunk attending to the cached prefix and causally to itself.

    Args:
        q: ``[n, num_heads, head_dim]`` at positions ``start_pos..start_pos+n-1``.
        k_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``; must already hold
            the chunk's own keys when ``start_pos > 0``.
        v_cache: same shape as ``k_cache``.
        block_table: long ``[>= ceil((start_pos+n)/block_size)]`` block ids.
        start_pos: tokens cached before this chunk.
        scale: softmax scale.
        k_new: the chunk's keys ``[n, num_kv_heads, head_dim]``; used instead of the cache
            when ``start_pos == 0`` (saves the gather).
        v_new: the chunk's values, same shape.

    Returns:
        ``[n, num_heads, head_dim]``.
    """
    n, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    total = start_pos + n
    if start_pos == 0 and k_new is not None and v_new is not None:
        k, v = k_new, v_new
    else:
        n_blocks = -(-total // block_size)
        ids = block_table[:n_blocks]
        k = k_cache[ids].view(-1, num_kv_heads, head_dim)[:total]
        v = v_cache[ids].view(-1, num_kv_heads, head_dim)[:total]
    qt = q.transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
    kt = k.transpose(0, 1).unsqueeze(0)  # [1, KV, L, D]
    vt = v.transpose(0, 1).unsqueeze(0)
    gqa = num_heads != num_kv_heads
    if total == n:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        bias = causal_lower_right(n, total)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=scale, enable_gqa=gqa)
    return out[0].transpose(0, 1)
