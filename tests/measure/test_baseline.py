"""Idle baseline and net energy."""

from __future__ import annotations

import pytest

from charbench.errors import ConfigError
from charbench.measure.baseline import IdleBaseline, measure_idle_baseline, net_energy_j
from charbench.measure.meters import Measurement, NvmlMeter
from charbench.measure.testing import FakeClock, FakeGpu, FakeMeter


def test_idle_baseline_from_a_meter():
    clk = FakeClock(10.0)
    meter = FakeMeter({"gpu0": 60.0, "cpu_package0": None}, clock=clk)
    baseline = measure_idle_baseline(meter, 5.0, sleep=clk.sleep)
    assert baseline == IdleBaseline(5.0, {"gpu0": 60.0, "cpu_package0": None},
                                    {"gpu0": "fake", "cpu_package0": "not-measured"},
                                    ["cpu_package0: not measured (fake)"])
    assert baseline.to_record() == {"idle_baseline_s": 5.0, "idle_gpu0_power_w": 60.0,
                                    "idle_cpu_package0_power_w": None}
    m = Measurement("p", 10.0, {"gpu0": 1000.0, "cpu_package0": 50.0}, {}, {})
    assert baseline.net(m) == {"gpu0": 400.0, "cpu_package0": None}


def test_idle_baseline_with_nvml_counter(nvml_fake):
    clk = FakeClock(0.0)
    nvml_fake([FakeGpu(energy_mj=lambda: int(1_000_000 + clk.now * 72_000))])  # 72 W idle
    baseline = measure_idle_baseline(NvmlMeter(clock=clk), 2.5, sleep=clk.sleep)
    assert baseline.power_w == {"gpu0": 72.0}
    assert baseline.provenance == {"gpu0": "nvml-energy-counter"}
    assert baseline.warnings == []


def test_short_baseline_is_flagged():
    clk = FakeClock(0.0)
    baseline = measure_idle_baseline(FakeMeter({"gpu0": 50.0}, clock=clk), 0.5, sleep=clk.sleep)
    assert baseline.warnings == ["idle baseline lasted 0.5 s; use at least 1 s (several seconds) for a stable "
                                 "idle power"]


def test_window_is_closed_when_the_sleep_is_interrupted():
    clk = FakeClock(0.0)
    meter = FakeMeter({"gpu0": 50.0}, clock=clk)

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_idle_baseline(meter, 3.0, sleep=interrupted)
    meter.begin_window("idle-baseline")  # would fail on a real meter if left open


def test_bad_duration():
    with pytest.raises(ConfigError, match=r"^idle baseline duration must be > 0 s, got 0$"):
        measure_idle_baseline(FakeMeter({}), 0)


@pytest.mark.parametrize(
    ("gross", "power", "time_s", "net"),
    [(500.0, 50.0, 4.0, 300.0), (None, 50.0, 4.0, None), (500.0, None, 4.0, None), (100.0, 50.0, 4.0, -100.0)],
)
def test_net_energy(gross, power, time_s, net):
    assert net_energy_j(gross, power, time_s) == net
