"""Attention over a paged KV cache: references, a batched torch path, a Triton decode kernel.

Cache layout shared by every function here: one tensor per layer for K and one for V,
each ``[num_blocks, block_size, num_kv_heads, head_dim]``; a sequence's tokens live in
the blocks its block table names, token ``t`` at ``(block_table[t // block_size],
t % block_size)``.

Modules:

* :mod:`.reference` -- slow, obviously-correct per-sequence loops (float64 capable).
* :mod:`.paged_torch` -- the batched torch implementation the engine runs on CPU and GPU.
* :mod:`.paged_decode_triton` -- a split-K (flash-decoding) Triton decode kernel that also
  returns the log-sum-exp of each head's scores.
* :mod:`.lse_merge` -- merges partial attention outputs by their log-sum-exps (split-K,
  KV parallelism).

Example::

    from charbench.kernels.attention.paged_torch import paged_decode_torch
    out, lse = paged_decode_torch(q, k_cache, v_cache, block_tables, seq_lens, scale,
                                  return_lse=True)
"""
