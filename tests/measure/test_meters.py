"""Energy meters: arithmetic, failure modes, RAPL zones and wrap-around, composition."""

from __future__ import annotations

import time

import pytest

from charbench.errors import ConfigError, DeviceError, MeasurementError
from charbench.measure.meters import (
    CompositeMeter,
    Measurement,
    NullMeter,
    NvmlMeter,
    RaplMeter,
    integrate_power_j,
    make_meters,
)
from charbench.measure.nvml import Nvml
from charbench.measure.rapl import permission_message, rapl_available, rapl_zones
from charbench.measure.sampler import Sampler
from charbench.measure.testing import FakeClock, FakeGpu

SHORT = ("window 'w' lasted 0.05 s, shorter than the energy counter's ~0.1 s update period; "
         "lengthen it (e.g. --duration)")
NO_LIB = ("NVML unavailable: initializing NVML: libnvidia-ml.so.1 was not found "
          "(no NVIDIA driver installed?) (NVML error 12)")


def window(meter, clock_values=None, name="w"):
    meter.begin_window(name)
    return meter.end_window(name)


# -- NVML counter ----------------------------------------------------------------------------
def test_nvml_counter_energy_and_power(nvml_fake):
    # the first reading is the meter's support probe
    nvml_fake([FakeGpu(energy_mj=[5_000, 1_000_000, 1_600_000])])
    meter = NvmlMeter(clock=iter([10.0, 12.0]).__next__)
    m = window(meter)
    assert m == Measurement("w", 2.0, {"gpu0": 600.0}, {"gpu0": 300.0}, {"gpu0": "nvml-energy-counter"},
                            [], False, 10.0, 12.0)
    assert m.total_energy_j() == 600.0
    assert meter.available and meter.reason is None and meter.domains() == ["gpu0"]


def test_nvml_meter_selects_visible_gpus(nvml_fake, monkeypatch):
    clk = FakeClock(10.0)
    nvml_fake([FakeGpu(uuid="GPU-a", energy_mj=lambda: int(clk.now * 100_000)),
               FakeGpu(uuid="GPU-b", pci_bus_id="00000000:19:00.0", energy_mj=lambda: int(clk.now * 250_000))])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    meter = NvmlMeter(gpus=[0], clock=clk)
    meter.begin_window("w")
    clk.advance(2.0)
    m = meter.end_window("w")
    assert m.energy_j == {"gpu0": 500.0}  # visible gpu0 is physical GPU 1 (250 W)
    with pytest.raises(DeviceError) as info:
        NvmlMeter(gpus=[2], clock=clk)
    assert str(info.value) == "--gpus: GPU 2 is not visible; 2 visible GPU(s) (CUDA_VISIBLE_DEVICES='1,0')"


def test_nvml_counter_reset_gives_none_and_warning(nvml_fake):
    nvml_fake([FakeGpu(energy_mj=[1, 2_000_000, 500])])
    m = window(NvmlMeter(clock=iter([10.0, 12.0]).__next__))
    assert m.energy_j == {"gpu0": None} and m.avg_power_w == {"gpu0": None}
    assert m.provenance == {"gpu0": "not-measured"}
    assert m.warnings == ["gpu0: energy counter went backwards in window 'w' (2000000 mJ -> 500 mJ; "
                          "driver reloaded or GPU reset); energy not measured"]
    assert m.total_energy_j() is None


def test_nvml_read_failure_at_end_gives_none(nvml_fake):
    gpu = FakeGpu(energy_mj=[1, 1000, 2000])
    nvml_fake([gpu])
    meter = NvmlMeter(clock=iter([10.0, 12.0]).__next__)
    meter.begin_window("w")
    gpu.errors["nvmlDeviceGetTotalEnergyConsumption"] = 15
    m = meter.end_window("w")
    assert m.energy_j == {"gpu0": None}
    assert m.warnings == ["gpu0: energy counter unreadable at the end of window 'w' "
                          "(reading the energy counter: GPU is lost (NVML error 15)); energy not measured"]


def test_nvml_counter_that_does_not_advance_is_not_zero(nvml_fake):
    nvml_fake([FakeGpu(energy_mj=7000)])
    m = window(NvmlMeter(clock=iter([10.0, 10.5]).__next__))
    assert m.energy_j == {"gpu0": None}
    assert m.warnings == ["gpu0: energy counter did not advance in window 'w' (0.5 s); energy not measured"]


def test_short_window_is_flagged(nvml_fake):
    nvml_fake([FakeGpu(energy_mj=[1, 1000, 1015])])
    m = window(NvmlMeter(clock=iter([10.0, 10.05]).__next__))
    assert m.too_short is True
    assert m.warnings == [SHORT]
    assert m.energy_j == {"gpu0": pytest.approx(0.015)}


