"""Paged KV cache: bytes/token formula, allocator accounting, capacity planning."""

from __future__ import annotations

import pytest
import torch

from charbench.engine.api import EngineConfig
from charbench.engine.kv_cache import (
    CPU_DEFAULT_KV_GB,
    BlockAllocator,
    OutOfBlocksError,
    PagedKVCache,
    kv_bytes_per_token,
)
from charbench.engine.model import get_preset
from charbench.engine.runner import make_runner
from charbench.errors import ConfigError


def test_kv_bytes_per_token_formula():
    # Llama-2-7B fp16: 2 * 32 layers * 32 heads * 128 dims * 2 bytes = 512 KiB per token
    assert kv_bytes_per_token(get_preset("llama-2-7b"), "fp16") == 524_288
    # Llama-3-8B bf16 (GQA, 8 KV heads): 128 KiB per token
    assert kv_bytes_per_token(get_preset("llama-3-8b"), torch.bfloat16) == 131_072
    # Llama-2-70B fp16 at tp=8: one KV head per rank -> 2 * 80 * 1 * 128 * 2
    assert kv_bytes_per_token(get_preset("llama-2-70b"), "fp16", tp=8) == 40_960
    tiny = get_preset("tiny")
    expected = 2 * tiny.num_layers * tiny.num_kv_heads * tiny.head_dim * 4
    assert kv_bytes_per_token(tiny, "fp32") == expected


def test_cache_storage_matches_formula():
    cfg = get_preset("tiny")
    cache = PagedKVCache(cfg, num_blocks=10, block_size=8, dtype="fp16", device="cpu", tp=2)
    k, v = cache.layers[0]
    assert k.shape == (10, 8, cfg.num_kv_heads // 2, cfg.head_dim) and k.dtype == torch.float16
    assert len(cache.layers) == cfg.num_layers
    assert cache.bytes_total == 10 * 8 * kv_bytes_per_token(cfg, "fp16", tp=2)
    assert k.data_ptr() != v.data_ptr()


def test_cache_starts_zeroed():
    """Padding and not-yet-written slots are read (and masked) by batched attention, so
    they must hold zeros, not NaN garbage (0 * NaN = NaN)."""
    cache = PagedKVCache(get_preset("tiny"), num_blocks=64, block_size=16, dtype="bf16", device="cpu")
    assert cache.storage.dtype == torch.bfloat16
    assert torch.count_nonzero(cache.storage) == 0
    cache.layers[1][1][3, 2] = 1.0  # views write through to the storage
    assert torch.count_nonzero(cache.storage) == cache.layers[1][1].shape[2] * cache.layers[1][1].shape[3]


def test_allocator_accounting():
    a = BlockAllocator(8)
    assert (a.num_blocks, a.num_free, a.num_used) == (8, 8, 0)
    x = a.allocate(3)
    y = a.allocate(5)
    assert len(set(x + y)) == 8 and set(x + y) == set(range(8))
    assert (a.num_free, a.num_used) == (0, 8)
    with pytest.raises(OutOfBlocksError, match="asked for 1 KV blocks, 0 of 8 free"):
        a.allocate(1)
    a.free(x)
    assert (a.num_free, a.num_used) == (3, 5)
    with pytest.raises(OutOfBlocksError):
        a.allocate(4)
    assert a.num_free == 3  # a failed allocation takes nothing
    with pytest.raises(ValueError, match="double free"):
        a.free(x)
    with pytest.raises(ValueError, match="not allocated"):
        a.free([99])
    with pytest.raises(ValueError, match="repeated"):
        a.free([y[0], y[0]])
    assert (a.num_free, a.num_used) == (3, 5)  # failed frees change nothing
    assert a.allocate(0) == []
    z = a.allocate(3)
    assert set(z) == set(x)
    a.free(y + z)
    assert (a.num_free, a.num_used) == (8, 0)
    assert isinstance(OutOfBlocksError("x"), RuntimeError)


def test_num_blocks_for():
    cfg = get_preset("tiny")
    per_block = kv_bytes_per_token(cfg, "fp32") * 16
    n = PagedKVCache.num_blocks_for(cfg, 16, "fp32", "cpu", kv_cache_gb=0.5, gpu_memory_fraction=0.9)
    assert n == int(0.5 * 2**30 // per_block)
    # tp=2 halves the per-rank bytes, so the same per-device budget holds twice the blocks
    n2 = PagedKVCache.num_blocks_for(cfg, 16, "fp32", "cpu", 0.5, 0.9, tp=2)
    assert n2 == 2 * n
    default = PagedKVCache.num_blocks_for(cfg, 16, "fp32", "cpu", None, 0.9)
    assert default == int(CPU_DEFAULT_KV_GB * 2**30 // per_block)
    with pytest.raises(ConfigError, match="--kv-cache-gb"):
        PagedKVCache.num_blocks_for(cfg, 16, "fp32", "cpu", 1e-9, 0.9)
    with pytest.raises(ConfigError, match="--kv-cache-gb: must be > 0"):
        PagedKVCache.num_blocks_for(cfg, 16, "fp32", "cpu", 0.0, 0.9)
    with pytest.raises(ConfigError, match="--block-size"):
        PagedKVCache.num_blocks_for(cfg, 0, "fp32", "cpu", 1.0, 0.9)


def test_runner_capacity():
    cfg = get_preset("tiny")
    r = make_runner(EngineConfig(model="tiny", kv_cache_gb=0.01, block_size=8))
    assert r.num_blocks == int(0.01 * 2**30 // (kv_bytes_per_token(cfg, "fp32") * 8))
    assert r.kv_cache.layers[0][0].shape[0] == r.num_blocks and r.block_size == 8
    # without kv_cache_gb the capacity is capped at what max_num_seqs full sequences need
    r = make_runner(EngineConfig(model="tiny", max_num_seqs=2, max_model_len=100, block_size=16))
    assert r.num_blocks == 2 * 7
