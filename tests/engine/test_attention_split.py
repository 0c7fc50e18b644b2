"""The CPU flash split for prefill chunks with a cached prefix equals the masked-SDPA path."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from charbench.engine.attention import PagedAttention, build_metadata
from charbench.kernels.attention.paged_torch import paged_prefill_torch


@dataclass
class _Chunk:
    token_ids: list[int]
    start_pos: int
    block_table: list[int]


@pytest.mark.parametrize("table", [list(range(3, 3 + 12)), [7, 2, 9, 0, 11, 4, 5, 1, 8, 3, 10, 6]],
                         ids=["ascending-run-view", "scattered-gather"])
@pytest.mark.parametrize("start,n", [(30, 9), (4, 2), (1, 40)])
def test_split_prefill_equals_masked_sdpa(table, start, n):
    g = torch.Generator().manual_seed(start * 100 + n)
    bs, kvh, heads, d = 4, 2, 4, 16
    kc = torch.randn(16, bs, kvh, d, generator=g)
    vc = torch.randn(16, bs, kvh, d, generator=g)
    q = torch.randn(n, heads, d, generator=g)
    k = torch.randn(n, kvh, d, generator=g)
    v = torch.randn(n, kvh, d, generator=g)
    chunk = _Chunk([1] * n, start, table)
    meta = build_metadata([chunk], bs, "cpu", dtype=torch.float32)
    assert meta.prefills[0].split and meta.prefills[0].mask is None
    assert (meta.prefills[0].first_block == 3) == (table[0] == 3)
    kc2, vc2 = kc.clone(), vc.clone()
    got = PagedAttention("torch", d ** -0.5)(q, k, v, kc, vc, meta)
    # reference: write the chunk's K/V the same way, then the masked SDPA path
    kc2.view(-1, kvh, d).index_copy_(0, meta.slot_mapping, k)
    vc2.view(-1, kvh, d).index_copy_(0, meta.slot_mapping, v)
    ref = paged_prefill_torch(q, kc2, vc2, meta.prefills[0].block_table, start, d ** -0.5, k_new=k, v_new=v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_fp64_and_first_chunks_keep_the_sdpa_path():
    meta = build_metadata([_Chunk([1] * 5, 8, list(range(4)))], 4, "cpu", dtype=torch.float64)
    assert not meta.prefills[0].split and meta.prefills[0].mask is not None
    meta = build_metadata([_Chunk([1] * 5, 0, list(range(4)))], 4, "cpu", dtype=torch.float32)
    assert not meta.prefills[0].split and meta.prefills[0].mask is None
