"""Cross-model cache reuse: capture a sender's per-layer K/V and E-cache, inject them into a receiver.

Two runner functions around the unchanged :class:`~charbench.engine.model.LlamaModel`
(DroidSpeak, arXiv 2411.02820 §4.4):

* :func:`capture` prefills a context through a runner and returns, for every layer, the
  K/V it wrote and the hidden state entering that layer (the "E-cache");
* :func:`inject` writes given K/V into a new sequence's blocks for chosen layers and, for
  a contiguous group ``[a, b]``, starts the forward at layer ``a`` from a given hidden state
  and runs only layers ``a..b`` over the context tokens (writing their own K/V).

The query suffix then runs through every receiver layer over the hybrid cache with the
normal engine path (:meth:`ModelRunner.forward`). :func:`blend` is the CacheBlend-style
baseline (selective token recompute, extended to two models): layer 0 is recomputed for
every token, the tokens whose layer-0 V deviates most from the sender's are recomputed
in every later layer, all other tokens keep the sender's K/V. Example::

    cache = capture(sender, ids, table_a)
    inject(receiver, cache, table_b, recompute=(2, 3))       # E_2 in, layers 2..3 recomputed
    logits = receiver.forward([SeqChunk(1, query, len(ids), table_b, True)])

Everything runs on tensor-parallel degree 1 (a rank's K/V shard would need gathering).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from charbench.engine.attention import AttentionMetadata, build_metadata
from charbench.engine.runner import ModelRunner, SeqChunk
from charbench.errors import ConfigError


@dataclass
class ContextCache:
    """What a sender computed for one context.

    Attributes:
        token_ids: the context tokens.
        k: per layer ``[T, kv_heads, head_dim]`` keys (RoPE applied), as cached.
        v: per layer ``[T, kv_heads, head_dim]`` values.
        e: per layer ``[T, hidden]``, the hidden state entering that layer.
    """

    token_ids: list[int]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    e: list[torch.Tensor]

    @property
    def num_layers(self) -> int:
        """Layers captured."""
        return len(self.k)

    def kv_layer_bytes(self) -> int:
        """Bytes of one layer's K and V for the whole context."""
        return 2 * self.k[0].numel() * self.k[0].element_size()

    def e_layer_bytes(self) -> int:
        """Bytes of one layer's E-cache for the whole context."""
        return self.e[0].numel() * self.e[0].element_size()


def _check_single_rank(runner: ModelRunner) -> None:
    if runner.tp != 1:
        raise ConfigError(f"--tp {runner.tp}: cache capture/injection needs tp=1 (K/V are sharded across ranks)")


def _context_meta(runner: ModelRunner, token_ids: list[int], block_table: list[int]) -> AttentionMetadata:
    if len(token_ids) < 2:
        raise ValueError("context: needs at least 2 tokens (a 1-token chunk is a decode step)")
    chunk = SeqChunk(seq_id=0, token_ids=list(token_ids), start_pos=0, block_table=list(block_table),
                     need_logits=False)
    runner._check([chunk])
    return build_metadata([chunk], runner.block_size, runner.device, runner.attention.backend, runner.dtype)


