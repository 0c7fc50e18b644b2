"""LARS prefill ordering in the real scheduler (pure policy; a fake clock, no model)."""

from __future__ import annotations

import pytest

from charbench.engine.adaptive_chunking import AdaptiveChunkPolicy, BatchTimePredictor, IterationSample
from charbench.engine.kv_cache import BlockAllocator
from charbench.engine.lars import EdfOrder, LarsOrder, PrefillTimeCache, fixed_deadline, proportional_deadline
from charbench.engine.scheduler import Scheduler, Sequence
from charbench.errors import ConfigError

# 1 ms per prefill token and nothing else: w = 10 s is 10000 tokens, w = 0.5 s is 500
PER_TOKEN = BatchTimePredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
DEADLINES = {"long": 16.0, "short1": 1.0, "short2": 1.0}
ARRIVALS = [("long", 0, 10_000), ("short1", 5000, 500), ("short2", 5000, 500)]  # (name, arrival ms, tokens)


def _replay(order_kind: str | None) -> tuple[dict[str, float], list[list[str]]]:
    """Medha §4.1's example through Scheduler + AdaptiveChunkPolicy with a 100 ms TBT budget.

    The clock advances by each batch's predicted time (in whole ms, so arrivals at 5 s are
    seen exactly); a request leaves at its first token. Returns finish times (s) and the
    request names scheduled per iteration.
    """
    now_ms = [0]
    clock = lambda: now_ms[0] / 1000.0  # noqa: E731
    deadline_of = lambda s: DEADLINES[s.request_id]  # noqa: E731
    order = {"lars": LarsOrder(PrefillTimeCache(PER_TOKEN, step=100), deadline_of, clock),
             "edf": EdfOrder(deadline_of), None: None}[order_kind]
    policy = AdaptiveChunkPolicy(PER_TOKEN, tbt_slo_s=0.1, min_chunk=1, max_chunk=10_000, prefill_order=order)
    sched = Scheduler(BlockAllocator(2048), 16, 8, 10_000, policy)
    pending = list(ARRIVALS)
    finish: dict[str, float] = {}
    batches: list[list[str]] = []
    while len(finish) < len(ARRIVALS):
        for name, at_ms, n in [p for p in pending if p[1] <= now_ms[0]]:
            sched.add(Sequence(ARRIVALS.index((name, at_ms, n)), name, [1] * n, arrival_time_s=at_ms / 1000.0))
            pending.remove((name, at_ms, n))
        out = sched.schedule()
        assert out.chunks, "nothing scheduled while requests wait"
        batches.append([c.seq.request_id for c in out.chunks])
        tokens = sum(c.num_tokens for c in out.chunks)
        assert PER_TOKEN.predict(IterationSample(tokens, 0, 0, 0)) <= 0.1 + 1e-12  # every batch fits
        now_ms[0] += tokens  # 1 ms per token
        for c in out.chunks:
            if c.need_logits:
                finish[c.seq.request_id] = now_ms[0] / 1000.0
                sched.finish(c.seq)
    return finish, batches


def test_fcfs_convoys_the_short_requests():
    finish, _ = _replay(None)
    assert finish == pytest.approx({"long": 10.0, "short1": 10.5, "short2": 11.0})


def test_edf_serves_shorts_at_once():
    finish, batches = _replay("edf")
    assert finish == pytest.approx({"short1": 5.5, "short2": 6.0, "long": 11.0})
    assert batches[50] == ["short1"]  # the first iteration at t = 5 s


def test_lars_paper_example_in_the_scheduler():
    """Long (w=10, d=16) keeps the server while the shorts' rho > its 0.6 (which stays 0.6
    while it runs); they preempt it once theirs reaches it (t = 5.2 s: rho_short =
    (6 - 5.2 - 0.5) / 0.5; float rounding puts it just below 0.6), then share the server
    (the waiting one has the lower rho), and the long still meets its deadline."""
    finish, batches = _replay("lars")
    assert batches[:52] == [["long"]] * 52  # t = 0 .. 5.1: rho_short 1.0, 0.8 > 0.6
    start = 52
    assert batches[start:start + 10] == [["short1"], ["short2"]] * 5  # iteration i runs [i/10, (i+1)/10)
    assert all(b == ["long"] for b in batches[start + 10:])
    assert finish == pytest.approx({"short1": (start + 9) / 10, "short2": (start + 10) / 10, "long": 11.0})
    assert finish["long"] <= DEADLINES["long"]


def test_lars_rho_and_prefill_time_cache():
    pred = BatchTimePredictor([1e-3, 1e-5, 0.0, 0.0, 0.0, 0.0])  # 1 ms per 256-token chunk + 10 us/token
    times = PrefillTimeCache(pred, step=256)
    assert times.time_s(512) == pytest.approx(2 * (1e-3 + 256e-5))
    assert times.time_s(384) == pytest.approx(1.5 * (1e-3 + 256e-5))  # interpolated inside a step
    seq = Sequence(0, "r", [0] * 512, arrival_time_s=1.0)
    seq.num_computed_tokens = 256
    lars = LarsOrder(times, fixed_deadline(0.5), clock=lambda: 1.1)
    w_total, w_left = times.time_s(512), times.time_s(512) - times.time_s(256)
    assert lars.rho(seq) == pytest.approx((1.0 + 0.5 - 1.1 - w_left) / w_total)
    assert proportional_deadline(times, 3.0, 0.0)(seq) == pytest.approx(3 * w_total)
    assert proportional_deadline(times, 3.0, 1.0)(seq) == 1.0
    with pytest.raises(ConfigError, match=r"--ttft-slo-ms: must be > 0, got 0"):
        fixed_deadline(0.0)
    with pytest.raises(ConfigError, match=r"prefill-time cache: step must be >= 1, got 0"):
        PrefillTimeCache(pred, step=0)


def test_policy_without_order_keeps_fcfs_admission():
    """No prefill_order: FCFS admission; the head takes the whole 100 ms, the next waits."""
    policy = AdaptiveChunkPolicy(PER_TOKEN, tbt_slo_s=0.1, min_chunk=1, max_chunk=10_000)
    assert policy.prefill_order is None
    sched = Scheduler(BlockAllocator(8), 16, 8, 10_000, policy)
    sched.add(Sequence(0, "big", [1] * 200, 0.0))
    sched.add(Sequence(1, "small", [1] * 10, 0.0))
    out = sched.schedule()
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("big", 100)]
