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
from charbench.engine.model import LlamaModel
from charbench.engine.parallel import Layout, ParallelGroups
from charbench.engine.runner import is_checkpoint, resolve_model_config
from charbench.engine.spp import PlanItem, PlanSeq, plan_pipeline
from charbench.engine.tp import free_port, loopback_store
from charbench.engine.weights import RandomSource, SafetensorsSource, load_weights
from charbench.errors import ConfigError, DeviceError

TIMEOUT_S = 600.0


@dataclass
class GenerateSpec:
    """One greedy generation on a parallel layout, optionally with co-batched decodes.

    Attributes:
        model: preset name (random weights).
        prompt: token ids.
        chunks: prefill chunk sizes (sum = len(prompt)).
        max_new_tokens: tokens to generate (the first comes from the prefill).
        max_tokens_per_rank: KV tokens one KVP rank holds per sequence.
        block_size: tokens per KV block.
        seed: weight seed (same weights as ``EngineConfig(seed=...)``).
        threads_per_rank: torch threads per process.
        co_prompts: prompts of short requests that arrive first (one prefill chunk each)
            and then decode while the long prompt is prefilled: their decodes ride in the
            same micro-batches as the long prompt's chunks (the mixed workload).
        co_new_tokens: tokens each short request generates.
        arrival_step: micro-batch at which the long prompt arrives (default: once the
            short requests' first tokens are known).
        early_stage_counter: SPP's rule (chunk i+1 follows chunk i out of stage 0); False
            makes each chunk wait for the previous one to leave the last stage.
        synthetic_prefill: benchmarks of decode cost only: the KV of all prompt tokens but
            the last is filled with seeded random values instead of being computed (no
            prefill), the last prompt token runs as a real step; tokens and TTFT are then
            meaningless and the result says so (``synthetic_prefill``).
    """

    model: str
    prompt: list[int]
    chunks: list[int]
    max_new_tokens: int
    max_tokens_per_rank: int
    block_size: int = 16
    seed: int = 0
    threads_per_rank: int = 1
    co_prompts: list[list[int]] = field(default_factory=list)
    co_new_tokens: int = 0
    arrival_step: int | None = None
    early_stage_counter: bool = True
    synthetic_prefill: bool = False


@dataclass
class GenerateResult:
    """What rank 0 saw.

    Attributes:
        tokens: generated ids.
        ttft_s: prefill start (the long prompt's arrival) to first token.
        tbt_s: gaps between later tokens.
        chunk_times_s: stage-0 time of each micro-batch holding a prefill chunk of the prompt.
        comm_bytes_per_step: bytes sent by rank 0 per step, by kind (prefill chunks and decodes).
        kv_bytes_per_rank: KV bytes in use on each rank at the end (gathered).
        kv_tokens_per_rank: KV tokens on each rank at the end (all sequences).
        logits: float32 ``[max_new_tokens, vocab]``, the logits each token was chosen from.
        co_tokens: generated ids of each short request.
        co_tbt_s: gaps between each short request's tokens (the co-batched decodes' TBT).
        co_tbt_during_prefill_s: those gaps that ended while the long prompt was prefilling.
        micro_batches: micro-batches run (bubbles included).
        synthetic_prefill: the prompt's KV was random, not computed (decode timing only).
    """

    tokens: list[int]
    ttft_s: float
    tbt_s: list[float]
    chunk_times_s: list[float]
    comm_bytes_per_step: dict[str, float]
    kv_bytes_per_rank: list[int] = field(default_factory=list)
    kv_tokens_per_rank: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    co_tokens: list[list[int]] = field(default_factory=list)
    co_tbt_s: list[list[float]] = field(default_factory=list)
    co_tbt_during_prefill_s: list[float] = field(default_factory=list)
    micro_batches: int = 0
    synthetic_prefill: bool = False


@dataclass
class KVPMeta:
    """One chunk's placement on this rank (shared by all layers of one step)."""

    positions: torch.Tensor
    owned: torch.Tensor  # indices in the chunk of the tokens this rank stores
    slots: torch.Tensor  # their flat cache slots
    blocks: torch.Tensor  # this rank's block table
    local_len: int  # tokens this rank holds after the write
    k_start: int  # absolute position of this rank's first token
    first_block: int | None = None  # set when the block table is one ascending run (read as a view)


@dataclass
class BatchMeta:
    """A micro-batch of several sequences: ``(first row, rows, KVPMeta)`` per sequence."""

    parts: list[tuple[int, int, KVPMeta]]


