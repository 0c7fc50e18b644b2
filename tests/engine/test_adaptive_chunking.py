"""Adaptive chunking, LARS ordering and the Sarathi baselines (pure policy, no model)."""

from __future__ import annotations

import json

import pytest

from charbench.engine.adaptive_chunking import (
    AdaptiveChunkPolicy,
    BatchTimePredictor,
    IterationSample,
    SimRequest,
    StaticDecreasingPolicy,
    largest_fitting,
    simulate_prefills,
)
from charbench.engine.chunking import make_chunk_policy
from charbench.engine.kv_cache import BlockAllocator
from charbench.engine.scheduler import Scheduler, Sequence
from charbench.errors import ConfigError

# Vidur-like costs: 1 ms fixed, 20 us/prefill token, 5 ns per token x context, 2 ns chunk^2,
# 0.1 ms per decode, 2 ns per decode KV token.
TRUE = [1e-3, 2e-5, 5e-9, 2e-9, 1e-4, 2e-9]


class _Seq:
    def __init__(self, total: int, computed: int) -> None:
        self.num_tokens, self.num_computed_tokens = total, computed

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens


def _samples() -> list[IterationSample]:
    truth = BatchTimePredictor(TRUE)
    out = []
    for chunk in (0, 64, 256, 1024, 2048):
        for ctx in (0, 4096, 16384):
            for nd, kv in ((0, 0), (4, 500), (8, 3000), (2, 9000)):
                s = IterationSample(chunk, ctx, nd, nd * kv)
                out.append(IterationSample(chunk, ctx, nd, nd * kv, truth.predict(s)))
    return out


def test_fit_recovers_coefficients_and_roundtrips(tmp_path):
    pred = BatchTimePredictor.fit(_samples())
    assert pred.coef == pytest.approx(TRUE, rel=1e-6, abs=1e-12)
    path = tmp_path / "p.json"
    pred.save(path)
    assert BatchTimePredictor.load(path).coef == pred.coef
    path.write_text(json.dumps({"features": ["x"], "coef": [1.0]}))
    with pytest.raises(ConfigError, match=r"--chunk adaptive: predictor .* has features \['x'\], expected"):
        BatchTimePredictor.load(path)
    with pytest.raises(ConfigError, match=r"predictor: need >= 6 profiled iterations with times, got 2"):
        BatchTimePredictor.fit(_samples()[:2])


def test_fit_drops_negative_terms():
    samples = [IterationSample(c, 0, 0, 0, 1e-3 + 1e-5 * c - 0.0 * c * c) for c in (1, 2, 4, 8, 16, 32, 64)]
    pred = BatchTimePredictor.fit(samples)
    assert all(c >= 0 for c in pred.coef)


def test_chunks_never_grow_with_kv_and_every_batch_fits():
    pred = BatchTimePredictor(TRUE)
    policy = AdaptiveChunkPolicy(pred, tbt_slo_s=0.05, min_chunk=32, max_chunk=8192)
    decodes = [_Seq(1000, 999) for _ in range(8)]
    seq = _Seq(262144, 0)
    chunks = []
    while seq.num_uncomputed_tokens and len(chunks) < 2000:
        policy.begin_batch(decodes)
        n = policy.chunk_size(seq, budget_left=16384)
        if n == 0:
            break
        policy.begin_batch(decodes)
        assert policy.batch_time(n, seq.num_computed_tokens) <= 0.05
        if n < seq.num_uncomputed_tokens:  # the largest: one more token would not fit (or hits a cap)
            assert n == 8192 or policy.batch_time(n + 1, seq.num_computed_tokens) > 0.05
        chunks.append(n)
        seq.num_computed_tokens += n
    assert len(chunks) > 10
    assert all(b <= a for a, b in zip(chunks, chunks[1:-1]))  # the final chunk is the remainder
    assert chunks[0] > 4 * chunks[-2]
    assert [c for _, c in policy.history] == chunks