def test_short_window_without_counter_tick(nvml_fake):
    nvml_fake([FakeGpu(energy_mj=[1, 1000, 1000])])
    m = window(NvmlMeter(clock=iter([10.0, 10.05]).__next__))
    assert m.energy_j == {"gpu0": None}
    assert m.warnings == [SHORT, "gpu0: energy counter did not advance in window 'w' (0.05 s); energy not measured"]


def test_nvml_init_failure_makes_meter_unavailable(nvml_fake):
    nvml_fake(init_error=12)
    meter = NvmlMeter(gpus=[0], clock=iter([1.0, 3.0]).__next__)
    assert (meter.available, meter.reason) == (False, NO_LIB)
    m = window(meter)
    assert (m.time_s, m.energy_j, m.provenance) == (2.0, {"gpu0": None}, {"gpu0": "not-measured"})
    assert m.warnings == [f"gpu0: {NO_LIB}"]


def test_windows_nest_and_overlap(nvml_fake):
    clk = FakeClock(10.0)
    nvml_fake([FakeGpu(energy_mj=lambda: int(clk.now * 300_000))])
    meter = NvmlMeter(clock=clk)
    meter.begin_window("a")
    clk.advance(1.0)
    meter.begin_window("b")
    clk.advance(1.0)
    a = meter.end_window("a")
    clk.advance(2.0)
    b = meter.end_window("b")
    assert (a.time_s, a.energy_j["gpu0"]) == (2.0, 600.0)
    assert (b.time_s, b.energy_j["gpu0"]) == (3.0, 900.0)


def test_window_name_errors(nvml_fake):
    nvml_fake()
    meter = NvmlMeter()
    meter.begin_window("w")
    with pytest.raises(MeasurementError) as info:
        meter.begin_window("w")
    assert str(info.value) == "window 'w' is already open; end it before beginning it again"
    with pytest.raises(MeasurementError) as info:
        meter.end_window("x")
    assert str(info.value) == "window 'x' was never begun; call begin_window('x') first"


# -- power integration fallback ----------------------------------------------------------
def test_pre_volta_integrates_sampled_power_and_says_so(nvml_fake):
    gpu = FakeGpu(arch=4, name="Tesla P100-PCIE-16GB", instant_power_mw=100_000)
    nv = nvml_fake([gpu])
    clk = FakeClock(0.0)
    with Nvml() as nvml:
        sampler = Sampler(0.1, nvml=nvml, clock=clk, sources="gpu-power")
        meter = NvmlMeter(nvml=nvml, clock=clk, sampler=sampler)
        meter.begin_window("w")                    # t = 0.0
        for t, mw in [(0.05, 100_000), (0.15, 200_000), (0.25, 300_000)]:
            clk.now, gpu.instant_power_mw = t, mw
            sampler.sample_once()
        clk.now = 0.3
        m = meter.end_window("w")
    nv.nvmlDeviceGetTotalEnergyConsumption.assert_not_called()
    # held ends: 100 W x 0.05 s + 300 W x 0.05 s; trapezoids: 15 J + 25 J
    assert m.energy_j == {"gpu0": pytest.approx(60.0)}
    assert m.avg_power_w == {"gpu0": pytest.approx(200.0)}
    assert m.provenance == {"gpu0": "nvml-power-integrated"}
    assert m.warnings == ["gpu0: no NVML energy counter on Tesla P100-PCIE-16GB (needs Volta or newer); "
                          "energy integrated from sampled instant power"]


def test_integration_needs_two_samples(nvml_fake):
    nvml_fake([FakeGpu(arch=4, name="Tesla P100-PCIE-16GB")])
    clk = FakeClock(0.0)
    sampler = Sampler(0.1, clock=clk, sources="gpu-power")
    meter = NvmlMeter(clock=clk, sampler=sampler)
    meter.begin_window("w")
    clk.now = 0.1
    sampler.sample_once()
    clk.now = 0.3
    m = meter.end_window("w")
    assert m.energy_j == {"gpu0": None}
    assert m.warnings[0] == ("gpu0: 1 power sample(s) in window 'w' (0.3 s); need at least 2 to integrate; "
                             "energy not measured")


def test_pre_volta_without_sampler_polls_by_itself(nvml_fake):
    nvml_fake([FakeGpu(arch=4, name="Tesla P100-PCIE-16GB", instant_power_mw=None, power_mw=150_000)])
    meter = NvmlMeter()
    meter.begin_window("w")
    time.sleep(0.35)
    m = meter.end_window("w")
    meter.close()
    assert m.provenance == {"gpu0": "nvml-power-integrated"}
    assert m.energy_j["gpu0"] == pytest.approx(150.0 * m.time_s)  # constant power: exact for any sampling
    assert m.warnings == ["gpu0: no NVML energy counter on Tesla P100-PCIE-16GB (needs Volta or newer); "
                          "energy integrated from sampled instant power"]