class KVPAttention:
    """Attention function for the model: write owned K/V, attend to the local shard, merge.

    ``meta`` is one :class:`KVPMeta` (one sequence) or a :class:`BatchMeta`; the partial
    outputs of all sequences are merged across the KVP group in one exchange.
    """

    def __init__(self, groups: ParallelGroups, scale: float, comm: CommCounter) -> None:
        self.groups, self.scale, self.comm = groups, scale, comm

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, meta: KVPMeta | BatchMeta) -> torch.Tensor:
        """``[T, heads, D]``; exact attention over each whole sequence."""
        parts = meta.parts if isinstance(meta, BatchMeta) else [(0, q.shape[0], meta)]
        kvh, d = k_cache.shape[2], k_cache.shape[3]
        outs, lses = [], []
        for row, n, m in parts:
            if m.owned.numel():
                k_cache.view(-1, kvh, d).index_copy_(0, m.slots, k[row:row + n][m.owned])
                v_cache.view(-1, kvh, d).index_copy_(0, m.slots, v[row:row + n][m.owned])
            if m.first_block is not None:  # no gather: a view of the cache
                nb = m.blocks.numel()
                keys = k_cache[m.first_block:m.first_block + nb].view(-1, kvh, d)[: m.local_len]
                vals = v_cache[m.first_block:m.first_block + nb].view(-1, kvh, d)[: m.local_len]
            else:
                keys = k_cache.index_select(0, m.blocks).view(-1, kvh, d)[: m.local_len]
                vals = v_cache.index_select(0, m.blocks).view(-1, kvh, d)[: m.local_len]
            out, lse = partial_attention(q[row:row + n], keys, vals, m.positions, m.k_start, self.scale)
            outs.append(out)
            lses.append(lse)
        out, lse = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
        g = self.groups
        return kvp_merge(out, lse, g.kvp_group, g.layout.kvp, g.kvp_i, self.comm)


