"""Attention for the engine: per-iteration metadata and backend dispatch.

The runner packs an iteration's tokens as ``[decode tokens | prefill chunk 1 | chunk 2 |
...]``. :func:`build_metadata` turns the chunks into tensors once per iteration (slot
mapping, padded block tables, lengths, masks), shared by every layer. A
:class:`PagedAttention` then, per layer, writes the new K/V into the cache and runs

* batched decode over all single-token chunks (torch gather+matmul, or the Triton
  split-K kernel), and
* per prefill chunk, SDPA against the cached prefix with a lower-right causal bias (on CPU
  in fp32/bf16, a chunk with a cached prefix runs ``engine.kvp.partial_attention``'s
  flash-kernel split instead: the unmasked prefix and the causal square merged by their
  LSEs, reading the prefix as a view when its blocks are one ascending run).

Example::

    meta = build_metadata(chunks, block_size=16, device="cpu", backend="torch")
    attn = PagedAttention("torch", scale=head_dim ** -0.5)
    out = attn(q, k, v, k_cache, v_cache, meta)   # [T, heads, head_dim]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from charbench.errors import BackendUnavailableError, ConfigError
from charbench.kernels.attention.paged_torch import (
    decode_attn_bias,
    decode_valid_mask,
    paged_decode_torch,
    paged_prefill_torch,
    prefix_causal_mask,
)

BACKENDS = ("torch", "triton")

#: torch's flash-attention CPU kernel (returns the LSE), when this torch has it
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class ChunkLike(Protocol):
    """What :func:`build_metadata` reads from a chunk (``runner.SeqChunk`` fits)."""

    token_ids: list[int]
    start_pos: int
    block_table: list[int]


@dataclass
class PrefillSpan:
    """One multi-token chunk inside the packed batch.

    Attributes:
        token_start: index of its first token in the packed batch.
        num_tokens: tokens in the chunk.
        start_pos: tokens already cached before the chunk.
        block_table: long ``[n_blocks]`` on the device.
        mask: bool ``[num_tokens, start_pos + num_tokens]`` causal mask against the prefix
            (CPU only, built once for all layers; None on GPU, without a prefix, or on the
            flash split path).
        first_block: the first block when the table is one ascending run (else None).
        split: run the CPU flash split (fp32/bf16 with a cached prefix).
    """

    token_start: int
    num_tokens: int
    start_pos: int
    block_table: torch.Tensor
    mask: torch.Tensor | None = None
    first_block: int | None = None
    split: bool = False


@dataclass
class AttentionMetadata:
    """Per-iteration tensors shared by all layers.

    Attributes:
        input_ids: long ``[T]``.
        positions: long ``[T]``.
        slot_mapping: long ``[T]``, flat cache slot (``block * block_size + offset``) of
            each token.
        num_decode: the first ``num_decode`` tokens are single-token chunks.
        decode_block_tables: long ``[num_decode, max_blocks]`` (padded with block 0).
        decode_seq_lens: long ``[num_decode]``, cached tokens incl. the new one.
        decode_bias: additive padding bias ``[num_decode, 1, 1, max_blocks * block_size]``
            in the model dtype (torch backend).
        decode_max_len: ``max(decode_seq_lens)`` as a Python int.
        prefills: the multi-token chunks, in packed order.
        max_position: largest position in the batch.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    num_decode: int
    decode_block_tables: torch.Tensor | None
    decode_seq_lens: torch.Tensor | None
    decode_bias: torch.Tensor | None
    decode_max_len: int
    prefills: list[PrefillSpan] = field(default_factory=list)
    max_position: int = 0