def test_integrate_power_holds_the_edge_samples():
    assert integrate_power_j([(1.0, 100.0), (2.0, 300.0)], 0.5, 3.0) == 50.0 + 200.0 + 300.0


# -- RAPL --------------------------------------------------------------------------------
def test_rapl_zones_keep_only_disjoint_domains(powercap):
    powercap.add_standard(packages=2, uncore=True, psys=True)
    powercap.add_zone("intel-rapl-mmio:0", "package-0", 5)
    zones = {z.path.name: (z.name, z.domain, z.note) for z in rapl_zones(powercap.root)}
    assert zones == {
        "intel-rapl:0": ("package-0", "cpu_package0", None),
        "intel-rapl:0:0": ("core", None, "core is inside package-0; excluded to avoid double counting"),
        "intel-rapl:0:1": ("uncore", None, "uncore is inside package-0; excluded to avoid double counting"),
        "intel-rapl:0:2": ("dram", "cpu_dram0", None),
        "intel-rapl:1": ("package-1", "cpu_package1", None),
        "intel-rapl:1:0": ("core", None, "core is inside package-1; excluded to avoid double counting"),
        "intel-rapl:1:1": ("uncore", None, "uncore is inside package-1; excluded to avoid double counting"),
        "intel-rapl:1:2": ("dram", "cpu_dram1", None),
        "intel-rapl:2": ("psys", None, "psys (platform) contains the packages; excluded to avoid double counting"),
        "intel-rapl-mmio:0": ("package-0", None,
                              "intel-rapl-mmio:0 is the MMIO copy of a package zone; excluded to avoid double counting"),
    }
    assert RaplMeter(powercap.root).domains() == ["cpu_package0", "cpu_dram0", "cpu_package1", "cpu_dram1"]


def test_rapl_energy_arithmetic(powercap):
    powercap.add_standard(packages=1, psys=True)
    meter = RaplMeter(powercap.root, clock=iter([5.0, 7.0]).__next__)
    meter.begin_window("w")
    powercap.set_energy("intel-rapl:0", 1_000_000 + 90_000_000)   # +90 J
    powercap.set_energy("intel-rapl:0:2", 200_000 + 10_000_000)   # +10 J
    powercap.set_energy("intel-rapl:0:0", 999_999_999)            # core: ignored
    powercap.set_energy("intel-rapl:1", 999_999_999)              # psys: ignored
    m = meter.end_window("w")
    assert m == Measurement("w", 2.0, {"cpu_package0": 90.0, "cpu_dram0": 10.0},
                            {"cpu_package0": 45.0, "cpu_dram0": 5.0},
                            {"cpu_package0": "rapl", "cpu_dram0": "rapl"}, [], False, 5.0, 7.0)
    assert m.total_energy_j("cpu") == 100.0


def test_rapl_wraparound_uses_max_energy_range(powercap):
    powercap.add_zone("intel-rapl:0", "package-0", 900_000, max_energy_range_uj=1_000_000)
    meter = RaplMeter(powercap.root, clock=iter([0.0, 1.0]).__next__)
    meter.begin_window("w")
    powercap.set_energy("intel-rapl:0", 100_000)
    m = meter.end_window("w")
    assert m.energy_j == {"cpu_package0": pytest.approx(0.2)}  # 100_000 + 1_000_000 - 900_000 µJ
    assert m.warnings == []


def test_rapl_wrap_without_range_is_not_measured(powercap):
    powercap.add_zone("intel-rapl:0", "package-0", 900_000, max_energy_range_uj=None)
    meter = RaplMeter(powercap.root, clock=iter([0.0, 1.0]).__next__)
    meter.begin_window("w")
    powercap.set_energy("intel-rapl:0", 100_000)
    m = meter.end_window("w")
    assert m.energy_j == {"cpu_package0": None}
    assert m.warnings == ["cpu_package0: RAPL counter wrapped in window 'w' and max_energy_range_uj is "
                          "unreadable; energy not measured"]


