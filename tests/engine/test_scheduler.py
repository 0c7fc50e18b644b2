"""Scheduler policy tests: token budget, decode-first order, limits, FCFS, preemption."""

from __future__ import annotations

import pytest

from charbench.engine.chunking import (
    FixedChunkPolicy,
    available_chunk_policies,
    make_chunk_policy,
    register_chunk_policy,
)
from charbench.engine.kv_cache import BlockAllocator
from charbench.engine.scheduler import Scheduler, SeqStatus, Sequence
from charbench.errors import ConfigError




def make(num_blocks: int = 100, block_size: int = 4, seqs: int = 8, budget: int = 16,
         chunk: int | None = None) -> Scheduler:
    return Scheduler(BlockAllocator(num_blocks), block_size, seqs, budget, FixedChunkPolicy(chunk))


def seq(i: int, n_prompt: int, t: float | None = None) -> Sequence:
    return Sequence(i, f"r{i}", list(range(1, n_prompt + 1)), float(i) if t is None else t)


def finish_step(sched_out, token: int = 7) -> None:
    """What the engine does after a forward: sample for chunks that need logits."""
    for c in sched_out.chunks:
        if c.need_logits:
            c.seq.append_token(token)


def test_token_budget_and_decode_first_order() -> None:
    s = make(budget=8, seqs=4)
    a, b, c = seq(0, 5), seq(1, 5), seq(2, 5)
    s.add(a)
    s.add(b)
    out = s.schedule()
    # A's whole prompt, then B's first 3 tokens: the budget of 8 is used exactly
    assert [(x.seq.seq_id, x.start_pos, x.num_tokens, x.need_logits) for x in out.chunks] == [
        (0, 0, 5, True), (1, 0, 3, False)]
    assert out.num_batched_tokens == 8
    finish_step(out)
    s.add(c)
    out = s.schedule()
    # decode of A first, then B's remaining prefill, then C admitted with what is left
    assert [(x.seq.seq_id, x.start_pos, x.num_tokens, x.is_decode) for x in out.chunks] == [
        (0, 5, 1, True), (1, 3, 2, False), (2, 0, 5, False)]
    assert out.num_batched_tokens == 8
    finish_step(out)
    out = s.schedule()
    # three decodes, oldest first
    assert [(x.seq.seq_id, x.num_tokens, x.is_decode) for x in out.chunks] == [
        (0, 1, True), (1, 1, True), (2, 1, True)]


def test_decodes_come_before_older_prefills() -> None:
    s = make(budget=6, seqs=4)
    old, young = seq(0, 20), seq(1, 2)
    s.add(young)
    s.add(old)  # arrives earlier (t=0) but was added second
    out = s.schedule()
    assert [(x.seq.seq_id, x.num_tokens) for x in out.chunks] == [(1, 2), (0, 4)]
    finish_step(out)
    out = s.schedule()
    # young decodes first even though old has priority by arrival
    assert [(x.seq.seq_id, x.num_tokens, x.is_decode) for x in out.chunks] == [
        (1, 1, True), (0, 5, False)]


def test_budget_never_exceeded_and_chunks_cover_prompt() -> None:
    s = make(budget=7, seqs=4, num_blocks=200)
    seqs = [seq(i, n) for i, n in enumerate([13, 1, 30, 7, 9, 2])]
    for q in seqs:
        s.add(q)
    covered = {q.seq_id: 0 for q in seqs}
    for _ in range(200):
        if not s.has_unfinished():
            break
        out = s.schedule()
        assert 0 < out.num_batched_tokens <= 7
        assert len(out.chunks) <= 4 and s.num_running <= 4
        for c in out.chunks:
            if not c.is_decode:
                assert c.start_pos == covered[c.seq.seq_id]
                covered[c.seq.seq_id] += c.num_tokens
        finish_step(out)
        for q in list(s.running):
            if q.num_output_tokens >= 3:
                s.finish(q)
    assert not s.has_unfinished()
    assert covered == {q.seq_id: q.num_prompt_tokens for q in seqs}
    assert s.allocator.num_free == 200


def test_max_num_seqs_limits_running() -> None:
    s = make(seqs=2, budget=64)
    for i in range(5):
        s.add(seq(i, 3))
    out = s.schedule()
    assert [c.seq.seq_id for c in out.chunks] == [0, 1]
    assert s.num_running == 2 and s.num_waiting == 3
    finish_step(out)
    s.finish(s.running[0])
    out = s.schedule()
    assert [(c.seq.seq_id, c.is_decode) for c in out.chunks] == [(1, True), (2, False)]


def test_fcfs_head_of_line_blocks_on_kv_space() -> None:
    s = make(num_blocks=4, block_size=4, budget=64)
    s.add(seq(0, 8))  # 2 blocks
    s.add(seq(1, 12))  # 3 blocks: does not fit beside seq 0
    s.add(seq(2, 4))  # 1 block: would fit, but must not jump the queue
    out = s.schedule()
    assert [c.seq.seq_id for c in out.chunks] == [0]
    assert [q.seq_id for q in s.waiting] == [1, 2]