def chunk_slots(table: Sequence[int], start: int, n: int, block_size: int) -> list[int]:
    """Flat cache slots of positions ``start .. start+n-1``: one run per block, not per token.

    A 1024-token prefill packs in ~0.1 ms instead of ~1 ms of per-token Python, which
    would otherwise be a visible share of a small model's one-layer recompute (cache-reuse).
    """
    out: list[int] = []
    end = start + n
    for b in range(start // block_size, (end - 1) // block_size + 1):
        lo, hi = max(start, b * block_size), min(end, (b + 1) * block_size)
        base = table[b] * block_size - b * block_size
        out.extend(range(base + lo, base + hi))
    return out


def build_metadata(
    chunks: Sequence[ChunkLike],
    block_size: int,
    device: torch.device | str,
    backend: str = "torch",
    dtype: torch.dtype = torch.float32,
) -> AttentionMetadata:
    """Pack chunks (single-token chunks first, as the runner orders them) into tensors.

    All integer arrays go to the device in one copy.

    Args:
        chunks: decode chunks (one token) first, then prefill chunks.
        block_size: tokens per KV block.
        device: the model's device.
        backend: ``torch`` or ``triton`` (triton needs no decode mask).
        dtype: the model's dtype (of the decode bias).

    Returns:
        The metadata.
    """
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    dec_lens: list[int] = []
    dec_tables: list[list[int]] = []
    spans: list[tuple[int, int, int, int, int]] = []  # token_start, n, start, table off, len
    tables_flat: list[int] = []
    num_decode = 0
    for c in chunks:
        n, start, table = len(c.token_ids), c.start_pos, c.block_table
        if n == 0:
            raise ValueError("a chunk has no tokens")
        if -(-(start + n) // block_size) > len(table):
            raise ValueError(
                f"block table of {len(table)} blocks cannot hold {start + n} tokens "
                f"(block_size {block_size})"
            )
        if n == 1 and not spans:
            num_decode += 1
            dec_lens.append(start + 1)
            dec_tables.append(table)
        elif n == 1:
            raise ValueError("single-token chunks must come before prefill chunks")
        else:
            n_blocks = -(-(start + n) // block_size)
            spans.append((len(ids), n, start, len(tables_flat), n_blocks))
            tables_flat.extend(table[:n_blocks])
        ids.extend(c.token_ids)
        pos.extend(range(start, start + n))
        slots.extend(chunk_slots(table, start, n, block_size))
    max_blocks = max((len(t) for t in dec_tables), default=0)
    max_blocks = max(max_blocks, max((-(-n // block_size) for n in dec_lens), default=0))
    dec_flat: list[int] = []
    for t, length in zip(dec_tables, dec_lens):
        need = -(-length // block_size)
        row = list(t[:need]) + [0] * (max_blocks - need)
        dec_flat.extend(row)
    t_total = len(ids)
    packed = torch.tensor(ids + pos + slots + dec_lens + dec_flat + tables_flat, dtype=torch.long)
    packed = packed.to(device, non_blocking=True)
    o = 0
    input_ids = packed[o : o + t_total]; o += t_total  # noqa: E702
    positions = packed[o : o + t_total]; o += t_total  # noqa: E702
    slot_mapping = packed[o : o + t_total]; o += t_total  # noqa: E702
    dec_lens_t = packed[o : o + num_decode]; o += num_decode  # noqa: E702
    dec_bt = packed[o : o + num_decode * max_blocks].view(num_decode, max_blocks)
    o += num_decode * max_blocks
    on_cpu = packed.device.type == "cpu"
    split = on_cpu and dtype in (torch.float32, torch.bfloat16) and _FLASH_CPU is not None
    prefills = []
    for ts, n, start, off, nb in spans:
        table = tables_flat[off : off + nb]
        run = table[-1] - table[0] == nb - 1 and table == list(range(table[0], table[0] + nb))
        prefills.append(PrefillSpan(
            ts, n, start, packed[o + off : o + off + nb],
            prefix_causal_mask(n, start + n, packed.device) if on_cpu and start and not split else None,
            table[0] if run else None, bool(split and start)))
    bias = None
    if num_decode and backend == "torch":
        bias = decode_attn_bias(decode_valid_mask(dec_lens_t, max_blocks * block_size), dtype)
    return AttentionMetadata(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        num_decode=num_decode,
        decode_block_tables=dec_bt if num_decode else None,
        decode_seq_lens=dec_lens_t if num_decode else None,
        decode_bias=bias,
        decode_max_len=max(dec_lens, default=0),
        prefills=prefills,
        max_position=max(pos, default=0),
    )


def check_backend(backend: str, device: torch.device | str) -> None:
    """Validate ``--attention-backend`` for ``device``.

    Raises:
        ConfigError: unknown backend name.
        BackendUnavailableError: Triton cannot run on this device.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"--attention-backend: unknown backend '{backend}'; valid: {', '.join(BACKENDS)}"
        )
    if backend == "triton":
        from charbench.kernels.attention.paged_decode_triton import triton_unavailable_reason

        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"--attention-backend triton: {reason}")


class PagedAttention:
    """Writes new K/V into a layer's cache and attends over it.

    Args:
        backend: ``torch`` or ``triton`` (Triton for the decode part; prefill uses SDPA).
        scale: softmax scale.
    """

    def __init__(self, backend: str, scale: float) -> None:
        if backend not in BACKENDS:
            raise ConfigError(
                f"--attention-backend: unknown backend '{backend}'; valid: {', '.join(BACKENDS)}"
            )
        self.backend, self.scale = backend, scale
        self._triton_decode = None
        if backend == "triton":
            from charbench.kernels.attention.paged_decode_triton import paged_decode_triton

            self._triton_decode = paged_decode_triton

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Attention for a packed batch.

        Args:
            q: ``[T, heads, head_dim]``.
            k: ``[T, kv_heads, head_dim]`` (this iteration's keys, RoPE applied).
            v: ``[T, kv_heads, head_dim]``.
            k_cache: ``[num_blocks, block_size, kv_heads, head_dim]``.
            v_cache: same shape.
            meta: from :func:`build_metadata`.

        Returns:
            ``[T, heads, head_dim]``.
        """
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
        nd = meta.num_decode
        if nd and not meta.prefills:
            return self._decode(q, k_cache, v_cache, meta)
        if not nd and len(meta.prefills) == 1:
            return self._prefill(q, k, v, k_cache, v_cache, meta.prefills[0])
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        if nd:
            out[:nd] = self._decode(q[:nd], k_cache, v_cache, meta)
        for sp in meta.prefills:
            s, e = sp.token_start, sp.token_start + sp.num_tokens
            out[s:e] = self._prefill(q[s:e], k[s:e], v[s:e], k_cache, v_cache, sp)
        return out

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, sp: PrefillSpan) -> torch.Tensor:
        if not sp.split:
            return paged_prefill_torch(
                q, k_cache, v_cache, sp.block_table, sp.start_pos, self.scale, k_new=k, v_new=v, mask=sp.mask,
            )
        from charbench.engine.kvp import partial_attention

        total = sp.start_pos + sp.num_tokens
        kvh, d = k_cache.shape[2], k_cache.shape[3]
        if sp.first_block is not None:  # a view, no gather
            nb = sp.block_table.numel()
            keys = k_cache[sp.first_block : sp.first_block + nb].view(-1, kvh, d)[:total]
            vals = v_cache[sp.first_block : sp.first_block + nb].view(-1, kvh, d)[:total]
        else:
            keys = k_cache[sp.block_table].view(-1, kvh, d)[:total]
            vals = v_cache[sp.block_table].view(-1, kvh, d)[:total]
        q_pos = torch.arange(sp.start_pos, total, device=q.device)
        return partial_attention(q, keys, vals, q_pos, 0, self.scale)[0]

    def _decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        assert meta.decode_block_tables is not None and meta.decode_seq_lens is not None
        # q may be a strided slice of the fused qkv output; both paths read it by strides
        if self._triton_decode is not None:
            out, _ = self._triton_decode(
                q, k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens,
                self.scale, max_seq_len=meta.decode_max_len, check=False,
            )
            return out
        return paged_decode_torch(  # type: ignore[return-value]
            q, k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, self.scale,
            attn_bias=meta.decode_bias,
        )
