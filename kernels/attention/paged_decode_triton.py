"""Paged decode attention in Triton: split-K flash-decoding that also returns the LSE.

Stage 1 runs one program per (sequence, KV head, split); each walks its share of the
sequence's tokens ``BLOCK_N`` at a time, looking up every token's block in the block
table, and keeps an online softmax for all query heads of that KV head at once (grouped
query attention reads each K/V tile once). It writes a partial output and the partial
log-sum-exp. Stage 2 merges the splits by their LSEs (see :mod:`.lse_merge`) and writes
the output and the total LSE, which KV-parallel decoding needs to merge shards.

Triton is optional: import this module freely; the kernels are built on first use. On a
CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``), which is how
the tests check them against :mod:`.reference`::

    TRITON_INTERPRET=1 python -c "..."
    out, lse = paged_decode_triton(q, k_cache, v_cache, block_tables, seq_lens, scale)
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch

from charbench.errors import BackendUnavailableError

try:  # optional; the interpreter patches `tl` through the kernels' module globals
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton missing or broken
    triton = None
    tl = None


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why the Triton decode kernel cannot run on ``device``, or None when it can.

    Args:
        device: where the tensors live; CPU needs ``TRITON_INTERPRET=1``.

    Returns:
        A one-line reason, or None.
    """
    if triton is None:
        return "triton is not importable; pip install 'charbench[triton]'"
    dev = torch.device(device) if device is not None else None
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if dev is not None and dev.type == "cpu" and not interpret:
        return "the Triton kernel needs a CUDA device (or TRITON_INTERPRET=1 on CPU for testing)"
    if dev is not None and dev.type == "cuda" and interpret:
        return "TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it"
    return None