def test_chunk_policy_caps_chunks() -> None:
    s = make(budget=64, chunk=3)
    a = seq(0, 8)
    s.add(a)
    sizes = []
    while not a.is_decoding:
        out = s.schedule()
        sizes.append([c.num_tokens for c in out.chunks])
        finish_step(out)
    assert sizes == [[3], [3], [2]]


def test_preemption_frees_blocks_and_requeues_latest_arrival() -> None:
    # 4 blocks of 2 tokens; two sequences with 3-token prompts use 2 blocks each
    s = make(num_blocks=4, block_size=2, budget=16)
    a, b = seq(0, 3), seq(1, 3)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert s.allocator.num_free == 0
    finish_step(out)  # both have 4 tokens now: decode fits in their 2nd block
    out = s.schedule()
    assert [c.seq.seq_id for c in out.chunks] == [0, 1] and not out.preempted
    finish_step(out)  # 5 tokens: A needs a 3rd block -> B (latest arrival) is preempted
    out = s.schedule()
    assert out.preempted == [b]
    assert b.status is SeqStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and s.num_preemptions_total == 1
    assert list(s.waiting) == [b]
    # B was unscheduled: only A's decode runs; nothing admitted in a preempting step
    assert [(c.seq.seq_id, c.num_tokens) for c in out.chunks] == [(0, 1)]
    assert len(a.block_table) == 3
    finish_step(out)
    s.finish(a)
    out = s.schedule()
    # recompute: B's prompt and its generated token are prefilled again
    assert [(c.seq.seq_id, c.start_pos, c.num_tokens, c.need_logits) for c in out.chunks] == [
        (1, 0, 5, True)]
    assert out.chunks[0].token_ids == [1, 2, 3, 7, 7]


def test_preempts_itself_when_it_is_the_latest() -> None:
    s = make(num_blocks=3, block_size=2, budget=16)
    a, b = seq(0, 2), seq(1, 2)
    s.add(a)
    s.add(b)
    finish_step(s.schedule())  # each holds 1 block, 1 free; each now has 3 tokens
    out = s.schedule()  # A takes the last block; B needs one -> B preempts itself
    assert out.preempted == [b]
    assert [c.seq.seq_id for c in out.chunks] == [0]
    assert s.allocator.num_free == 1


def test_preempts_already_scheduled_younger_decode_for_older_prefill() -> None:
    # old arrives first but is still prefilling (chunks of 4); young decodes and is
    # scheduled first in each step, so it must be unscheduled when old needs its blocks
    s = make(num_blocks=4, block_size=4, budget=32, chunk=4)
    old, young = seq(0, 12, t=0.0), seq(1, 2, t=1.0)
    s.add(young)
    finish_step(s.schedule())  # young: 3 tokens in 1 block
    s.add(old)
    finish_step(s.schedule())  # young decode (1 block), old 0..4 (1 block)
    finish_step(s.schedule())  # young decode, old 4..8 (2nd block); 0 blocks free after
    # young needs a 2nd block for its 5th token: it takes the last free block, then
    # old needs its 3rd block: young (latest arrival) is unscheduled and preempted
    out = s.schedule()
    assert out.preempted == [young]
    assert [(c.seq.seq_id, c.start_pos, c.num_tokens) for c in out.chunks] == [(0, 8, 4)]
    assert out.num_batched_tokens == 4
    assert len(old.block_table) == 3 and s.allocator.num_free == 1
    assert young.num_computed_tokens == 0 and young.num_tokens == 5


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        Scheduler(BlockAllocator(4), 4, max_num_seqs=8, max_num_batched_tokens=4,
                  chunk_policy=FixedChunkPolicy())
    with pytest.raises(ConfigError, match="unknown policy"):
        make_chunk_policy("adaptive-nope", 512)
    with pytest.raises(ConfigError, match="fixed:"):
        make_chunk_policy("fixed:abc", 512)
    with pytest.raises(ConfigError):
        make_chunk_policy("fixed:0", 512)
    assert make_chunk_policy("fixed:64", 512).max_chunk_tokens == 64
    assert make_chunk_policy("fixed", 512).max_chunk_tokens is None


def test_custom_policy_plugs_in() -> None:
    class Halves:
        def chunk_size(self, seq, budget_left: int) -> int:
            return max(1, seq.num_uncomputed_tokens // 2)

    register_chunk_policy("halves-test", lambda arg, budget: Halves())
    assert "halves-test" in available_chunk_policies()
    s = Scheduler(BlockAllocator(50), 4, 4, 64, make_chunk_policy("halves-test", 64))
    a = seq(0, 8)
    s.add(a)
    sizes = []
    while not a.is_decoding:
        out = s.schedule()
        sizes.append(out.chunks[0].num_tokens)
        finish_step(out)
    assert sizes == [4, 2, 1, 1]
