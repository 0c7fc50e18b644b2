"""KV-cache parallelism (Mnemosyne/Medha KVP): partial attention with its LSE, and the merge.

The KV cache of a sequence is split by contiguous token ranges across the ranks of a KVP
group. Every rank receives the same queries (a decode token or a prefill chunk), attends to
its own shard and returns the partial output with its log-sum-exp. The exact result over all
keys is the online-softmax merge (``kernels/attention/lse_merge.py``)::

    lse = log(sum_j exp(lse_j));  o = sum_j exp(lse_j - lse) * o_j

Across processes the merge is one all-gather of every rank's ``[out | lse]`` rows, merged
locally by the same weights (vLLM's ``cp_lse_ag_out_rs`` gathers the LSEs and reduces the
outputs: two collectives; one is cheaper when the step is latency-bound, as a decode is).
A rank whose keys all precede the queries attends without a mask; only a rank holding keys
at or after the first query position (the owner of the newest tokens) applies the causal
mask. An empty shard has ``lse = -inf`` and contributes nothing. Example::

    out, lse = partial_attention(q, k_shard, v_shard, q_pos, k_start=1024, scale=d ** -0.5)
    merged = kvp_merge(out, lse, group)          # or merge_attention_states on one process
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from charbench.errors import ConfigError


def partial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_start: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries over one contiguous key shard, with its log-sum-exp.

    fp32/bf16 on CPU runs torch's flash-attention CPU kernel (no ``[T, L]`` score matrix;
    it returns the LSE); other dtypes and devices run :func:`partial_attention_math`.
    On the owner of the newest keys the shard is split at the first query position: the
    keys before it are visible to every query (no mask), the at most ``T`` keys after it
    get the causal mask, and the two parts are merged by their LSEs.

    Args:
        q: ``[T, heads, head_dim]``.
        k: ``[L, kv_heads, head_dim]``, keys at absolute positions ``k_start .. k_start+L-1``
            (``L`` may be 0: an empty shard).
        v: same shape as ``k``.
        q_pos: long ``[T]``, absolute position of each query.
        k_start: absolute position of ``k[0]``.
        scale: softmax scale.

    Returns:
        ``(out [T, heads, head_dim]`` in ``q``'s dtype, ``lse [T, heads]`` float32).
        Queries that see no key of this shard get ``out = 0`` and ``lse = -inf``.
    """
    t, heads, d = q.shape
    length = k.shape[0]
    if length == 0:
        return q.new_zeros(t, heads, d), torch.full((t, heads), float("-inf"), device=q.device)
    if _FLASH_CPU is None or q.device.type != "cpu" or q.dtype not in (torch.float32, torch.bfloat16):
        return partial_attention_math(q, k, v, q_pos, k_start, scale)
    q_min = int(q_pos.min())
    split = min(max(q_min + 1 - k_start, 0), length)  # keys at positions <= q_min: seen by all
    parts = []
    if split:
        parts.append(_flash(q, k[:split], v[:split], scale, None))
    if split < length:
        k_pos = torch.arange(k_start + split, k_start + length, device=q.device)
        visible = k_pos[None, :] <= q_pos[:, None]  # [T, L_tail]
        parts.append(_flash(q, k[split:], v[split:], scale, visible))
    if len(parts) == 1:
        out, lse = parts[0]
    else:
        (o1, l1), (o2, l2) = parts
        lse = torch.logaddexp(l1, l2)
        safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        out = (o1.float() * torch.exp(l1 - safe)[..., None] + o2.float() * torch.exp(l2 - safe)[..., None]).to(q.dtype)
    return out, lse


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           visible: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One flash call; GQA as ``kv_heads`` batches of ``group x T`` query rows."""
    t, heads, d = q.shape
    kv_heads = k.shape[1]
    g = heads // kv_heads
    qq = q.reshape(t, kv_heads, g, d).permute(1, 2, 0, 3).reshape(1, kv_heads, g * t, d)
    kk = k.permute(1, 0, 2).unsqueeze(0)  # a strided view: the kernel reads it without a copy
    vv = v.permute(1, 0, 2).unsqueeze(0)
    mask = None
    if visible is not None:
        mask = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill_(~visible, float("-inf"))
        mask = mask.repeat(g, 1)[None, None]  # rows ordered (group, query) like qq
    out, lse = _FLASH_CPU(qq, kk, vv, 0.0, False, attn_mask=mask, scale=scale)
    out = out.reshape(kv_heads, g, t, d).permute(2, 0, 1, 3).reshape(t, heads, d)
    lse = lse.reshape(kv_heads, g, t).permute(2, 0, 1).reshape(t, heads).float()
    if visible is not None:
        # the kernel gives a row with every key masked lse 0 and out 0: make it "no keys"
        none = ~visible.any(dim=1)
        if bool(none.any()):
            lse = lse.masked_fill(none[:, None], float("-inf"))
            out = out.masked_fill(none[:, None, None], 0.0)
    return out.to(q.dtype), lse


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def partial_attention_math(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_start: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`partial_attention` by explicit scores (any dtype and device; the reference)."""
    t, heads, d = q.shape
    length, kv_heads = k.shape[0], k.shape[1]
    if length == 0:
        return q.new_zeros(t, heads, d), torch.full((t, heads), float("-inf"), device=q.device)
    group = heads // kv_heads
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = q.to(acc).reshape(t, kv_heads, group, d).permute(1, 2, 0, 3)  # [KV, G, T, D]
    kt = k.to(acc).permute(1, 2, 0)  # [KV, D, L]
    scores = torch.matmul(qg, kt.unsqueeze(1)) * scale  # [KV, G, T, L]
    # Only the owner of keys at or after the first query needs the causal mask.
    if k_start + length - 1 > int(q_pos.min()):
        k_pos = torch.arange(k_start, k_start + length, device=q.device)
        hidden = k_pos[None, :] > q_pos[:, None]  # [T, L]
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [KV, G, T]
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - safe[..., None])  # rows without keys: exp(-inf) = 0
    out = torch.matmul(probs, v.to(acc).permute(1, 0, 2).unsqueeze(1))  # [KV, G, T, D]
    out = out.permute(2, 0, 1, 3).reshape(t, heads, d)
    return out.to(q.dtype), lse.permute(2, 0, 1).reshape(t, heads).float()


