"""Long-context runner: an unchanged :class:`LlamaModel` run as TP x SPP x KVP ranks.

Every rank builds the model (``tp`` shards as in ``engine/tp.py``), keeps only its pipeline
stage's slice of the layers in use, and holds its own KV shard: one allocator and one block
table per rank, tokens placed by :class:`~charbench.engine.kvp.KVPlacement`. Attention is
:class:`KVPAttention` -- local partial attention with its LSE, merged across the KVP group.

The ranks run the same program (SPMD): prefill chunks flow through the stages with
send/recv of the ``[T, hidden]`` activations, so chunk i+1 enters stage 0 as soon as chunk
i left it (stage 0 never waits for later stages inside a prefill); the last stage samples
greedily and broadcasts the token, and decode steps flow through the same pipeline::

    result = launch(Layout.parse("kvp=2"), GenerateSpec("tiny", prompt, chunks, 8, 1024))
    result.tokens, result.ttft_s, result.tbt_s
"""

from __future__ import annotations

import datetime
import os
import pickle
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from charbench.engine.kv_cache import BlockAllocator, PagedKVCache
from charbench.engine.kvp import CommCounter, KVPlacement, kvp_merge, partial_attention
from charbench.engine.model import LlamaModel, get_preset
from charbench.engine.parallel import Layout, ParallelGroups
from charbench.engine.tp import free_port, loopback_store
from charbench.engine.weights import RandomSource, load_weights
from charbench.errors import DeviceError

TIMEOUT_S = 600.0


@dataclass
class GenerateSpec:
    """One greedy generation on a parallel layout.

    Attributes:
        model: preset name (random weights).
        prompt: token ids.
        chunks: prefill chunk sizes (sum = len(prompt)).
        max_new_tokens: tokens to generate (the first comes from the prefill).
        max_tokens_per_rank: KV tokens one KVP rank holds.
        block_size: tokens per KV block.
        seed: weight seed (same weights as ``EngineConfig(seed=...)``).
        threads_per_rank: torch threads per process.
    """

    model: str
    prompt: list[int]
    chunks: list[int]
    max_new_tokens: int
    max_tokens_per_rank: int
    block_size: int = 16
    seed: int = 0
    threads_per_rank: int = 1


@dataclass
class GenerateResult:
    """What rank 0 saw.

    Attributes:
        tokens: generated ids.
        ttft_s: prefill start to first token.
        tbt_s: gaps between later tokens.
        chunk_times_s: stage-0 time per prefill chunk.
        comm_bytes_per_step: bytes sent by rank 0 per step, by kind (prefill chunks and decodes).
        kv_bytes_per_rank: KV bytes in use on each rank at the end (gathered).
        kv_tokens_per_rank: KV tokens on each rank at the end.
        logits: float32 ``[max_new_tokens, vocab]``, the logits each token was chosen from.
    """

    tokens: list[int]
    ttft_s: float
    tbt_s: list[float]
    chunk_times_s: list[float]
    comm_bytes_per_step: dict[str, float]
    kv_bytes_per_rank: list[int] = field(default_factory=list)
    kv_tokens_per_rank: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None


@dataclass
class KVPMeta:
    """One chunk's placement on this rank (shared by all layers of one step)."""

    positions: torch.Tensor
    owned: torch.Tensor  # indices in the chunk of the tokens this rank stores
    slots: torch.Tensor  # their flat cache slots
    blocks: torch.Tensor  # this rank's block table
    local_len: int  # tokens this rank holds after the write
    k_start: int  # absolute position of this rank's first token


class KVPAttention:
    """Attention function for the model: write owned K/V, attend to the local shard, merge."""

    def __init__(self, groups: ParallelGroups, scale: float, comm: CommCounter) -> None:
        self.groups, self.scale, self.comm = groups, scale, comm

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, meta: KVPMeta) -> torch.Tensor:
        """``[T, heads, D]``; exact attention over the whole sequence."""
        kvh, d = k_cache.shape[2], k_cache.shape[3]
        if meta.owned.numel():
            k_cache.view(-1, kvh, d).index_copy_(0, meta.slots, k[meta.owned])
            v_cache.view(-1, kvh, d).index_copy_(0, meta.slots, v[meta.owned])
        keys = k_cache.index_select(0, meta.blocks).view(-1, kvh, d)[: meta.local_len]
        vals = v_cache.index_select(0, meta.blocks).view(-1, kvh, d)[: meta.local_len]
        out, lse = partial_attention(q, keys, vals, meta.positions, meta.k_start, self.scale)
        g = self.groups
        return kvp_merge(out, lse, g.kvp_group, g.layout.kvp, g.kvp_i, self.comm)