@functools.lru_cache(maxsize=2)
def _build_kernels(interpret: bool) -> tuple[Any, Any]:
    """JIT-compile (or interpret) the two kernels; cached per interpreter mode.

    Triton decides between compiling and interpreting when ``@triton.jit`` runs, so the
    kernels are defined here rather than at import time.
    """
    assert triton is not None and tl is not None
    # Reductions go through tl.reduce with the standard combine functions instead of
    # tl.max/tl.sum/tl.zeros: those are @jit helpers fixed when triton was imported, which
    # the interpreter cannot call if triton was imported before TRITON_INTERPRET was set.
    # The interpreter recognises these combine functions and reduces with numpy.
    # (The kernels may use only module globals: the interpreter re-executes their source.)

    @triton.jit
    def _split_kernel(
        Q, K, V, BT, SL, MidO, MidLse,
        sm_scale_log2,  # softmax scale * log2(e): scores are kept in base 2
        partition_size, block_size,
        stride_qb, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_btb,
        stride_mob, stride_moh, stride_mos,
        stride_mlb, stride_mlh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        IEEE_DOT: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        seq_len = tl.load(SL + b)
        start = split * partition_size
        end = tl.minimum(start + partition_size, seq_len)

        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        h_mask = offs_h < GROUP
        d_mask = offs_d < HEAD_DIM
        heads = kvh * GROUP + offs_h  # query heads served by this KV head
        q = tl.load(
            Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
            mask=h_mask[:, None] & d_mask[None, :], other=0.0,
        )  # [BLOCK_H, BLOCK_D]

        m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_H], 0.0, dtype=tl.float32)
        acc = tl.full([BLOCK_H, BLOCK_D], 0.0, dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < end
            blk = tl.load(BT + b * stride_btb + offs_n // block_size, mask=n_mask, other=0)
            slot = offs_n % block_size
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(
                K + blk[:, None].to(tl.int64) * stride_kb + slot[:, None] * stride_ks
                + kvh * stride_kh + offs_d[None, :],
                mask=kv_mask, other=0.0,
            )  # [BLOCK_N, BLOCK_D]
            if IEEE_DOT:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            qk = qk * sm_scale_log2  # [BLOCK_H, BLOCK_N], base-2 scores
            qk = tl.where(n_mask[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.reduce(qk, 1, tl.standard._elementwise_max))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
            v = tl.load(
                V + blk[:, None].to(tl.int64) * stride_vb + slot[:, None] * stride_vs
                + kvh * stride_vh + offs_d[None, :],
                mask=kv_mask, other=0.0,
            )
            if IEEE_DOT:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

        # An empty split (past this sequence's end) leaves l_i = 0: output 0, lse = -inf.
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse2 = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(
            MidO + b * stride_mob + heads[:, None] * stride_moh + split * stride_mos
            + offs_d[None, :],
            out, mask=h_mask[:, None] & d_mask[None, :],
        )
        tl.store(MidLse + b * stride_mlb + heads * stride_mlh + split, lse2, mask=h_mask)

    @triton.jit
    def _reduce_kernel(
        MidO, MidLse, Out, Lse,
        num_splits,
        stride_mob, stride_moh, stride_mos,
        stride_mlb, stride_mlh,
        stride_ob, stride_oh,
        stride_lb,
        HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, BLOCK_D)
        s_mask = offs_s < num_splits
        d_mask = offs_d < HEAD_DIM
        lse2 = tl.load(MidLse + b * stride_mlb + h * stride_mlh + offs_s, mask=s_mask,
                       other=float("-inf"))
        m = tl.reduce(lse2, 0, tl.standard._elementwise_max)  # finite: split 0 always holds the query's own token
        w = tl.exp2(lse2 - m)
        o = tl.load(
            MidO + b * stride_mob + h * stride_moh + offs_s[:, None] * stride_mos
            + offs_d[None, :],
            mask=s_mask[:, None] & d_mask[None, :], other=0.0,
        )
        total = tl.reduce(w, 0, tl.standard._sum_combine)
        out = tl.reduce(w[:, None] * o, 0, tl.standard._sum_combine) / total
        tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty),
                 mask=d_mask)
        # natural-log LSE: ln(x) = log2(x) * ln(2)
        tl.store(Lse + b * stride_lb + h, (m + tl.log2(total)) * 0.6931471805599453)

    return _split_kernel, _reduce_kernel


@functools.lru_cache(maxsize=16)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(
    batch: int, num_kv_heads: int, max_seq_len: int, block_n: int, num_sms: int,
    programs_per_sm: int = 2,
) -> int:
    """Splits per sequence so that about ``programs_per_sm`` waves of programs fill the GPU.

    Args:
        batch: sequences in the batch.
        num_kv_heads: KV heads (programs per sequence per split).
        max_seq_len: longest sequence (tokens).
        block_n: tokens per inner-loop tile; a split holds at least one tile.
        num_sms: streaming multiprocessors (1 under the interpreter).
        programs_per_sm: target programs per multiprocessor.

    Returns:
        An int >= 1.
    """
    max_tiles = max(1, -(-max_seq_len // block_n))
    want = max(1, -(-(programs_per_sm * num_sms) // max(1, batch * num_kv_heads)))
    return int(min(want, max_tiles, 256))


def paged_decode_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    block_n: int = 32,
    num_warps: int = 4,
    num_stages: int | None = None,
    programs_per_sm: int = 2,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K paged decode attention; returns the output and the log-sum-exp.

    Args:
        q: ``[B, num_heads, head_dim]`` (last dim contiguous).
        k_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]`` (last dim contiguous).
        v_cache: same shape as ``k_cache``.
        block_tables: int32/int64 ``[B, max_blocks]``.
        seq_lens: int32/int64 ``[B]``, each >= 1 (the query's own token is cached).
        scale: softmax scale.
        max_seq_len: ``max(seq_lens)`` if the caller knows it (avoids a device sync).
        num_splits: force the number of splits (tests); None picks one from the GPU size.
        block_n: tokens per tile (a power of two, >= 16 on GPU).
        num_warps: warps per program of the split kernel.
        num_stages: software-pipelining stages of the split kernel (None: Triton's
            default for the GPU).
        programs_per_sm: target programs per multiprocessor when choosing splits.
        check: verify that Triton can run here (the engine checks once, up front).

    Returns:
        ``(out [B, num_heads, head_dim] in q's dtype, lse [B, num_heads] float32, natural log)``.

    Raises:
        BackendUnavailableError: when Triton cannot run here (see
            :func:`triton_unavailable_reason`).
    """
    if check:
        reason = triton_unavailable_reason(q.device)
        if reason is not None:
            raise BackendUnavailableError(f"--attention-backend triton: {reason}")
    interpret = q.device.type == "cpu"
    split_kernel, reduce_kernel = _build_kernels(interpret)

    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    group = num_heads // num_kv_heads
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max().item()) if batch else 0
    if num_splits is None:
        sms = 1 if interpret else _sm_count(q.device.index or 0)
        num_splits = choose_num_splits(batch, num_kv_heads, max_seq_len, block_n, sms, programs_per_sm)
    # each split covers a whole number of tiles
    partition = -(-max(1, max_seq_len) // num_splits)
    partition = -(-partition // block_n) * block_n
    num_splits = max(1, -(-max(1, max_seq_len) // partition))

    out = torch.empty_like(q)
    lse = torch.empty(batch, num_heads, dtype=torch.float32, device=q.device)
    if batch == 0:
        return out, lse
    mid_o = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    block_d = triton_next_pow2(head_dim)
    launch: dict[str, int] = {"num_warps": num_warps}
    if num_stages is not None:
        launch["num_stages"] = num_stages
    split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, mid_o, mid_lse,
        scale * math.log2(math.e),
        partition, block_size,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        GROUP=group, HEAD_DIM=head_dim,
        BLOCK_H=max(16, triton_next_pow2(group)), BLOCK_N=block_n, BLOCK_D=max(16, block_d),
        IEEE_DOT=q.dtype == torch.float32,
        **launch,
    )
    reduce_kernel[(batch, num_heads)](
        mid_o, mid_lse, out, lse,
        num_splits,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        lse.stride(0),
        HEAD_DIM=head_dim, BLOCK_S=max(2, triton_next_pow2(num_splits)), BLOCK_D=block_d,
    )
    return out, lse


def triton_next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (Triton tile sizes must be powers of two)."""
    return 1 << max(0, (int(n) - 1).bit_length())