def merge_weights(all_lse: torch.Tensor, rank: int) -> torch.Tensor:
    """This part's weight ``exp(lse_rank - lse)`` in the merge, 0 where no part has keys.

    Args:
        all_lse: ``[parts, ...]`` every part's LSE (``-inf`` = no keys).
        rank: index of this part.

    Returns:
        float32 ``[...]``.
    """
    lse_max = all_lse.amax(dim=0)
    finite = torch.where(torch.isinf(lse_max), torch.zeros_like(lse_max), lse_max)
    w = torch.exp(all_lse - finite)
    total = w.sum(dim=0)
    return w[rank] / torch.where(total > 0, total, torch.ones_like(total))


@dataclass
class CommCounter:
    """Bytes this rank sent through collectives and point-to-point calls.

    Attributes:
        bytes_by_kind: ``kvp``, ``tp``, ``spp`` -> bytes sent by this rank.
    """

    bytes_by_kind: dict[str, int]

    @classmethod
    def new(cls) -> CommCounter:
        """A zeroed counter."""
        return cls({"kvp": 0, "tp": 0, "spp": 0})

    def add(self, kind: str, t: torch.Tensor, world: int) -> None:
        """Count one collective over ``world`` ranks (ring cost: ``2 (n-1)/n`` of ``t``)."""
        if world > 1:
            self.bytes_by_kind[kind] += int(2 * (world - 1) * t.numel() * t.element_size() // world)

    def add_gather(self, kind: str, t: torch.Tensor, world: int) -> None:
        """Count one all-gather of ``t`` per rank over ``world`` ranks (ring: ``n - 1`` of ``t``)."""
        if world > 1:
            self.bytes_by_kind[kind] += int((world - 1) * t.numel() * t.element_size())

    def add_p2p(self, t: torch.Tensor) -> None:
        """Count one pipeline send."""
        self.bytes_by_kind["spp"] += t.numel() * t.element_size()

    def total(self) -> int:
        """All bytes sent."""
        return sum(self.bytes_by_kind.values())


def kvp_merge(
    out: torch.Tensor,
    lse: torch.Tensor,
    group: dist.ProcessGroup | None,
    world: int,
    rank: int,
    comm: CommCounter | None = None,
) -> torch.Tensor:
    """Merge this rank's partial attention with the other KVP ranks' (exact, in place-free).

    Args:
        out: ``[T, heads, head_dim]`` this rank's partial output.
        lse: ``[T, heads]`` float32 its LSE.
        group: the KVP process group (None when ``world == 1``).
        world: KVP degree.
        rank: this rank's index in the KVP group.
        comm: optional byte counter.

    Returns:
        The merged ``[T, heads, head_dim]`` (identical on every rank of the group).
    """
    if world == 1:
        return out
    t, heads, d = out.shape
    # one collective per call: every rank's [out | lse] rows, merged locally (a decode step's
    # latency is the collectives' count, not their bytes)
    packed = torch.cat([out.float().reshape(t, heads * d), lse.reshape(t, heads)], dim=1).contiguous()
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    if comm is not None:
        comm.add_gather("kvp", packed, world)
    parts = torch.stack(gathered)  # [world, T, H*D + H]
    all_lse = parts[:, :, heads * d:]
    merged = torch.zeros(t, heads, d)
    for r in range(world):
        w = merge_weights(all_lse, r)  # [T, H]
        merged += parts[r, :, : heads * d].reshape(t, heads, d) * w[..., None]
    return merged.to(out.dtype)


@dataclass(frozen=True)
class KVPlacement:
    """Contiguous token ranges per KVP rank, grown progressively.

    Token ``p`` of a sequence lives on KVP rank ``p // max_tokens_per_rank``: new KV goes to
    the last shard until it holds ``max_tokens_per_rank`` tokens, then the next rank takes
    over (Vajra's ``max_num_tokens_per_kvp_group``).

    Attributes:
        kvp: ranks in the group.
        max_tokens_per_rank: tokens one rank holds per sequence.
    """

    kvp: int
    max_tokens_per_rank: int

    def __post_init__(self) -> None:
        if self.kvp < 1:
            raise ConfigError(f"--parallel: kvp must be >= 1, got {self.kvp}")
        if self.max_tokens_per_rank < 1:
            raise ConfigError(
                f"--max-tokens-per-rank: must be >= 1, got {self.max_tokens_per_rank}"
            )

    @property
    def capacity(self) -> int:
        """Longest sequence the group holds."""
        return self.kvp * self.max_tokens_per_rank

    def check(self, num_tokens: int) -> None:
        """Refuse a sequence longer than the group holds.

        Raises:
            ConfigError: naming the limit and the fix.
        """
        if num_tokens > self.capacity:
            raise ConfigError(
                f"--max-tokens-per-rank: a sequence of {num_tokens} tokens does not fit "
                f"kvp={self.kvp} x {self.max_tokens_per_rank} tokens per rank; raise "
                "--max-tokens-per-rank or kvp"
            )

    def shard(self, rank: int, num_tokens: int) -> tuple[int, int]:
        """``[start, end)`` of the tokens ``rank`` holds of a ``num_tokens``-token sequence."""
        start = rank * self.max_tokens_per_rank
        end = min(num_tokens, start + self.max_tokens_per_rank)
        return start, max(start, end)

    def active_ranks(self, num_tokens: int) -> int:
        """Ranks holding at least one token."""
        return min(self.kvp, -(-num_tokens // self.max_tokens_per_rank))
