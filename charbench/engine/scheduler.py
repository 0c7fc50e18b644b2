"""Iteration-level scheduler with chunked prefill and preemption by recompute.

Every engine step asks :meth:`Scheduler.schedule` for one batch. The batch is built the
Sarathi-Serve way under a per-iteration token budget (``max_num_batched_tokens``):

1. running sequences in decode (one token each), oldest arrival first;
2. running sequences still prefilling (a prompt chunk, or a recompute after preemption);
3. waiting sequences, first come first served, while ``max_num_seqs``, the budget and the
   free KV blocks allow (no skipping ahead: a head that does not fit blocks the queue).

Chunk sizes of 2 and 3 come from a :class:`~charbench.engine.chunking.ChunkPolicy`. A policy
with a ``prefill_order`` (``seqs -> seqs``, e.g. LARS in ``engine/lars.py``) replaces the
order of 2 and 3: running prefills and waiting sequences are served in the one order it
returns (admission still stops at the first waiting sequence that does not fit). When a
running sequence needs a KV block and none is free, the most recently arrived running
sequence is preempted: its blocks are freed, its computed-token count is reset to 0 and it
goes back to the front of the waiting queue; when it is re-admitted, its prompt and all
tokens generated so far are prefilled again (recompute). No new sequence is admitted in an
iteration that preempted, so a victim is never re-admitted in the same step::

    sched = Scheduler(allocator, block_size=16, max_num_seqs=64,
                      max_num_batched_tokens=512, chunk_policy=FixedChunkPolicy())
    sched.add(Sequence(0, "r0", prompt_ids, arrival_time_s=time.perf_counter()))
    out = sched.schedule()          # out.chunks: decodes first, then prefill chunks
    ... run the model on out.chunks, append sampled tokens with seq.append_token(t) ...
    sched.finish(seq)               # frees its blocks
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from charbench.engine.chunking import ChunkPolicy
from charbench.errors import ConfigError


class Allocator(Protocol):
    """The part of ``kv_cache.BlockAllocator`` the scheduler uses."""

    num_blocks: int

    @property
    def num_free(self) -> int:
        """Free blocks."""
        ...

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` free blocks."""
        ...

    def free(self, blocks: list[int]) -> None:
        """Return blocks."""
        ...


class SeqStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One request's tokens and KV-cache state.

    Attributes:
        seq_id: engine-unique integer id (also the runner's sequence id).
        request_id: the caller's id.
        token_ids: prompt followed by generated tokens.
        num_prompt_tokens: length of the prompt part of ``token_ids``.
        num_computed_tokens: leading tokens whose K/V are in the cache.
        block_table: KV blocks covering the computed (and scheduled) positions.
        arrival_time_s: priority key (earlier = higher priority), perf_counter seconds.
        status: waiting, running or finished.
        num_preemptions: times this sequence was preempted.
    """

    __slots__ = (
        "seq_id",
        "request_id",
        "token_ids",
        "num_prompt_tokens",
        "num_computed_tokens",
        "block_table",
        "arrival_time_s",
        "status",
        "num_preemptions",
    )

    def __init__(
        self, seq_id: int, request_id: str, prompt_token_ids: list[int], arrival_time_s: float
    ) -> None:
        """Create a waiting sequence from its prompt."""
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r}: the prompt has no tokens")
        self.seq_id = seq_id
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.arrival_time_s = arrival_time_s
        self.status = SeqStatus.WAITING
        self.num_preemptions = 0

    @property
    def num_tokens(self) -> int:
        """Prompt + output tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """Generated tokens (a copy)."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """True when only the newest generated token is left to compute."""
        return self.num_output_tokens > 0 and self.num_uncomputed_tokens == 1

    def append_token(self, token_id: int) -> None:
        """Add a sampled token (its K/V get computed in the next step)."""
        self.token_ids.append(token_id)

    def priority_key(self) -> tuple[float, int]:
        """Sort key: earlier arrival first, ties by id."""
        return (self.arrival_time_s, self.seq_id)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}, {self.status.value}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
            f"blocks={len(self.block_table)})"
        )


@dataclass
class ScheduledChunk:
    """Tokens ``[start_pos, start_pos + num_tokens)`` of ``seq`` run in this step.

    Attributes:
        seq: the sequence.
        start_pos: tokens already in the KV cache before this step.
        num_tokens: tokens in this chunk (1 for a decode).
        need_logits: True when the chunk ends at the sequence's last token, so a new token
            is sampled from its logits.
        is_decode: True for a decode (as opposed to a prefill or recompute chunk).
    """

    seq: Sequence
    start_pos: int
    num_tokens: int
    need_logits: bool
    is_decode: bool

    @property
    def token_ids(self) -> list[int]:
        """The chunk's tokens."""
        return self.seq.token_ids[self.start_pos : self.start_pos + self.num_tokens]


@dataclass
class SchedulerOutput:
    """One iteration's batch.

    Attributes:
        chunks: decodes first (oldest arrival first), then prefill chunks.
        preempted: sequences preempted while building this batch.
        num_batched_tokens: total tokens in ``chunks``.
    """

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        """True when nothing was scheduled."""
        return not self.chunks


class Scheduler:
    """Continuous-batching scheduler (see the module docstring for the policy)."""

    def __init__(
        self,
        allocator: Allocator,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        chunk_policy: ChunkPolicy,
    ) -> None:
        """Create the scheduler.

        Args:
            allocator: KV block allocator shared with nothing else.
            block_size: tokens per KV block.
            max_num_seqs: most running sequences (and so most sequences per batch).
            max_num_batched_tokens: token budget per iteration.
            chunk_policy: prefill chunk sizes.

        Raises:
            ConfigError: a limit is not positive, or the budget cannot hold one decode per
                running sequence.
        """
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        if max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs "
                f"({max_num_seqs}) so every running sequence can decode each step; raise "
                "max_num_batched_tokens or lower max_num_seqs"
            )
        self.allocator = allocator
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunk_policy = chunk_policy
        self.waiting: deque[Sequence] = deque()
        # kept sorted by priority_key: running[-1] is the preemption victim
        self.running: list[Sequence] = []
        self.num_preemptions_total = 0

    # ---- queue management ---------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Append a new sequence to the waiting queue (FCFS)."""
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence from the scheduler and free its KV blocks."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self._free_blocks(seq)
        seq.status = SeqStatus.FINISHED

    @property
    def num_waiting(self) -> int:
        """Sequences waiting for admission (new or preempted)."""
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        """Sequences holding KV blocks."""
        return len(self.running)

    def has_unfinished(self) -> bool:
        """True while any sequence is waiting or running."""
        return bool(self.waiting or self.running)

    # ---- scheduling ---------------------------------------------------------------------

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks needed to hold ``num_tokens`` positions."""
        return -(-num_tokens // self.block_size)

    def schedule(self) -> SchedulerOutput:
        """Build this iteration's batch and advance the sequences' computed counts.

        ``num_computed_tokens`` of every scheduled sequence already counts the scheduled
        chunk when this returns (the caller runs the chunk before the next schedule).
        """
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled: dict[int, ScheduledChunk] = {}

        # Phases 1 and 2: running sequences, decodes first, each group oldest first.
        decodes = [s for s in self.running if s.is_decoding]
        prefills = [s for s in self.running if not s.is_decoding]
        begin_batch = getattr(self.chunk_policy, "begin_batch", None)
        if begin_batch is not None:  # batch-aware policies (adaptive chunking) see the decodes first
            begin_batch(decodes)
        order = getattr(self.chunk_policy, "prefill_order", None)
        for seq in decodes + (prefills if order is None else []):
            budget = self._schedule_running(seq, budget, scheduled, out)
            if budget <= 0:
                break

        if order is None:
            # Phase 3: admit waiting sequences, FCFS, unless this step preempted.
            if not out.preempted:
                while self.waiting and budget > 0:
                    n = self._admit(self.waiting[0], budget, scheduled)
                    if n == 0:
                        break
                    budget -= n
        else:
            # Phases 2+3 in the policy's order (a waiting sequence may go before a running one).
            admitting = True
            for seq in order(prefills + list(self.waiting)):
                if budget <= 0:
                    break
                if seq.status is SeqStatus.RUNNING:
                    budget = self._schedule_running(seq, budget, scheduled, out)
                elif seq.status is SeqStatus.WAITING and admitting and not out.preempted:
                    n = self._admit(seq, budget, scheduled)
                    admitting = n > 0
                    budget -= n

        chunks = list(scheduled.values())
        # decodes first; within each group the order of scheduling (priority, then FCFS)
        out.chunks = [c for c in chunks if c.is_decode] + [c for c in chunks if not c.is_decode]
        out.num_batched_tokens = sum(c.num_tokens for c in out.chunks)
        return out

    def _schedule_running(
        self, seq: Sequence, budget: int, scheduled: dict[int, ScheduledChunk], out: SchedulerOutput
    ) -> int:
        """Schedule a running sequence's decode or next chunk; return the budget left."""
        if seq.status is not SeqStatus.RUNNING or budget <= 0:
            return budget  # preempted as a victim earlier in this step
        decode = seq.is_decoding
        n = 1 if decode else self._chunk(seq, budget)
        if n == 0:
            return budget
        target = seq.num_computed_tokens + n
        ok, freed_budget = self._reserve_running(seq, target, scheduled, out)
        budget += freed_budget
        if not ok:
            return budget  # seq itself was preempted
        _schedule(scheduled, seq, n, decode)
        return budget - n

    def _admit(self, seq: Sequence, budget: int, scheduled: dict[int, ScheduledChunk]) -> int:
        """Admit waiting ``seq`` with its first chunk; return its tokens (0: it does not fit)."""
        if len(self.running) >= self.max_num_seqs:
            return 0
        n = self._chunk(seq, budget)
        if n == 0:
            return 0
        target = seq.num_computed_tokens + n
        need = self.blocks_for(target) - len(seq.block_table)
        if need > self.allocator.num_free:
            return 0
        self.waiting.remove(seq)
        if need > 0:
            seq.block_table.extend(self.allocator.allocate(need))
        seq.status = SeqStatus.RUNNING
        bisect.insort(self.running, seq, key=Sequence.priority_key)
        _schedule(scheduled, seq, n, False)
        return n

    def _chunk(self, seq: Sequence, budget: int) -> int:
        n = int(self.chunk_policy.chunk_size(seq, budget))
        return max(0, min(n, budget, seq.num_uncomputed_tokens))

    def _reserve_running(
        self,
        seq: Sequence,
        target_tokens: int,
        scheduled: dict[int, ScheduledChunk],
        out: SchedulerOutput,
    ) -> tuple[bool, int]:
        """Make ``seq``'s block table cover ``target_tokens``, preempting if needed.

        Returns:
            (False if ``seq`` itself was preempted, token budget returned by unscheduling
            victims that were already in this step's batch).
        """
        need = self.blocks_for(target_tokens) - len(seq.block_table)
        returned = 0
        while need > self.allocator.num_free:
            victim = self.running[-1]
            chunk = scheduled.pop(victim.seq_id, None)
            if chunk is not None:
                returned += chunk.num_tokens
            self._preempt(victim, out)
            if victim is seq:
                return False, returned
        if need > 0:
            seq.block_table.extend(self.allocator.allocate(need))
        return True, returned

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self._free_blocks(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions_total += 1
        # victims are taken latest-arrival first, so appendleft keeps the oldest in front
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _free_blocks(self, seq: Sequence) -> None:
        if seq.block_table:
            self.allocator.free(seq.block_table)
            seq.block_table = []


def _schedule(scheduled: dict[int, ScheduledChunk], seq: Sequence, n: int, is_decode: bool) -> None:
    """Put the next ``n`` tokens of ``seq`` into this step and count them as computed."""
    target = seq.num_computed_tokens + n
    scheduled[seq.seq_id] = ScheduledChunk(
        seq=seq,
        start_pos=seq.num_computed_tokens,
        num_tokens=n,
        need_logits=target == seq.num_tokens,
        is_decode=is_decode,
    )
    seq.num_computed_tokens = target