def test_in_the_scheduler_chunks_shrink_and_every_batch_fits():
    """8 running decodes + a 60K prefill through Scheduler: decodes first in every batch,
    the prefill's chunks never grow as its KV grows, and each batch's predicted time (its
    real decode KV lengths) is within the SLO."""
    pred = BatchTimePredictor(TRUE)
    policy = AdaptiveChunkPolicy(pred, tbt_slo_s=0.05, min_chunk=32, max_chunk=8192)
    sched = Scheduler(BlockAllocator(8192), 16, 16, 8192, policy)
    decodes = [Sequence(i, f"d{i}", [1] * 100, arrival_time_s=0.0) for i in range(8)]
    for d in decodes:
        sched.add(d)
    sched.schedule()
    for d in decodes:
        d.append_token(1)
    sched.add(Sequence(99, "long", [1] * 60_000, arrival_time_s=1.0))
    chunks = []
    while True:
        out = sched.schedule()
        assert [c.is_decode for c in out.chunks[:8]] == [True] * 8
        pre = [c for c in out.chunks if not c.is_decode]
        dec_kv = sum(c.start_pos + 1 for c in out.chunks if c.is_decode)
        n = pre[0].num_tokens if pre else 0
        ctx = pre[0].start_pos if pre else 0
        assert pred.predict(IterationSample(n, ctx, 8, dec_kv)) <= 0.05
        for c in out.chunks:
            if c.is_decode:
                c.seq.append_token(1)
        if not pre:
            break
        chunks.append(n)
        if pre[0].need_logits:
            break
    assert sum(chunks) == 60_000 and len(chunks) > 10
    assert all(b <= a for a, b in zip(chunks, chunks[1:-1]))  # the last chunk is the remainder
    assert chunks[0] > 3 * chunks[-2]


def test_adaptive_waits_when_nothing_fits():
    policy = AdaptiveChunkPolicy(BatchTimePredictor(TRUE), tbt_slo_s=0.0015, min_chunk=32)
    policy.begin_batch([_Seq(1000, 999)] * 8)  # 8 decodes alone take 1.816 ms > 1.5 ms
    assert policy.chunk_size(_Seq(5000, 0), budget_left=4096) == 0


def test_slack_shrinks_budget():
    pred = BatchTimePredictor(TRUE)
    tight = AdaptiveChunkPolicy(pred, 0.05)
    slack = AdaptiveChunkPolicy(pred, 0.05, slack_of=lambda s: 0.9)  # clamped to 0.4
    assert slack.budget_s(_Seq(10, 0)) == pytest.approx(0.03)
    tight.begin_batch([])
    slack.begin_batch([])
    assert slack.chunk_size(_Seq(10**6, 0), 10**5) < tight.chunk_size(_Seq(10**6, 0), 10**5)


def test_one_long_prefill_per_batch():
    """Alg. 2: a second long prefill in the same batch gets no chunk; short ones still do."""
    policy = AdaptiveChunkPolicy(BatchTimePredictor(TRUE), tbt_slo_s=0.5, long_prefill_tokens=10_000)
    policy.begin_batch([])
    assert policy.chunk_size(_Seq(50_000, 0), 1000) == 1000
    assert policy.chunk_size(_Seq(20_000, 0), 1000) == 0
    assert policy.chunk_size(_Seq(500, 0), 1000) == 500
    policy.begin_batch([])
    assert policy.chunk_size(_Seq(20_000, 0), 1000) == 1000  # a new batch
    with pytest.raises(ConfigError, match=r"--chunk adaptive: long prefill threshold must be >= 1 token, got 0"):
        AdaptiveChunkPolicy(BatchTimePredictor(TRUE), 0.5, long_prefill_tokens=0)


def test_online_correction_scales_the_model_to_measured_iterations():
    pred = BatchTimePredictor(TRUE)
    policy = AdaptiveChunkPolicy(pred, tbt_slo_s=0.05, online_correction=0.5)
    decodes = [_Seq(1000, 999)] * 8
    policy.begin_batch(decodes)
    n0 = policy.chunk_size(_Seq(100_000, 20_000), 8192)
    planned = pred.predict(IterationSample(n0, 20_000, 8, 8000))
    policy.observe_iteration(3 * planned)  # the machine runs 3x slower than profiled
    assert policy.correction == pytest.approx(0.5 + 0.5 * 3)
    policy.begin_batch(decodes)
    n1 = policy.chunk_size(_Seq(100_000, 20_000), 8192)
    policy.begin_batch(decodes)
    assert n1 < n0 and policy.batch_time(n1, 20_000) <= 0.05 < policy.batch_time(n1 + 1, 20_000)
    policy.begin_batch(decodes)  # a decode-only batch says nothing about chunks
    policy.observe_iteration(100.0)
    assert policy.correction == pytest.approx(2.0)
    off = AdaptiveChunkPolicy(pred, tbt_slo_s=0.05)
    off.begin_batch(decodes)
    off.chunk_size(_Seq(100_000, 20_000), 8192)
    off.observe_iteration(1.0)
    assert off.correction == 1.0
    with pytest.raises(ConfigError, match=r"--chunk adaptive: online correction weight must be in \[0, 1\), got 1"):
        AdaptiveChunkPolicy(pred, 0.05, online_correction=1.0)


def test_largest_fitting_is_exact():
    assert largest_fitting(lambda n: n <= 777, 32, 4096) == 777
    assert largest_fitting(lambda n: n <= 10, 32, 4096) == 0
    assert largest_fitting(lambda n: True, 32, 100) == 100


