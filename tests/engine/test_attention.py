"""Attention over the paged cache: torch path vs the per-sequence reference, LSE merge,
metadata packing."""

from __future__ import annotations

import pytest
import torch

from charbench.engine.attention import PagedAttention, build_metadata, chunk_slots
from charbench.engine.runner import SeqChunk
from charbench.kernels.attention.lse_merge import merge_attention_states
from charbench.kernels.attention.paged_torch import paged_decode_torch, paged_prefill_torch
from charbench.kernels.attention.reference import (
    attention_reference,
    paged_decode_reference,
    paged_prefill_reference,
)


def _cache(num_blocks=48, block_size=4, kv=2, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv, d)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _tables(lens, block_size, num_blocks, seed=1):
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    out, i = [], 0
    for n in lens:
        k = -(-n // block_size)
        out.append(perm[i : i + k])
        i += k
    return out


@pytest.mark.parametrize("heads,kv", [(4, 4), (8, 2), (6, 1)])
def test_decode_torch_matches_reference(heads, kv):
    bs, d = 4, 16
    kc, vc = _cache(kv=kv, d=d, block_size=bs)
    lens = [1, 5, 17, 40, 8]
    tables = _tables(lens, bs, kc.shape[0])
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    q = torch.randn(len(lens), heads, d, dtype=torch.float64)
    ref_o, ref_lse = paged_decode_reference(q, kc, vc, tables, lens, 0.3)
    o, lse = paged_decode_torch(q, kc, vc, bt, torch.tensor(lens), 0.3, return_lse=True)
    torch.testing.assert_close(o, ref_o)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    # the SDPA path (no LSE), float64 and float32
    torch.testing.assert_close(paged_decode_torch(q, kc, vc, bt, torch.tensor(lens), 0.3), ref_o)
    o32 = paged_decode_torch(q.float(), kc.float(), vc.float(), bt, torch.tensor(lens), 0.3)
    torch.testing.assert_close(o32.double(), ref_o, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("start,n", [(0, 9), (7, 1), (5, 6), (12, 13)])
def test_prefill_torch_matches_reference(start, n):
    bs, d, heads, kv = 4, 16, 8, 2
    kc, vc = _cache(kv=kv, d=d, block_size=bs)
    table = _tables([start + n], bs, kc.shape[0])[0]
    q = torch.randn(n, heads, d, dtype=torch.float64)
    ref = paged_prefill_reference(q, kc, vc, table, start, 0.25)
    got = paged_prefill_torch(q, kc, vc, torch.tensor(table), start, 0.25)
    torch.testing.assert_close(got, ref)


def test_reference_is_softmax_attention():
    """The reference against a hand-written single-head computation."""
    q = torch.randn(3, 1, 4, dtype=torch.float64)
    k = torch.randn(5, 1, 4, dtype=torch.float64)
    v = torch.randn(5, 1, 4, dtype=torch.float64)
    out, lse = attention_reference(q, k, v, 0.5, q_start=2)
    for i in range(3):
        s = (k[: 3 + i, 0] @ q[i, 0]) * 0.5
        torch.testing.assert_close(out[i, 0], torch.softmax(s, 0) @ v[: 3 + i, 0])
        torch.testing.assert_close(lse[i, 0], torch.logsumexp(s, 0))


def test_lse_merge_equals_full_attention():
    g = torch.Generator().manual_seed(0)  # seeded: unseeded inputs made this flaky
    q = torch.randn(3, 4, 8, dtype=torch.float64, generator=g)
    k = torch.randn(30, 2, 8, dtype=torch.float64, generator=g)
    v = torch.randn(30, 2, 8, dtype=torch.float64, generator=g)
    full_o, full_lse = attention_reference(q, k, v, 0.4, q_start=29)
    parts = [(0, 11), (11, 12), (12, 30)]
    outs, lses = [], []
    for a, b in parts:
        o, lse = attention_reference(q, k[a:b], v[a:b], 0.4, q_start=10**6)  # no causal cut
        outs.append(o)
        lses.append(lse)
    # an empty part (-inf) contributes nothing
    outs.append(torch.zeros_like(outs[0]))
    lses.append(torch.full_like(lses[0], float("-inf")))
    o, lse = merge_attention_states(outs, lses)
    # the merge weighs the partials in float32 (its LSE dtype), so float64 outputs agree to ~1e-7
    torch.testing.assert_close(o, full_o, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse.double(), full_lse, atol=1e-5, rtol=1e-5)
    o, lse = merge_attention_states([torch.zeros(2, 3)], [torch.full((2,), float("-inf"))])
    assert torch.equal(o, torch.zeros(2, 3)) and torch.isinf(lse).all()
    with pytest.raises(ValueError):
        merge_attention_states([], [])


def test_metadata_and_mixed_batch():
    bs, d, heads, kv = 4, 16, 4, 2
    kc, vc = _cache(kv=kv, d=d, block_size=bs, dtype=torch.float32)
    tables = _tables([6, 3, 10], bs, kc.shape[0])
    chunks = [
        SeqChunk(0, [1], 5, tables[0], True),           # decode at position 5
        SeqChunk(1, [2], 2, tables[1], True),           # decode at position 2
        SeqChunk(2, [3, 4, 5, 6], 6, tables[2], True),  # prefill chunk after a 6-token prefix
    ]
    meta = build_metadata(chunks, bs, "cpu")
    assert meta.num_decode == 2 and len(meta.prefills) == 1
    assert meta.positions.tolist() == [5, 2, 6, 7, 8, 9]
    assert meta.slot_mapping[0].item() == tables[0][1] * bs + 1
    assert meta.decode_seq_lens.tolist() == [6, 3] and meta.max_position == 9
    t = 6
    q = torch.randn(t, heads, d)
    k = torch.randn(t, kv, d)
    v = torch.randn(t, kv, d)
    out = PagedAttention("torch", 0.25)(q, k, v, kc, vc, meta)
    # the new keys were written where the slot mapping says
    flat_k = kc.view(-1, kv, d)
    torch.testing.assert_close(flat_k[meta.slot_mapping], k)
    ref_dec, _ = paged_decode_reference(q[:2], kc, vc, tables[:2], [6, 3], 0.25)
    torch.testing.assert_close(out[:2], ref_dec)
    ref_pre = paged_prefill_reference(q[2:], kc, vc, tables[2], 6, 0.25)
    torch.testing.assert_close(out[2:], ref_pre)


def test_metadata_errors():
    with pytest.raises(ValueError, match="cannot hold"):
        build_metadata([SeqChunk(0, [1, 2, 3], 2, [0], True)], 4, "cpu")
    with pytest.raises(ValueError, match="before prefill"):
        build_metadata([SeqChunk(0, [1, 2], 0, [0], True), SeqChunk(1, [1], 0, [1], True)], 4, "cpu")



def _needs_cuda(fn):
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(fn)
    return pytest.mark.gpu(fn)


@_needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("start,n", [(0, 33), (5, 6), (40, 70)])
def test_prefill_torch_cuda(dtype, start, n):
    """On CUDA the prefix path uses SDPA's lower-right causal bias (CPU uses a bool mask)."""
    bs, d, heads, kv = 16, 64, 8, 2
    kc, vc = _cache(num_blocks=16, kv=kv, d=d, block_size=bs)
    table = _tables([start + n], bs, kc.shape[0])[0]
    q = torch.randn(n, heads, d, dtype=torch.float64)
    ref = paged_prefill_reference(q, kc, vc, table, start, d**-0.5)
    cu = dict(device="cuda", dtype=dtype)
    got = paged_prefill_torch(q.to(**cu), kc.to(**cu), vc.to(**cu), torch.tensor(table, device="cuda"),
                              start, d**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double().cpu(), ref, atol=tol, rtol=tol)


@_needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_torch_cuda(dtype):
    bs, d, heads, kv = 16, 128, 32, 8
    kc, vc = _cache(num_blocks=64, kv=kv, d=d, block_size=bs)
    lens = [1, 100, 333, 17]
    tables = _tables(lens, bs, kc.shape[0])
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], device="cuda")
    q = torch.randn(len(lens), heads, d, dtype=torch.float64)
    ref_o, _ = paged_decode_reference(q, kc, vc, tables, lens, d**-0.5)
    cu = dict(device="cuda", dtype=dtype)
    o = paged_decode_torch(q.to(**cu), kc.to(**cu), vc.to(**cu), bt, torch.tensor(lens, device="cuda"), d**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(o.double().cpu(), ref_o, atol=tol, rtol=tol)


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_chunk_slots_equal_the_per_token_mapping(block_size: int) -> None:
    import random

    rng = random.Random(7)
    for _ in range(300):
        start, n = rng.randrange(0, 70), rng.randrange(1, 90)
        table = rng.sample(range(500), -(-(start + n) // block_size))
        want = [table[p // block_size] * block_size + p % block_size for p in range(start, start + n)]
        assert chunk_slots(table, start, n, block_size) == want
    assert chunk_slots([5, 2], 14, 4, 16) == [94, 95, 32, 33]