class StageWorker:
    """One rank: a pipeline stage's layers, a KV shard, the groups."""

    def __init__(self, spec: GenerateSpec, groups: ParallelGroups) -> None:
        self.spec, self.groups = spec, groups
        lay = groups.layout
        self.cfg = get_preset(spec.model)
        self.cfg.max_position_embeddings = max(self.cfg.max_position_embeddings, len(spec.prompt) + spec.max_new_tokens)
        self.comm = CommCounter.new()
        self.model = LlamaModel(self.cfg, torch.float32, "cpu", tp=lay.tp,
                                with_lm_head=groups.next_stage_rank is None, all_reduce=self._tp_reduce)
        load_weights(self.model, RandomSource(spec.seed, "cpu"), groups.tp_i, lay.tp)
        self.layer_ids = lay.stage_layers(self.cfg.num_layers, groups.spp_i)
        for i, layer in enumerate(self.model.layers):
            if i not in self.layer_ids:  # another stage's layer: free its weights
                for p in layer.parameters():
                    p.data = torch.empty(0)
        self.placement = KVPlacement(lay.kvp, spec.max_tokens_per_rank)
        self.placement.check(len(spec.prompt) + spec.max_new_tokens)
        nblk = -(-spec.max_tokens_per_rank // spec.block_size)
        self.kv = PagedKVCache(self.cfg, nblk, spec.block_size, torch.float32, "cpu", lay.tp)
        self.allocator = BlockAllocator(nblk)
        self.block_table: list[int] = []
        self.attn = KVPAttention(groups, self.cfg.head_dim ** -0.5, self.comm)
        self._pending: list[Any] = []
        self._local_len = 0

    def _tp_reduce(self, t: torch.Tensor) -> None:
        if self.groups.layout.tp == 1:
            return
        dist.all_reduce(t, group=self.groups.tp_group)
        self.comm.add("tp", t, self.groups.layout.tp)

    @property
    def local_tokens(self) -> int:
        """KV tokens this rank holds for the sequence."""
        return self._local_len

    def _meta(self, start: int, n: int) -> KVPMeta:
        bs = self.spec.block_size
        a, b = self.placement.shard(self.groups.kvp_i, start + n)
        owned = [p - start for p in range(max(a, start), b)]
        need = -(-(b - a) // bs) - len(self.block_table)
        if need > 0:
            self.block_table.extend(self.allocator.allocate(need))
        slots = [self.block_table[(p - a) // bs] * bs + (p - a) % bs for p in range(max(a, start), b)]
        self._local_len = b - a
        return KVPMeta(torch.arange(start, start + n), torch.tensor(owned, dtype=torch.long),
                       torch.tensor(slots, dtype=torch.long), torch.tensor(self.block_table, dtype=torch.long),
                       b - a, a)

    @torch.inference_mode()
    def step(self, tokens: list[int], start: int, want_logits: bool) -> torch.Tensor | None:
        """Run one chunk through this stage; the last stage returns the last token's logits."""
        g, n = self.groups, len(tokens)
        meta = self._meta(start, n)
        self.model.rope.ensure(start + n)
        freqs = self.model.rope.lookup(meta.positions)
        if g.prev_stage_rank is None:
            x = F.embedding(torch.tensor(tokens, dtype=torch.long), self.model.embed)
        else:
            x = torch.empty(n, self.cfg.hidden_size)
            dist.recv(x, src=g.prev_stage_rank)
        for i in self.layer_ids:
            kc, vc = self.kv.layers[i]
            x = self.model.layers[i](x, freqs, kc, vc, self.attn, meta, self.model.all_reduce)
        if g.next_stage_rank is not None:
            # asynchronous: this stage goes on with the next chunk at once
            self._pending.append((dist.isend(x.contiguous(), dst=g.next_stage_rank), x))
            self.comm.add_p2p(x)
            return None
        if not want_logits:
            return None
        return self.model.compute_logits(x[-1:])[0]

    def flush(self) -> None:
        """Wait for this stage's sends."""
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()

    def broadcast_logits(self, logits: torch.Tensor | None) -> torch.Tensor:
        """Every rank gets the last stage's logits (``[vocab]``, float32) to sample from."""
        if self.groups.layout.world == 1:
            assert logits is not None
            return logits
        t = logits.contiguous() if logits is not None else torch.empty(self.cfg.vocab_size)
        dist.broadcast(t, src=self.groups.last_stage_root)
        return t


def generate(spec: GenerateSpec, groups: ParallelGroups) -> GenerateResult:
    """Greedy generation on this rank (all ranks call it with the same spec)."""
    w = StageWorker(spec, groups)
    if groups.layout.world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    pos, chunk_times = 0, []
    logits: torch.Tensor | None = None
    for i, n in enumerate(spec.chunks):
        tc = time.perf_counter()
        logits = w.step(spec.prompt[pos:pos + n], pos, want_logits=i == len(spec.chunks) - 1)
        chunk_times.append(time.perf_counter() - tc)
        pos += n
    w.flush()
    prefill_bytes = dict(w.comm.bytes_by_kind)
    step_logits = [w.broadcast_logits(logits)]
    times = [time.perf_counter()]
    out = [int(step_logits[-1].argmax())]  # greedy
    while len(out) < spec.max_new_tokens:
        logits = w.step([out[-1]], pos, want_logits=True)
        w.flush()
        pos += 1
        step_logits.append(w.broadcast_logits(logits))
        out.append(int(step_logits[-1].argmax()))
        times.append(time.perf_counter())
    steps = len(spec.chunks) + len(out) - 1
    per_step = {k: v / max(steps, 1) for k, v in w.comm.bytes_by_kind.items()}
    per_step.update({f"prefill_{k}": v / max(len(spec.chunks), 1) for k, v in prefill_bytes.items()})
    kv_tokens = [w.local_tokens]
    if groups.layout.world > 1:
        gathered = [torch.zeros(1, dtype=torch.long) for _ in range(groups.layout.world)]
        dist.all_gather(gathered, torch.tensor([w.local_tokens]))
        kv_tokens = [int(x.item()) for x in gathered]
    per_token = w.kv.bytes_total // max(w.kv.num_blocks * spec.block_size, 1)
    return GenerateResult(out, times[0] - t0, [b - a for a, b in zip(times, times[1:])], chunk_times,
                          per_step, [n * per_token for n in kv_tokens], kv_tokens, torch.stack(step_logits))


def _entry(rank: int, layout: Layout, spec: GenerateSpec, port: int, queue: Any) -> None:
    torch.set_num_threads(spec.threads_per_rank)
    try:
        timeout = datetime.timedelta(seconds=TIMEOUT_S)
        store = loopback_store(rank, layout.world, port, timeout)
        dist.init_process_group("gloo", rank=rank, world_size=layout.world, store=store, timeout=timeout)
        res = generate(spec, ParallelGroups.init(layout, rank))
        if rank == 0:
            # by value: torch would share the logits tensor through a file descriptor that dies
            # with this process, which may exit before the parent reads the queue
            queue.put(("ok", pickle.dumps(res)))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        queue.put(("error", f"rank {rank}: {traceback.format_exc()}"))
        raise


def launch(layout: Layout, spec: GenerateSpec) -> GenerateResult:
    """Run ``spec`` on ``layout``: in this process for 1x1x1, else on spawned gloo ranks.

    Raises:
        DeviceError: a rank failed (its traceback in the message).
    """
    if layout.world == 1:
        prev = torch.get_num_threads()
        torch.set_num_threads(spec.threads_per_rank)
        try:
            return generate(spec, ParallelGroups.init(layout, 0))
        finally:
            torch.set_num_threads(prev)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, layout, spec, port, queue), daemon=True) for r in range(layout.world)]
    os.environ.setdefault("OMP_NUM_THREADS", str(spec.threads_per_rank))
    for p in procs:
        p.start()
    try:
        kind, payload = queue.get(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)
    if kind != "ok":
        raise DeviceError(f"--parallel {layout.label}: {payload}")
    return pickle.loads(payload)
