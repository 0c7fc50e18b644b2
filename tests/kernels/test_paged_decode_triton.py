"""The Triton split-K paged decode kernel against the float64 reference.

On CPU the kernel runs under the Triton interpreter (``TRITON_INTERPRET=1``, set per
test); with CUDA the same cases also run compiled (``-m gpu``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from charbench.kernels.attention.lse_merge import merge_attention_states  # noqa: E402
from charbench.kernels.attention.paged_decode_triton import (  # noqa: E402
    choose_num_splits,
    paged_decode_triton,
    triton_unavailable_reason,
)
from charbench.kernels.attention.reference import paged_decode_reference  # noqa: E402

DEVICES = [
    pytest.param("cpu", id="interpret"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


@pytest.fixture
def device(request, monkeypatch) -> str:
    dev = request.param
    if dev == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return dev


def _problem(heads, kv, d, bs, lens, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // bs) for n in lens) + 3
    kc = torch.randn(num_blocks, bs, kv, d, generator=g)
    vc = torch.randn(num_blocks, bs, kv, d, generator=g)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, i = [], 0
    for n in lens:
        k = -(-n // bs)
        tables.append(perm[i : i + k])
        i += k
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    q = torch.randn(len(lens), heads, d, generator=g)
    ref = paged_decode_reference(q.double(), kc.double(), vc.double(), tables, lens, d**-0.5)
    to = dict(device=device)
    return (q.to(dtype=dtype, **to), kc.to(dtype=dtype, **to), vc.to(dtype=dtype, **to),
            bt.to(**to), torch.tensor(lens, dtype=torch.int32, **to), tables, ref)


CASES = [  # heads, kv_heads, head_dim, block_size, sequence lengths
    (4, 4, 64, 16, [1, 37, 64]),    # MHA, one token to several blocks
    (8, 2, 32, 4, [3, 50, 17, 9]),  # GQA group 4, small blocks
    (6, 1, 40, 5, [11, 26]),        # group 6, head_dim and block size not powers of two
    (16, 2, 128, 16, [70]),         # group 8 (Llama-2-70B-like), head_dim 128
]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"h{c[0]}kv{c[1]}d{c[2]}bs{c[3]}")
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_matches_reference_fp32(device, case, num_splits):
    heads, kv, d, bs, lens = case
    q, kc, vc, bt, sl, _, (ref_o, ref_lse) = _problem(heads, kv, d, bs, lens, torch.float32, device)
    o, lse = paged_decode_triton(q, kc, vc, bt, sl, d**-0.5, num_splits=num_splits, block_n=16)
    assert o.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(o.double().cpu(), ref_o, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_matches_reference_fp16(device):
    q, kc, vc, bt, sl, _, (ref_o, ref_lse) = _problem(8, 2, 64, 16, [5, 40, 33], torch.float16, device)
    o, lse = paged_decode_triton(q, kc, vc, bt, sl, 64**-0.5, num_splits=2, block_n=16)
    assert o.dtype == torch.float16
    torch.testing.assert_close(o.double().cpu(), ref_o, atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_lse_merges_kv_shards(device):
    """Attention over a sequence split into two KV shards, merged by LSE, equals the whole."""
    bs, lens = 4, [24, 40]
    q, kc, vc, _, _, tables, (ref_o, ref_lse) = _problem(8, 2, 32, bs, lens, torch.float32, device)
    halves = []
    for part in (0, 1):
        rows, part_lens = [], []
        for t, n in zip(tables, lens):
            cut = len(t) // 2  # blocks of the first shard
            rows.append(t[:cut] if part == 0 else t[cut:])
            part_lens.append(cut * bs if part == 0 else n - cut * bs)
        width = max(len(r) for r in rows)
        bt = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32, device=device)
        sl = torch.tensor(part_lens, dtype=torch.int32, device=device)
        halves.append(paged_decode_triton(q, kc, vc, bt, sl, 32**-0.5, block_n=16))
    o, lse = merge_attention_states([h[0] for h in halves], [h[1] for h in halves])
    torch.testing.assert_close(o.double().cpu(), ref_o, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, atol=2e-5, rtol=2e-5)


def test_split_heuristic_and_availability(monkeypatch):
    assert choose_num_splits(1, 8, 4096, 32, 132) == 33  # one sequence: split to fill SMs
    assert choose_num_splits(64, 8, 4096, 32, 132) == 1  # big batch: no split needed
    assert choose_num_splits(1, 8, 20, 32, 132) == 1     # never more splits than tiles
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "CUDA" in triton_unavailable_reason("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_unavailable_reason("cpu") is None
