"""Paged KV cache: fixed-size blocks, a block allocator, capacity planning.

Storage is one tensor ``[num_layers, 2, num_blocks, block_size, kv_heads, head_dim]``
(one allocation); layer ``i``'s K and V caches are views ``[num_blocks, block_size,
kv_heads, head_dim]``. A sequence owns a list of blocks (its block table, kept by the
scheduler); token ``t`` lives in slot ``t % block_size`` of block ``table[t // block_size]``.

KV bytes per token = ``2 * layers * kv_heads * head_dim * dtype_bytes`` (K and V), per
tensor-parallel rank ``kv_heads / tp``. Example::

    alloc = BlockAllocator(num_blocks=1024)
    blocks = alloc.allocate(4)      # raises OutOfBlocksError when fewer are free
    alloc.free(blocks)
    n = PagedKVCache.num_blocks_for(cfg, 16, "fp16", "cuda", kv_cache_gb=None,
                                    gpu_memory_fraction=0.9)
"""

from __future__ import annotations

import mmap
import math

import torch

from charbench.engine.model import ModelConfig, dtype_bytes, to_torch_dtype
from charbench.errors import ConfigError, OutOfDeviceMemoryError

CPU_DEFAULT_KV_GB = 1.0
"""KV-cache capacity on CPU when ``kv_cache_gb`` is None (GiB)."""


class OutOfBlocksError(RuntimeError):
    """The allocator has fewer free blocks than requested (nothing was allocated)."""


class BlockAllocator:
    """Hands out block ids ``0..num_blocks-1``; exact accounting, double frees caught.

    Args:
        num_blocks: blocks managed.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 0:
            raise ValueError("num_blocks must be >= 0")
        self.num_blocks = num_blocks
        # stack: freed blocks are reused first (warm in cache)
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        """Blocks available."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks handed out and not freed."""
        return len(self._used)

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks.

        Raises:
            OutOfBlocksError: fewer than ``n`` blocks are free (none are taken).
            ValueError: ``n < 0``.
        """
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            raise OutOfBlocksError(
                f"asked for {n} KV blocks, {len(self._free)} of {self.num_blocks} free"
            )
        out = [self._free.pop() for _ in range(n)]
        self._used.update(out)
        return out

    def free(self, blocks: list[int]) -> None:
        """Return blocks to the pool.

        Raises:
            ValueError: a block is not allocated (double free, unknown id, or repeated in
                ``blocks``); nothing is freed then.
        """
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"free(): repeated block ids in {blocks}")
        bad = [b for b in blocks if b not in self._used]
        if bad:
            raise ValueError(f"free(): blocks {bad} are not allocated (double free?)")
        self._used.difference_update(blocks)
        self._free.extend(reversed(blocks))


def kv_bytes_per_token(model_cfg: ModelConfig, dtype: str | torch.dtype, tp: int = 1) -> int:
    """KV-cache bytes one token takes on one tensor-parallel rank.

    ``2 (K and V) * num_layers * (num_kv_heads / tp) * head_dim * bytes(dtype)``.
    """
    kv_heads = model_cfg.num_kv_heads // tp
    return 2 * model_cfg.num_layers * kv_heads * model_cfg.head_dim * dtype_bytes(dtype)


def zeroed_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled tensor; on CPU backed by an anonymous mmap (zero pages, committed
    only when written), so a 1 GiB cache costs nothing until used.

    Zero, not uninitialised: slots past a sequence's end inside its blocks, and padding
    blocks, are read (then masked) by batched attention; uninitialised memory could hold
    NaN/Inf bit patterns, and ``0 * NaN`` is NaN even under a zero softmax weight.
    """
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(nbytes, 1))  # anonymous mappings are zero-filled (mmap(2))
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape)).view(shape)


class PagedKVCache:
    """The K/V storage of every layer (one tensor-parallel shard).

    Args:
        model_cfg: model shape.
        num_blocks: blocks per layer.
        block_size: tokens per block.
        dtype: cache dtype (the model's).
        device: where the cache lives.
        tp: tensor-parallel degree (this shard holds ``num_kv_heads / tp`` heads).

    Attributes:
        storage: ``[layers, 2, num_blocks, block_size, kv_heads_per_rank, head_dim]``.
        layers: per layer ``(k_cache, v_cache)`` views.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: str | torch.dtype,
        device: torch.device | str,
        tp: int = 1,
    ) -> None:
        if block_size < 1 or num_blocks < 1:
            raise ConfigError(f"--block-size/--kv-cache-gb: need >= 1 block of >= 1 token, "
                              f"got {num_blocks} blocks of {block_size}")
        self.model_cfg, self.num_blocks, self.block_size = model_cfg, num_blocks, block_size
        self.dtype = to_torch_dtype(dtype)
        self.device = torch.device(device)
        self.tp = tp
        kv_heads = model_cfg.num_kv_heads // tp
        shape = (model_cfg.num_layers, 2, num_blocks, block_size, kv_heads, model_cfg.head_dim)
        self.storage = zeroed_tensor(shape, self.dtype, self.device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (self.storage[i, 0], self.storage[i, 1]) for i in range(model_cfg.num_layers)
        ]

    @property
    def bytes_total(self) -> int:
        """Bytes of the storage tensor."""
        return self.storage.numel() * self.storage.element_size()

    @staticmethod
    def num_blocks_for(
        model_cfg: ModelConfig,
        block_size: int,
        dtype: str | torch.dtype,
        device: torch.device | str,
        kv_cache_gb: float | None,
        gpu_memory_fraction: float,
        tp: int = 1,
    ) -> int:
        """How many blocks fit in the KV-cache budget of one rank.

        The budget is ``kv_cache_gb`` GiB per device when given; otherwise
        ``gpu_memory_fraction`` of the device's currently free memory (call this after the
        weights are loaded) on CUDA, or :data:`CPU_DEFAULT_KV_GB` on CPU.

        Raises:
            ConfigError: invalid sizes, or a budget smaller than one block.
            OutOfDeviceMemoryError: the GPU has no free memory left for a block.
        """
        if block_size < 1:
            raise ConfigError(f"--block-size: must be >= 1, got {block_size}")
        per_block = kv_bytes_per_token(model_cfg, dtype, tp) * block_size
        dev = torch.device(device)
        if kv_cache_gb is not None:
            if kv_cache_gb <= 0:
                raise ConfigError(f"--kv-cache-gb: must be > 0, got {kv_cache_gb}")
            budget = kv_cache_gb * 2**30
        elif dev.type == "cuda":
            if not 0.0 < gpu_memory_fraction <= 1.0:
                raise ConfigError(
                    f"--gpu-memory-fraction: must be in (0, 1], got {gpu_memory_fraction}")
            free, _ = torch.cuda.mem_get_info(dev)
            budget = free * gpu_memory_fraction
            if budget < per_block:
                raise OutOfDeviceMemoryError(
                    f"{dev}: {free / 2**30:.2f} GiB free after loading the weights, not enough "
                    f"for one KV block ({per_block} B); use a smaller model, more --tp or a "
                    "smaller --block-size"
                )
        else:
            budget = CPU_DEFAULT_KV_GB * 2**30
        n = int(budget // per_block)
        if n < 1:
            raise ConfigError(
                f"--kv-cache-gb {kv_cache_gb}: smaller than one KV block of {per_block} bytes "
                f"(block_size {block_size}); raise it"
            )
        return n
