"""Reference attention over a paged KV cache: one sequence at a time, no tricks.

These functions are the ground truth the batched torch path and the Triton kernel are
tested against. They gather each sequence's keys and values into a contiguous tensor and
compute softmax attention in the precision of the inputs (pass float64 tensors for a
float64 reference)::

    out, lse = paged_decode_reference(q, k_cache, v_cache, block_tables, seq_lens, scale)
"""

from __future__ import annotations

import torch


def gather_kv(
    cache: torch.Tensor, block_table: torch.Tensor | list[int], length: int
) -> torch.Tensor:
    """Gather the first ``length`` tokens of one sequence from a paged cache.

    Args:
        cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        block_table: the sequence's block ids (at least ``ceil(length / block_size)``).
        length: number of tokens to gather.

    Returns:
        ``[length, num_kv_heads, head_dim]`` (a copy).
    """
    block_size = cache.shape[1]
    n_blocks = -(-length // block_size)
    ids = torch.as_tensor(list(block_table)[:n_blocks], dtype=torch.long, device=cache.device)
    return cache[ids].reshape(-1, cache.shape[2], cache.shape[3])[:length]


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    q_start: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of ``n`` queries at positions ``q_start..q_start+n-1`` over ``L`` keys.

    Query ``i`` sees keys ``0..q_start+i``. Grouped-query attention: query head ``h`` uses
    key/value head ``h // (num_heads // num_kv_heads)``.

    Args:
        q: ``[n, num_heads, head_dim]``.
        k: ``[L, num_kv_heads, head_dim]`` with ``L >= q_start + n``.
        v: ``[L, num_kv_heads, head_dim]``.
        scale: softmax scale (usually ``head_dim ** -0.5``).
        q_start: position of the first query.

    Returns:
        ``(out [n, num_heads, head_dim], lse [n, num_heads])``; ``lse`` is the natural-log
        log-sum-exp of the scaled scores of each query head.
    """
    n, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [L, H, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q, k) * scale  # [H, n, L]
    q_pos = torch.arange(n, device=q.device)[:, None] + q_start
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [H, n]
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("hnl,lhd->nhd", probs, v)
    return out, lse.transpose(0, 1)


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor | list[list[int]],
    seq_lens: torch.Tensor | list[int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention: one query per sequence over all of its cached tokens.

    Args:
        q: ``[B, num_heads, head_dim]``; query ``b`` is at position ``seq_lens[b] - 1``.
        k_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        v_cache: same shape as ``k_cache``.
        block_tables: per sequence, its block ids.
        seq_lens: per sequence, tokens in the cache (including the query's own token).
        scale: softmax scale.

    Returns:
        ``(out [B, num_heads, head_dim], lse [B, num_heads])``.
    """
    outs, lses = [], []
    for b in range(q.shape[0]):
        length = int(seq_lens[b])
        table = block_tables[b]
        table = table.tolist() if isinstance(table, torch.Tensor) else table
        k = gather_kv(k_cache, table, length)
        v = gather_kv(v_cache, table, length)
        out, lse = attention_reference(q[b : b + 1], k, v, scale, q_start=length - 1)
        outs.append(out[0])
        lses.append(lse[0])
    return torch.stack(outs), torch.stack(lses)


def paged_prefill_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: list[int],
    start_pos: int,
    scale: float,
) -> torch.Tensor:
    """A prefill chunk of ``n`` queries against the cached prefix and itself (causal).

    The chunk's own keys/values must already be in the cache at positions
    ``start_pos..start_pos+n-1``.

    Args:
        q: ``[n, num_heads, head_dim]``.
        k_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        v_cache: same shape as ``k_cache``.
        block_table: the sequence's block ids.
        start_pos: position of ``q[0]`` (tokens cached before this chunk).
        scale: softmax scale.

    Returns:
        ``[n, num_heads, head_dim]``.
    """
    length = start_pos + q.shape[0]
    k = gather_kv(k_cache, block_table, length)
    v = gather_kv(v_cache, block_table, length)
    return attention_reference(q, k, v, scale, q_start=start_pos)[0]
