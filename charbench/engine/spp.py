"""Sequence Pipeline Parallelism (Medha §3.3): the micro-batch plan of a pipelined run.

The layers are split into ``P`` stages. Micro-batch ``m`` enters stage 0 at step ``m``,
stage ``s`` at step ``m + s``, and its sampled tokens are known after step ``m + P - 1``.
Each sequence keeps a stage-progress counter (Vajra's ``prompt_tokens_stage_processed``):
it advances when a prefill chunk leaves stage 0, not when it leaves the last stage, and SPP
schedules chunk i+1 off it (chunk i+1 only needs chunk i's per-layer KV, which every stage has written
by the time chunk i+1 reaches it), so a prompt of N chunks is ready after N + P - 1 steps
instead of N x P. A decode needs the token sampled from its previous micro-batch, so it
enters P steps after it. Decodes of other sequences ride in the same micro-batches as the
prefill chunks (mixed batches)::

    seqs = [PlanSeq(0, chunks=[512] * 8, max_new_tokens=4), PlanSeq(1, chunks=[64], max_new_tokens=16)]
    plan = plan_pipeline(seqs, stages=2)            # plan[m]: the items of micro-batch m
    plan[m][i].seq_id, .start, .num_tokens, .is_decode, .need_logits

Every rank builds the same plan from the same inputs, so no schedule is communicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charbench.errors import ConfigError


@dataclass
class PlanSeq:
    """One sequence of a pipelined run and its progress counters.

    Attributes:
        seq_id: id (also the order of items inside a micro-batch).
        chunks: prefill chunk sizes (their sum is the prompt length).
        max_new_tokens: tokens to generate (the first comes from the last chunk).
        arrival_step: first micro-batch it may enter.
        cached_tokens: prompt tokens already in the KV cache before the run (the chunks
            cover the rest).
        stage_processed: prompt tokens that have left stage 0 (the SPP counter).
        generated: tokens sampled so far.
        first_token_step: step after which its first token is known (None before).
        token_steps: step after which each token is known.
    """

    seq_id: int
    chunks: list[int]
    max_new_tokens: int
    arrival_step: int = 0
    cached_tokens: int = 0
    stage_processed: int = 0
    generated: int = 0
    first_token_step: int | None = None
    token_steps: list[int] = field(default_factory=list)
    _next_step: int = 0
    _chunk_i: int = 0

    def __post_init__(self) -> None:
        if not self.chunks or min(self.chunks) < 1:
            raise ConfigError(f"sequence {self.seq_id}: prefill chunks must be >= 1 tokens, got {self.chunks}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"sequence {self.seq_id}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self._next_step = self.arrival_step
        self.stage_processed = max(self.stage_processed, self.cached_tokens)

    @property
    def prompt_len(self) -> int:
        """Prompt tokens."""
        return self.cached_tokens + sum(self.chunks)

    @property
    def done(self) -> bool:
        """All tokens generated."""
        return self.generated >= self.max_new_tokens


@dataclass(frozen=True)
class PlanItem:
    """One sequence's work in one micro-batch.

    Attributes:
        seq_id: the sequence.
        start: position of the first token (tokens already cached).
        num_tokens: tokens run (1 for a decode).
        is_decode: a decode of the last sampled token.
        need_logits: a token is sampled from this item.
    """

    seq_id: int
    start: int
    num_tokens: int
    is_decode: bool
    need_logits: bool


def plan_pipeline(seqs: list[PlanSeq], stages: int, early_stage_counter: bool = True) -> list[list[PlanItem]]:
    """Micro-batches until every sequence has its tokens (advances the sequences' counters).

    Args:
        seqs: the sequences (fresh counters).
        stages: pipeline stages P (1 = no pipeline).
        early_stage_counter: SPP (True): the next chunk follows as soon as the previous one
            left stage 0; False: it waits until the previous left the last stage (a plain
            pipeline, the non-SPP baseline).

    Returns:
        ``plan[m]``: micro-batch m's items in ``seq_id`` order (may be empty: a bubble).
    """
    if stages < 1:
        raise ConfigError(f"--parallel: spp must be >= 1, got {stages}")
    plan: list[list[PlanItem]] = []
    ordered = sorted(seqs, key=lambda s: s.seq_id)
    step = 0
    while not all(s.done for s in ordered):
        batch = []
        exit_step = step + stages - 1  # the step after which this micro-batch's tokens are known
        for s in ordered:
            if s.done or step < s._next_step:
                continue
            if s.stage_processed < s.prompt_len:
                n = s.chunks[s._chunk_i]
                s._chunk_i += 1
                last = s.stage_processed + n == s.prompt_len
                item = PlanItem(s.seq_id, s.stage_processed, n, False, last)
                s.stage_processed += n  # it leaves stage 0 at the end of this step
                s._next_step = step + 1 if early_stage_counter and not last else exit_step + 1
            else:
                item = PlanItem(s.seq_id, s.prompt_len + s.generated - 1, 1, True, True)
                s._next_step = exit_step + 1
            if item.need_logits:
                s.generated += 1
                s.token_steps.append(exit_step)
                if s.first_token_step is None:
                    s.first_token_step = exit_step
            batch.append(item)
        plan.append(batch)
        step += 1
    return plan