def _run_layers(runner: ModelRunner, x: torch.Tensor, meta: Any, positions: torch.Tensor,
                start: int, stop: int, attn: Any = None, keep_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Layers ``[start, stop)`` of the runner's model over ``x`` (what LlamaModel.forward loops over)."""
    model = runner.model
    model.rope.ensure(int(positions.max()) + 1)
    freqs = model.rope.lookup(positions)
    for i in range(start, stop):
        if keep_inputs is not None:
            keep_inputs.append(x.clone())
        kc, vc = runner.kv_cache.layers[i]
        x = model.layers[i](x, freqs, kc, vc, attn or runner.attention, meta, model.all_reduce)
    return x


def _slots_view(cache: torch.Tensor) -> torch.Tensor:
    return cache.view(-1, cache.shape[2], cache.shape[3])


@torch.inference_mode()
def capture(runner: ModelRunner, token_ids: list[int], block_table: list[int]) -> ContextCache:
    """Prefill ``token_ids`` into ``block_table`` and return every layer's K/V and E-cache.

    The blocks hold the sender's cache afterwards, exactly as a normal prefill leaves them.

    Raises:
        ConfigError: tensor parallelism (> 1).
        ValueError: bad token ids, block ids or a too-short block table.
    """
    _check_single_rank(runner)
    meta = _context_meta(runner, token_ids, block_table)
    e: list[torch.Tensor] = []
    x = F.embedding(meta.input_ids, runner.model.embed)
    _run_layers(runner, x, meta, meta.positions, 0, runner.model_config.num_layers, keep_inputs=e)
    ks = [_slots_view(kc)[meta.slot_mapping].clone() for kc, _ in runner.kv_cache.layers]
    vs = [_slots_view(vc)[meta.slot_mapping].clone() for _, vc in runner.kv_cache.layers]
    return ContextCache(list(token_ids), ks, vs, e)


def _check_shapes(runner: ModelRunner, cache: ContextCache) -> None:
    cfg = runner.model_config
    want = (len(cache.token_ids), cfg.num_kv_heads, cfg.head_dim)
    if cache.num_layers != cfg.num_layers or tuple(cache.k[0].shape) != want:
        raise ConfigError(
            f"--sender/--receiver: the sender's cache has {cache.num_layers} layers of K/V "
            f"{tuple(cache.k[0].shape)}, the receiver needs {cfg.num_layers} of {want}; "
            "pick two checkpoints of the same architecture"
        )


def _write_kv(runner: ModelRunner, cache: ContextCache, slots: torch.Tensor, layers: range | list[int]) -> None:
    for i in layers:
        kc, vc = runner.kv_cache.layers[i]
        _slots_view(kc).index_copy_(0, slots, cache.k[i].to(kc.dtype))
        _slots_view(vc).index_copy_(0, slots, cache.v[i].to(vc.dtype))


def check_group(num_layers: int, group: tuple[int, int]) -> None:
    """Check that ``group = (a, b)`` is a contiguous layer group ``0 <= a <= b < num_layers``.

    Raises:
        ConfigError: naming the group and the valid range.
    """
    a, b = group
    if not 0 <= a <= b < num_layers:
        raise ConfigError(f"recompute group [{a}, {b}]: need 0 <= a <= b < {num_layers} (layers)")


@torch.inference_mode()
def inject(
    runner: ModelRunner,
    cache: ContextCache,
    block_table: list[int],
    recompute: tuple[int, int] | list[tuple[int, int]] | None = None,
    e_start: torch.Tensor | None = None,
) -> None:
    """Fill ``block_table`` with the sender's K/V, recomputing layers ``recompute = (a, b)``.

    Every layer outside ``[a, b]`` gets the sender's K/V; layers ``a..b`` run in the
    receiver over the context tokens from ``e_start`` (default: the sender's E-cache at
    ``a``) and write their own K/V. ``recompute=None`` is full KV reuse. A list of disjoint
    groups recomputes each from the sender's E-cache at its first layer (``e_start`` feeds
    the first); each extra group is one more E-cache transfer (DroidSpeak §4.1).

    Raises:
        ConfigError: tp > 1, a cache of another shape, or invalid/overlapping groups.
        ValueError: bad block ids or a too-short block table.
    """
    _check_single_rank(runner)
    _check_shapes(runner, cache)
    meta = _context_meta(runner, cache.token_ids, block_table)
    n = runner.model_config.num_layers
    groups = [] if recompute is None else [recompute] if isinstance(recompute, tuple) else sorted(recompute)
    for g in groups:
        check_group(n, g)
    for g, h in zip(groups, groups[1:]):
        if h[0] <= g[1]:
            raise ConfigError(f"recompute groups {list(g)} and {list(h)} overlap; give disjoint groups")
    inside = {i for a, b in groups for i in range(a, b + 1)}
    _write_kv(runner, cache, meta.slot_mapping, [i for i in range(n) if i not in inside])
    for k, (a, b) in enumerate(groups):
        x = e_start if k == 0 and e_start is not None else cache.e[a]
        _run_layers(runner, x.to(runner.dtype), meta, meta.positions, a, b + 1)


@dataclass
class _ScatterMeta:
    """Recomputed rows of a sequence: where they are cached and which keys they see."""

    slots: torch.Tensor      # [n] cache slots of the recomputed tokens
    positions: torch.Tensor  # [n] their positions
    all_slots: torch.Tensor  # [T] slots of the whole context
    mask: torch.Tensor       # bool [n, T]: q_pos >= k_pos (true positions, not bottom-right)


def _scatter_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, meta: _ScatterMeta) -> torch.Tensor:
    """Attention of scattered query rows over the whole (hybrid) context cache."""
    kv, d = k_cache.shape[2], k_cache.shape[3]
    _slots_view(k_cache).index_copy_(0, meta.slots, k)
    _slots_view(v_cache).index_copy_(0, meta.slots, v)
    rep = q.shape[1] // kv
    keys = _slots_view(k_cache)[meta.all_slots].repeat_interleave(rep, dim=1).transpose(0, 1)
    vals = _slots_view(v_cache)[meta.all_slots].repeat_interleave(rep, dim=1).transpose(0, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, vals, attn_mask=meta.mask, scale=d ** -0.5)
    return out.transpose(0, 1)


