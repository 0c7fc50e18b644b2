"""Timer: statistics, discarded warm-up, the calibrated run-for-at-least loop."""

from __future__ import annotations

import statistics
import sys
from types import SimpleNamespace

import pytest

from charbench.errors import ConfigError, DeviceError
from charbench.measure.testing import FakeClock
from charbench.measure.timer import LoopResult, Timer, TimingStats


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def test_time_statistics_exact():
    calls = []
    timer = Timer("cpu", clock=iter([0.0, 1.0, 1.0, 3.0, 3.0, 3.5]).__next__)
    stats = timer.time(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5  # 2 discarded warm-up calls + 3 timed
    assert stats == TimingStats(3, 1.0, pytest.approx(7 / 6), 0.5, 2.0,
                                pytest.approx(statistics.stdev([1.0, 2.0, 0.5])), [1.0, 2.0, 0.5])


def test_single_repeat_has_no_stdev():
    stats = Timer("cpu", clock=iter([0.0, 0.25]).__next__).time(lambda: None, warmup=0, repeats=1)
    assert (stats.median_s, stats.stdev_s) == (0.25, None)


def test_run_for_at_least_calibrates_batches():
    clk = FakeClock(0.0)
    events = []
    op_s = 2.0**-10  # exact in binary, so the arithmetic below is exact

    def op():
        events.append("op")
        clk.advance(op_s)

    result = Timer("cpu", clock=clk).run_for_at_least(
        op, 0.25, warmup=3, on_start=lambda: events.append("start"), on_end=lambda: events.append("end"))
    # batches 1, 2, then 4 (the first batch >= 1% of 0.25 s) until 0.25 s: 1 + 2 + 4*64 iterations
    assert result == LoopResult(259, 259 * op_s, op_s, 3 * op_s, 262 * op_s, 66)
    assert events[:4] == ["op", "op", "op", "start"] and events[-1] == "end"
    assert events.count("op") == 3 + 259


def test_run_for_at_least_fixed_check_every():
    clk = FakeClock(0.0)
    result = Timer("cpu", clock=clk).run_for_at_least(lambda: clk.advance(2.0**-10), 0.25,
                                                      warmup=0, check_every=10)
    assert (result.iterations, result.checks) == (260, 26)


def test_run_for_at_least_real_clock():
    result = Timer("cpu").run_for_at_least(lambda: sum(range(100)), 0.05)
    assert result.elapsed_s >= 0.05
    assert result.iterations > 10
    assert result.per_iter_s == pytest.approx(result.elapsed_s / result.iterations)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.time(lambda: None, repeats=0), "--repeats must be >= 1, got 0"),
        (lambda t: t.time(lambda: None, warmup=-1), "--warmup must be >= 0, got -1"),
        (lambda t: t.run_for_at_least(lambda: None, 0), "--duration must be > 0 s, got 0"),
        (lambda t: t.run_for_at_least(lambda: None, 1.0, check_every=0), "check_every must be >= 1, got 0"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ConfigError) as info:
        call(Timer("cpu"))
    assert str(info.value) == message


def test_bad_device():
    with pytest.raises(ConfigError) as info:
        Timer("gpu")
    assert str(info.value) == "--device: unknown device 'gpu'; valid: cpu, cuda, cuda:<index>"


def test_cuda_timer_without_cuda(monkeypatch):
    # a stand-in torch without CUDA (importing the real one costs seconds)
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    with pytest.raises(DeviceError) as info:
        Timer("cuda:0")
    assert str(info.value) == ("--device cuda:0: CUDA is not available (torch.cuda.is_available() is False); "
                               "use --device cpu or install a CUDA build of torch")


@pytest.mark.gpu
def test_cuda_timer_syncs_and_uses_events():
    if not cuda_available():
        pytest.skip("needs CUDA")
    import torch

    a = torch.randn(2048, 2048, device="cuda")
    timer = Timer("cuda:0")
    stats = timer.time(lambda: a @ a, warmup=2, repeats=5)
    assert 0 < stats.min_s <= stats.median_s <= stats.max_s < 1.0
    loop = timer.run_for_at_least(lambda: a @ a, 0.2)
    assert loop.elapsed_s >= 0.2
    # the loop's per-iteration time agrees with the event timing within 25%
    assert loop.per_iter_s == pytest.approx(stats.median_s, rel=0.25)