class StageWorker:
    """One rank: a pipeline stage's layers, a KV shard per sequence, the groups."""

    def __init__(self, spec: GenerateSpec, groups: ParallelGroups) -> None:
        self.spec, self.groups = spec, groups
        lay = groups.layout
        self.cfg = resolve_model_config(spec.model)  # a preset or a local HF checkpoint folder
        longest = max([len(spec.prompt) + spec.max_new_tokens] + [len(p) + spec.co_new_tokens for p in spec.co_prompts])
        self.cfg.max_position_embeddings = max(self.cfg.max_position_embeddings, longest)
        self.comm = CommCounter.new()
        self.model = LlamaModel(self.cfg, torch.float32, "cpu", tp=lay.tp,
                                with_lm_head=groups.next_stage_rank is None, all_reduce=self._tp_reduce)
        if is_checkpoint(spec.model):
            source = SafetensorsSource(spec.model)
            load_weights(self.model, source, groups.tp_i, lay.tp)
            source.close()
        else:
            load_weights(self.model, RandomSource(spec.seed, "cpu"), groups.tp_i, lay.tp)
        self.layer_ids = lay.stage_layers(self.cfg.num_layers, groups.spp_i)
        for i, layer in enumerate(self.model.layers):
            if i not in self.layer_ids:  # another stage's layer: free its weights
                for p in layer.parameters():
                    p.data = torch.empty(0)
        self.placement = KVPlacement(lay.kvp, spec.max_tokens_per_rank)
        self.placement.check(longest)
        per_seq = -(-spec.max_tokens_per_rank // spec.block_size)
        nblk = per_seq * (1 + len(spec.co_prompts))
        self.kv = PagedKVCache(self.cfg, nblk, spec.block_size, torch.float32, "cpu", lay.tp)
        self.allocator = BlockAllocator(nblk)
        self.block_tables: dict[int, list[int]] = {}
        self.local_lens: dict[int, int] = {}
        self.attn = KVPAttention(groups, self.cfg.head_dim ** -0.5, self.comm)
        self._pending: list[Any] = []

    def _tp_reduce(self, t: torch.Tensor) -> None:
        if self.groups.layout.tp == 1:
            return
        dist.all_reduce(t, group=self.groups.tp_group)
        self.comm.add("tp", t, self.groups.layout.tp)

    @property
    def local_tokens(self) -> int:
        """KV tokens this rank holds (all sequences)."""
        return sum(self.local_lens.values())

    def _meta(self, seq_id: int, start: int, n: int) -> KVPMeta:
        bs = self.spec.block_size
        table = self.block_tables.setdefault(seq_id, [])
        a, b = self.placement.shard(self.groups.kvp_i, start + n)
        owned = [p - start for p in range(max(a, start), b)]
        need = -(-(b - a) // bs) - len(table)
        if need > 0:
            table.extend(self.allocator.allocate(need))
        slots = [table[(p - a) // bs] * bs + (p - a) % bs for p in range(max(a, start), b)]
        self.local_lens[seq_id] = b - a
        run = bool(table) and table[-1] - table[0] == len(table) - 1 and table == list(range(table[0], table[-1] + 1))
        return KVPMeta(torch.arange(start, start + n), torch.tensor(owned, dtype=torch.long),
                       torch.tensor(slots, dtype=torch.long), torch.tensor(table, dtype=torch.long),
                       b - a, a, table[0] if run else None)

    @torch.inference_mode()
    def run(self, items: list[PlanItem], tokens: list[list[int]]) -> torch.Tensor | None:
        """Run one micro-batch through this stage; the last stage returns the logits of the
        items that sample (``[n, vocab]``), other stages None.

        Args:
            items: the micro-batch.
            tokens: each item's token ids (read on stage 0 only).
        """
        g = self.groups
        parts, row = [], 0
        for it in items:
            parts.append((row, it.num_tokens, self._meta(it.seq_id, it.start, it.num_tokens)))
            row += it.num_tokens
        meta: KVPMeta | BatchMeta = parts[0][2] if len(parts) == 1 else BatchMeta(parts)
        positions = torch.cat([m.positions for _, _, m in parts])
        self.model.rope.ensure(max(it.start + it.num_tokens for it in items))
        freqs = self.model.rope.lookup(positions)
        if g.prev_stage_rank is None:
            ids = torch.tensor([t for toks in tokens for t in toks], dtype=torch.long)
            x = F.embedding(ids, self.model.embed)
        else:
            x = torch.empty(row, self.cfg.hidden_size)
            dist.recv(x, src=g.prev_stage_rank)
        for i in self.layer_ids:
            kc, vc = self.kv.layers[i]
            x = self.model.layers[i](x, freqs, kc, vc, self.attn, meta, self.model.all_reduce)
        if g.next_stage_rank is not None:
            # asynchronous: this stage goes on with the next micro-batch at once
            self._pending.append((dist.isend(x.contiguous(), dst=g.next_stage_rank), x))
            self.comm.add_p2p(x)
            return None
        rows = [r + n - 1 for (r, n, _), it in zip(parts, items) if it.need_logits]
        return self.model.compute_logits(x[rows]) if rows else None

    def fill_synthetic(self, seq_id: int, num_tokens: int) -> None:
        """Put seeded random K/V for positions ``[0, num_tokens)`` into this rank's shard."""
        meta = self._meta(seq_id, 0, num_tokens)
        gen = torch.Generator().manual_seed(1000 + self.groups.rank)
        for i in self.layer_ids:
            for cache in self.kv.layers[i]:
                flat = cache.view(-1, cache.shape[2], cache.shape[3])
                flat.index_copy_(0, meta.slots, torch.randn(meta.slots.numel(), cache.shape[2], cache.shape[3], generator=gen))

    def step(self, tokens: list[int], start: int, want_logits: bool) -> torch.Tensor | None:
        """Run one chunk of sequence 0 through this stage; the last stage returns the last
        token's logits ``[vocab]`` when ``want_logits``."""
        out = self.run([PlanItem(0, start, len(tokens), start > 0 and len(tokens) == 1, want_logits)], [tokens])
        return None if out is None else out[0]

    def flush(self) -> None:
        """Wait for this stage's sends."""
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()

    def broadcast_logits(self, logits: torch.Tensor | None, rows: int = 0) -> torch.Tensor:
        """Every rank gets the last stage's logits (``[vocab]``, or ``[rows, vocab]`` when
        ``rows`` > 0; float32) to sample from."""
        if self.groups.layout.world == 1:
            assert logits is not None
            return logits
        shape = (rows, self.cfg.vocab_size) if rows else (self.cfg.vocab_size,)
        t = logits.contiguous() if logits is not None else torch.empty(shape)
        dist.broadcast(t, src=self.groups.last_stage_root)
        return t


def _plan(spec: GenerateSpec, stages: int) -> tuple[list[PlanSeq], list[list[PlanItem]]]:
    """Sequence 0 is the long prompt; 1.. are the short requests (one chunk each)."""
    shorts = [PlanSeq(1 + i, [len(p)], spec.co_new_tokens) for i, p in enumerate(spec.co_prompts)]
    arrival = spec.arrival_step if spec.arrival_step is not None else (stages if shorts else 0)
    if spec.synthetic_prefill:
        main = PlanSeq(0, [1], spec.max_new_tokens, arrival_step=arrival, cached_tokens=len(spec.prompt) - 1)
    else:
        main = PlanSeq(0, list(spec.chunks), spec.max_new_tokens, arrival_step=arrival)
    seqs = [main] + shorts
    return seqs, plan_pipeline(seqs, stages, spec.early_stage_counter)


def generate(spec: GenerateSpec, groups: ParallelGroups) -> GenerateResult:
    """Greedy generation on this rank (all ranks call it with the same spec).

    Step ``t``: this rank's stage ``s`` runs micro-batch ``t - s`` of the plan
    (:mod:`charbench.engine.spp`); when micro-batch ``t - (P - 1)`` sampled tokens, the last
    stage broadcasts their logits and every rank takes the argmax (greedy), so stage 0 has
    the tokens before the decodes that need them enter (P steps later).
    """
    if sum(spec.chunks) != len(spec.prompt):
        raise ConfigError(f"chunks sum to {sum(spec.chunks)} but the prompt has {len(spec.prompt)} tokens")
    if spec.co_prompts and spec.co_new_tokens < 1:
        raise ConfigError("co_new_tokens must be >= 1 when co_prompts are given")
    w = StageWorker(spec, groups)
    if spec.synthetic_prefill:
        w.fill_synthetic(0, len(spec.prompt) - 1)
    stages = groups.layout.spp
    seqs, plan = _plan(spec, stages)
    text = {0: list(spec.prompt)} | {1 + i: list(p) for i, p in enumerate(spec.co_prompts)}
    produced: dict[int, list[int]] = {sid: [] for sid in text}
    token_times: dict[int, list[float]] = {sid: [] for sid in text}
    main_logits: list[torch.Tensor] = []
    arrival = seqs[0].arrival_step
    last_chunk_mb = max(m for m, batch in enumerate(plan) for it in batch if it.seq_id == 0 and not it.is_decode)
    chunk_times: list[float] = []
    prefill_bytes: dict[str, int] = {}
    t_arrival = t_prefill_end = None
    if groups.layout.world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for step in range(len(plan) + stages - 1):
        if step == arrival:
            t_arrival = time.perf_counter()
        m = step - groups.spp_i
        if 0 <= m < len(plan) and plan[m]:
            batch = plan[m]
            toks = [text[it.seq_id][it.start:it.start + it.num_tokens] for it in batch]
            tc = time.perf_counter()
            logits = w.run(batch, toks)
            if any(it.seq_id == 0 and not it.is_decode for it in batch):
                chunk_times.append(time.perf_counter() - tc)
            if m == last_chunk_mb:
                prefill_bytes = dict(w.comm.bytes_by_kind)
            if len(w._pending) > 4:  # keep a few sends in flight, bound the buffers held
                w._pending.pop(0)[0].wait()
        else:
            logits = None
        j = step - (stages - 1)  # the micro-batch leaving the last stage now
        if 0 <= j < len(plan):
            sampling = [it for it in plan[j] if it.need_logits]
            if sampling:
                if stages == 1 and logits is not None:
                    # one stage: every rank computed the same logits (the TP all-reduce and the
                    # KVP merge give all ranks the same values), so no broadcast is needed
                    got = logits
                else:
                    got = w.broadcast_logits(logits, rows=len(sampling))
                now = time.perf_counter()
                for it, row in zip(sampling, got):
                    tok = int(row.argmax())  # greedy
                    produced[it.seq_id].append(tok)
                    text[it.seq_id].append(tok)
                    token_times[it.seq_id].append(now)
                    if it.seq_id == 0:
                        main_logits.append(row.clone())
                if j == last_chunk_mb:
                    t_prefill_end = now
    w.flush()
    if t_arrival is None:
        t_arrival = t0
    per_chunk = len(seqs[0].chunks)
    steps = per_chunk + len(produced[0]) - 1
    per_step = {k: v / max(steps, 1) for k, v in w.comm.bytes_by_kind.items()}
    per_step.update({f"prefill_{k}": v / max(per_chunk, 1) for k, v in prefill_bytes.items()})
    kv_tokens = [w.local_tokens]
    if groups.layout.world > 1:
        gathered = [torch.zeros(1, dtype=torch.long) for _ in range(groups.layout.world)]
        dist.all_gather(gathered, torch.tensor([w.local_tokens]))
        kv_tokens = [int(x.item()) for x in gathered]
    per_token = w.kv.bytes_total // max(w.kv.num_blocks * spec.block_size, 1)
    times = token_times[0]
    co = sorted(sid for sid in produced if sid != 0)
    co_gaps = [[b - a for a, b in zip(token_times[s], token_times[s][1:])] for s in co]
    during = [b - a for s in co for a, b in zip(token_times[s], token_times[s][1:])
              if t_arrival < b <= (t_prefill_end or b)]
    return GenerateResult(produced[0], times[0] - t_arrival, [b - a for a, b in zip(times, times[1:])], chunk_times,
                          per_step, [n * per_token for n in kv_tokens], kv_tokens, torch.stack(main_logits),
                          [produced[s] for s in co], co_gaps, during, len(plan), spec.synthetic_prefill)


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