def blend_token_count(num_tokens: int, ratio: float) -> int:
    """Tokens CacheBlend recomputes: ``ceil(ratio * num_tokens)``.

    Raises:
        ConfigError: ``ratio`` outside [0, 1].
    """
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"--blend-ratio: must be in [0, 1], got {ratio}")
    return math.ceil(ratio * num_tokens)


@torch.inference_mode()
def blend(runner: ModelRunner, cache: ContextCache, block_table: list[int], ratio: float) -> list[int]:
    """CacheBlend across two models: recompute layer 0 fully, then the top ``ratio`` tokens.

    Layer 0 runs in the receiver for every context token from its own embeddings; the
    tokens with the largest ``sum((V_receiver - V_sender)^2)`` at layer 0 (CacheBlend's
    selection, LMCache checks K, the original V) are recomputed in every later layer
    (their K/V overwrite the sender's), every other token keeps the sender's K/V. Query
    rows are masked by their true positions.

    Returns:
        The recomputed token indices (sorted).

    Raises:
        ConfigError: tp > 1, a cache of another shape, or ``ratio`` outside [0, 1].
    """
    _check_single_rank(runner)
    _check_shapes(runner, cache)
    count = blend_token_count(len(cache.token_ids), ratio)
    meta = _context_meta(runner, cache.token_ids, block_table)
    n = runner.model_config.num_layers
    _write_kv(runner, cache, meta.slot_mapping, range(1, n))
    x = F.embedding(meta.input_ids, runner.model.embed)
    x = _run_layers(runner, x, meta, meta.positions, 0, 1)
    v0 = _slots_view(runner.kv_cache.layers[0][1])[meta.slot_mapping]
    deviation = (v0.float() - cache.v[0].float()).pow(2).sum(dim=(1, 2))
    chosen = torch.topk(deviation, count).indices.sort().values if count else deviation.new_zeros(0, dtype=torch.long)
    if count and n > 1:
        pos = meta.positions[chosen]
        smeta = _ScatterMeta(meta.slot_mapping[chosen], pos, meta.slot_mapping,
                             pos[:, None] >= meta.positions[None, :])
        _run_layers(runner, x[chosen], smeta, pos, 1, n, attn=_scatter_attention)
    return [int(i) for i in chosen]


@torch.inference_mode()
def greedy_after(runner: ModelRunner, query_ids: list[int], start_pos: int, block_table: list[int],
                 max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """Run the query suffix over the cached context and decode greedily (the normal engine path).

    Args:
        runner: the receiver, whose blocks already hold ``start_pos`` context tokens.
        query_ids: the suffix tokens (at least one).
        start_pos: context length.
        block_table: blocks for context + query + ``max_new_tokens``.
        max_new_tokens: tokens to generate (>= 1).
        stop_ids: tokens that end generation (not returned).

    Returns:
        The generated token ids.
    """
    if not query_ids or max_new_tokens < 1:
        raise ValueError("greedy_after: needs a non-empty query and max_new_tokens >= 1")
    out: list[int] = []
    chunk = SeqChunk(0, list(query_ids), start_pos, list(block_table), need_logits=True)
    pos = start_pos + len(query_ids)
    for _ in range(max_new_tokens):
        token = int(runner.forward([chunk])[0].argmax())
        if token in stop_ids:
            break
        out.append(token)
        chunk = SeqChunk(0, [token], pos, list(block_table), need_logits=True)
        pos += 1
    return out