def test_rapl_permission_denied_names_the_fix(powercap):
    powercap.add_standard(packages=1)
    powercap.deny("intel-rapl:0")
    powercap.deny("intel-rapl:0:2")
    path = powercap.root / "intel-rapl:0" / "energy_uj"
    expected = (
        f"cannot read {path}: permission denied. Since Linux 5.10 energy_uj is readable only by root "
        f"(CVE-2020-8694). Fix: run as root, or `sudo chmod a+r {powercap.root}/intel-rapl:*/energy_uj` "
        "(lasts until reboot), or make it permanent with a udev rule or a sysfs.conf line "
        "`mode class/powercap/intel-rapl:0/energy_uj = 0444`"
    )
    assert permission_message(path, powercap.root) == expected
    assert rapl_available(powercap.root) == (False, expected)
    meter, notes = make_meters("cpu", rapl_root=powercap.root)
    assert notes == [f"CPU energy not measured: {expected}"]
    m = window(meter)
    assert m.energy_j == {"cpu_package0": None, "cpu_dram0": None}
    assert m.provenance == {"cpu_package0": "not-measured", "cpu_dram0": "not-measured"}
    assert m.warnings[0] == f"cpu_package0: {expected}"


def test_rapl_missing_tree(tmp_path):
    root = tmp_path / "none"
    assert rapl_zones(root) == []
    reason = (f"no RAPL package zones under {root} (not a Linux host with Intel/AMD RAPL, or the "
              "container masks /sys/devices/virtual/powercap)")
    assert rapl_available(root) == (False, reason)
    meter, notes = make_meters("cpu", rapl_root=root)
    assert notes == [f"CPU energy not measured: {reason}"]
    m = window(meter)
    assert m.energy_j == {"cpu_package0": None}
    assert m.warnings == [f"cpu_package0: CPU energy not measured: {reason}"]


# -- composition ----------------------------------------------------------------------------
def test_make_meters_cuda_merges_nvml_and_rapl(nvml_fake, powercap):
    clk = FakeClock(10.0)
    nvml_fake([FakeGpu(energy_mj=lambda: int(clk.now * 300_000))])
    powercap.add_standard(packages=1, dram=False)
    meter, notes = make_meters("cuda:0", rapl_root=powercap.root, clock=clk)
    assert notes == []
    assert meter.domains() == ["gpu0", "cpu_package0"]
    meter.begin_window("w")
    clk.advance(2.0)
    powercap.set_energy("intel-rapl:0", 1_000_000 + 100_000_000)
    m = meter.end_window("w")
    assert m.energy_j == {"gpu0": 600.0, "cpu_package0": 100.0}
    assert m.avg_power_w == {"gpu0": 300.0, "cpu_package0": 50.0}
    assert m.provenance == {"gpu0": "nvml-energy-counter", "cpu_package0": "rapl"}
    assert (m.time_s, m.total_energy_j("gpu"), m.total_energy_j("cpu")) == (2.0, 600.0, 100.0)


def test_make_meters_without_nvml_uses_null_meter(nvml_fake, tmp_path):
    nvml_fake(init_error=12)
    meter, notes = make_meters("cuda:1", rapl_root=tmp_path / "none")
    assert notes[0] == f"GPU energy not measured: {NO_LIB}"
    assert notes[1].startswith("CPU energy not measured: no RAPL package zones under ")
    assert not meter.available and meter.reason == f"GPU energy not measured: {NO_LIB}"
    m = window(meter)
    assert (m.energy_j, m.provenance) == ({"gpu1": None}, {"gpu1": "not-measured"})
    assert m.warnings == [f"gpu1: GPU energy not measured: {NO_LIB}"]


def test_make_meters_rejects_bad_devices(nvml_fake, tmp_path):
    for bad in ("tpu", "cpu:1", "cuda:x"):
        with pytest.raises(ConfigError) as info:
            make_meters(bad, rapl_root=tmp_path)
        assert str(info.value) == f"--device: unknown device '{bad}'; valid: cpu, cuda, cuda:<index>"
    nvml_fake()
    with pytest.raises(DeviceError, match=r"^--gpus: GPU 1 is not visible; 1 visible GPU\(s\)"):
        make_meters("cuda:1", rapl_root=tmp_path)


def test_composite_rejects_duplicate_window_and_stays_usable():
    clk = FakeClock(0.0)
    meter = CompositeMeter([NullMeter(["gpu0"], "no NVML", clk), NullMeter(["cpu_package0"], "no RAPL", clk)])
    meter.begin_window("w")
    with pytest.raises(MeasurementError):
        meter.begin_window("w")
    clk.advance(1.5)
    m = meter.end_window("w")
    assert (m.time_s, m.energy_j) == (1.5, {"gpu0": None, "cpu_package0": None})
    assert m.warnings == ["gpu0: no NVML", "cpu_package0: no RAPL"]
    assert m.total_energy_j("gpu") is None and m.total_energy_j("xpu") is None


def test_total_energy_sums_prefix():
    m = Measurement("w", 1.0, {"gpu0": 1.0, "gpu1": 2.5, "cpu_package0": None}, {}, {})
    assert m.total_energy_j() == 3.5
    assert m.total_energy_j("cpu") is None
