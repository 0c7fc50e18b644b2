"""Chunk schedules of the long prompt: adaptive chunks never grow as the KV grows and fit the budget."""

from __future__ import annotations

import pytest
from charbench.engine.adaptive_chunking import BatchTimePredictor, IterationSample
from charbench.errors import ConfigError
from charbench.workloads.long_context.schedule import chunk_schedule

#: 1 ms fixed, 10 us per prefill token, 1 ns per chunk x context, 0.1 ms per decode
PRED = BatchTimePredictor([1e-3, 1e-5, 1e-9, 0.0, 1e-4, 0.0])


def test_adaptive_chunks_shrink_with_kv_and_fit_the_budget() -> None:
    s = chunk_schedule("adaptive", 20000, [64] * 8, PRED, tbt_slo_s=0.02, min_chunk=32, max_chunk=8192)
    assert sum(s.chunks) == 20000 and s.over_budget == 0
    full = s.chunks[:-1]  # the last chunk is what is left
    assert all(a >= b for a, b in zip(full, full[1:]))
    assert full[0] > full[-1]
    for n, k in zip(s.chunks, s.contexts):
        assert PRED.predict(IterationSample(n, k, 8, 0)) <= 0.02 + 1e-12
    # the first chunk is the largest n with 1e-3 + 1e-5 n + 1e-9 n^2 + 8e-4 <= 0.02 (hand-solved: 1e-9 n^2 + 1e-5 n = 0.0182, n = 1572.6)
    assert s.chunks[0] == 1572 and s.contexts[:2] == [0, 1572]
    assert s.predicted_s[0] == pytest.approx(PRED.predict(IterationSample(1572, 0, 8, 8 * 64)))


def test_adaptive_takes_the_minimum_chunk_when_nothing_fits() -> None:
    slow = BatchTimePredictor([0.05, 1e-5, 0.0, 0.0, 0.0, 0.0])  # 50 ms before any token
    s = chunk_schedule("adaptive", 100, [10], slow, tbt_slo_s=0.02, min_chunk=32)
    assert s.chunks == [32, 32, 32, 4] and s.over_budget == 4


def test_fixed_and_static_decreasing() -> None:
    assert chunk_schedule("fixed:512", 1300, [64] * 8).chunks == [512, 512, 276]
    s = chunk_schedule("static-decreasing:1024:256:4:3072", 4096, [])
    # stage = computed x 4 // 3072: 0 -> 1024, 1024 -> 768, 1792 -> 512, from 2304 on the last stage's 256
    assert s.chunks == [1024, 768, 512] + [256] * 7
    assert s.predicted_s == [None] * len(s.chunks)


def test_adaptive_needs_the_predictor() -> None:
    with pytest.raises(ConfigError) as e:
        chunk_schedule("adaptive", 100, [])
    assert str(e.value) == "--chunk adaptive: needs the fitted batch-time predictor and --tbt-slo-ms"
