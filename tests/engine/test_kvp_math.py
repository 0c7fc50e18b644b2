"""KVP partial attention + LSE merge equals single-device attention (fp32, atol 1e-5)."""

from __future__ import annotations

import pytest
import torch

from charbench.engine.kvp import KVPlacement, merge_weights, partial_attention, partial_attention_math
from charbench.errors import ConfigError
from charbench.kernels.attention.lse_merge import merge_attention_states


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention over all keys in float64 (keys at positions 0..L-1)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    kk = k.double().repeat_interleave(heads // kv_heads, dim=1)
    vv = v.double().repeat_interleave(heads // kv_heads, dim=1)
    s = torch.einsum("thd,lhd->htl", q.double(), kk) * scale
    s = s.masked_fill(torch.arange(k.shape[0])[None, None, :] > q_pos[None, :, None], float("-inf"))
    return torch.einsum("htl,lhd->thd", torch.softmax(s, dim=-1), vv).float()


IMPLS = {"flash": partial_attention, "math": partial_attention_math}


def _sharded(q, k, v, q_pos, bounds, scale, merge="states", impl="flash"):
    outs, lses = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, lse = IMPLS[impl](q, k[a:b], v[a:b], q_pos, a, scale)
        outs.append(o)
        lses.append(lse)
    if merge == "states":
        return merge_attention_states(outs, lses)[0]
    all_lse = torch.stack(lses)
    return sum(merge_weights(all_lse, r)[..., None] * o for r, o in enumerate(outs))


CASES = [
    # (heads, kv_heads, context, queries, shard bounds)
    pytest.param(8, 8, 40, 1, [0, 20, 40], id="decode-mha-even"),
    pytest.param(8, 2, 37, 1, [0, 5, 30, 37], id="decode-gqa-uneven"),
    pytest.param(8, 2, 37, 1, [0, 37, 37], id="decode-gqa-empty-last"),
    pytest.param(4, 1, 64, 16, [0, 24, 64], id="prefill-chunk-crossing-owner"),
    pytest.param(4, 2, 50, 10, [0, 40, 50], id="prefill-chunk-owned-by-last"),
    pytest.param(4, 2, 50, 10, [0, 0, 45, 50], id="prefill-empty-first-chunk-straddles"),
    pytest.param(4, 2, 12, 12, [0, 12], id="prefill-first-chunk-one-shard"),
]


@pytest.mark.parametrize("heads,kv_heads,context,n_q,bounds", CASES)
@pytest.mark.parametrize("merge", ["states", "weights"])
@pytest.mark.parametrize("impl", ["flash", "math"])
def test_sharded_attention_equals_single_device(heads, kv_heads, context, n_q, bounds, merge, impl):
    g = torch.Generator().manual_seed(heads * 100 + context)
    d = 16
    q = torch.randn(n_q, heads, d, generator=g)
    k = torch.randn(context, kv_heads, d, generator=g)
    v = torch.randn(context, kv_heads, d, generator=g)
    q_pos = torch.arange(context - n_q, context)
    ref = _reference(q, k, v, q_pos, d ** -0.5)
    got = _sharded(q, k, v, q_pos, bounds, d ** -0.5, merge, impl)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["flash", "math"])
def test_empty_shard_returns_zero_and_minus_inf(impl):
    q = torch.ones(3, 4, 8)
    out, lse = IMPLS[impl](q, torch.empty(0, 2, 8), torch.empty(0, 2, 8), torch.arange(3), 0, 1.0)
    assert out.abs().sum().item() == 0.0
    assert torch.isinf(lse).all() and (lse < 0).all()


@pytest.mark.parametrize("impl", ["flash", "math"])
def test_shard_after_every_query_contributes_nothing(impl):
    """A non-owner's keys are never after the queries; if they were, the mask hides them all."""
    q = torch.randn(2, 4, 8)
    k = torch.randn(5, 2, 8)
    out, lse = IMPLS[impl](q, k, k, torch.tensor([3, 4]), 10, 1.0)
    assert torch.isinf(lse).all()
    assert out.abs().sum().item() == 0.0
    w = merge_weights(torch.stack([torch.zeros(2, 4), lse]), 1)
    assert w.abs().sum().item() == 0.0


def test_placement_contiguous_progressive():
    p = KVPlacement(kvp=3, max_tokens_per_rank=100)
    assert [p.shard(r, 250) for r in range(3)] == [(0, 100), (100, 200), (200, 250)]
    assert [p.shard(r, 80) for r in range(3)] == [(0, 80), (100, 100), (200, 200)]
    assert p.active_ranks(80) == 1 and p.active_ranks(101) == 2 and p.active_ranks(300) == 3
    with pytest.raises(ConfigError, match=r"--max-tokens-per-rank: a sequence of 301 tokens does not fit kvp=3 x 100 tokens per rank; raise --max-tokens-per-rank or kvp"):
        p.check(301)
    with pytest.raises(ConfigError, match=r"--max-tokens-per-rank: must be >= 1, got 0"):
        KVPlacement(kvp=2, max_tokens_per_rank=0)