def test_static_decreasing_schedule_and_spec():
    p = StaticDecreasingPolicy(2048, 256, 8, 32768)
    assert p.schedule == [2048, 1792, 1536, 1280, 1024, 768, 512, 256]
    assert p.chunk_size(_Seq(40000, 0), 10000) == 2048
    assert p.chunk_size(_Seq(40000, 4096), 10000) == 1792
    assert p.chunk_size(_Seq(40000, 39000), 10000) == 256
    assert p.chunk_size(_Seq(40000, 39990), 10000) == 10
    assert make_chunk_policy("static-decreasing:1024:128:4:8192", 4096).schedule == [1024, 725, 427, 128]
    with pytest.raises(ConfigError, match=r"--chunk static-decreasing:1:2: expected 4 integers MAX:MIN:STAGES:SPAN"):
        make_chunk_policy("static-decreasing:1:2", 4096)


def test_adaptive_spec_loads_predictor(tmp_path):
    path = tmp_path / "pred.json"
    BatchTimePredictor(TRUE).save(path)
    pol = make_chunk_policy(f"adaptive:{path}@50", 4096)
    assert isinstance(pol, AdaptiveChunkPolicy) and pol.tbt_slo_s == 0.05 and pol.max_chunk == 4096
    with pytest.raises(ConfigError, match=r"--chunk adaptive: the engine spec is 'adaptive:PREDICTOR.json@SLO_MS'"):
        make_chunk_policy("adaptive", 4096)


def test_scheduler_calls_begin_batch_with_decodes():
    policy = AdaptiveChunkPolicy(BatchTimePredictor(TRUE), tbt_slo_s=0.01, min_chunk=8, max_chunk=4096)
    sched = Scheduler(BlockAllocator(4096), 16, 8, 8192, policy)
    short = Sequence(0, "s", list(range(4)), arrival_time_s=0.0)
    sched.add(short)
    sched.schedule()
    short.append_token(1)
    sched.add(Sequence(1, "long", list(range(20000)), arrival_time_s=1.0))
    out = sched.schedule()
    assert [c.num_tokens for c in out.chunks][0] == 1
    # 1 decode at 5 tokens, 10 ms budget: 1.1 ms + 20 us c + 7 ns c^2 <= 10 ms gives c = 391
    expected = largest_fitting(lambda c: BatchTimePredictor(TRUE).predict(IterationSample(c, 0, 1, 5)) <= 0.01, 8, 4096)
    assert out.chunks[1].num_tokens == expected == 391


LARS = [SimRequest("long", 0.0, 10.0, 16.0), SimRequest("short1", 5.0, 0.5, 1.0), SimRequest("short2", 5.0, 0.5, 1.0)]


def test_lars_paper_example():
    """Medha §4.1: a long request (w=10, d=16) and two shorts (w=0.5, d=1) arriving at t=5."""
    fcfs = {r.name: r.finish_s for r in simulate_prefills(LARS, "fcfs")}
    assert fcfs == pytest.approx({"long": 10.0, "short1": 10.5, "short2": 11.0})  # convoy
    edf = {r.name: r.finish_s for r in simulate_prefills(LARS, "edf")}
    assert edf == pytest.approx({"short1": 5.5, "short2": 6.0, "long": 11.0})
    lars = {r.name: r.finish_s for r in simulate_prefills(LARS, "lars")}
    # the long keeps running while the shorts' rho > its 0.6; they preempt at t = 5.2
    # (rho_short = (5.5 - t) / 0.5 drops below 0.6), then share the server (whichever waits
    # has the lower rho) and finish 1.0 s of work by 6.2; the long still meets its deadline
    assert lars == pytest.approx({"short1": 6.2, "short2": 6.2, "long": 11.0}, abs=0.011)
    assert lars["long"] <= 16.0


def test_engine_reports_each_iteration_time_to_the_policy():
    from charbench.engine.api import EngineConfig, SamplingParams
    from charbench.engine.chunking import FixedChunkPolicy
    from charbench.engine.engine import LLMEngine

    class Recording(FixedChunkPolicy):
        def __init__(self) -> None:
            super().__init__(8)
            self.seen: list[float] = []

        def observe_iteration(self, elapsed_s: float) -> None:
            self.seen.append(elapsed_s)

    policy = Recording()
    eng = LLMEngine(EngineConfig(model="tiny", kv_cache_gb=0.01, max_num_seqs=2, max_num_batched_tokens=16),
                    chunk_policy=policy)
    try:
        eng.add_request("r", list(range(20)), SamplingParams(max_tokens=3, ignore_eos=True))
        steps = 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
    finally:
        eng.shutdown()
    assert steps == 5  # 8 + 8 + 4 prompt tokens (the last chunk samples), then 2 decodes
    assert len(policy.seen) == 5 and all(t > 0 for t in policy.seen)
