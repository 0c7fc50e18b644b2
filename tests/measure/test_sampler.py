"""Background sampler: row contents, scheduling on a fake clock, summaries, the real thread."""

from __future__ import annotations

import time

import pytest

from charbench.errors import ConfigError
from charbench.measure.sampler import Sampler
from charbench.measure.testing import FakeClock, FakeGpu


def test_sample_once_row(nvml_fake, powercap):
    nvml_fake([FakeGpu(throttle_mask=0x4 | 0x1)])
    powercap.add_standard(packages=1)
    clk = FakeClock(100.0)
    sampler = Sampler(0.1, clock=clk, rapl_root=powercap.root)
    first = sampler.sample_once()
    clk.advance(0.5)
    powercap.set_energy("intel-rapl:0", 1_000_000 + 40_000_000)   # 40 J in 0.5 s
    powercap.set_energy("intel-rapl:0:2", 200_000 + 5_000_000)    # 5 J in 0.5 s
    second = sampler.sample_once()
    assert first == {
        "t_s": 100.0,
        "gpu0_power_w": 310.0, "gpu0_power_kind": "instant",
        "gpu0_sm_clock_mhz": 1980, "gpu0_mem_clock_mhz": 2619,
        "gpu0_temp_c": 45,
        "gpu0_util_pct": 100, "gpu0_mem_util_pct": 40,
        "gpu0_throttle_mask": 5, "gpu0_throttle_reasons": "GpuIdle;SwPowerCap",
        "cpu_package_power_w": None, "cpu_dram_power_w": None,   # no previous reading yet
    }
    assert second["t_s"] == 100.5
    assert second["cpu_package_power_w"] == pytest.approx(80.0)
    assert second["cpu_dram_power_w"] == pytest.approx(10.0)
    assert sampler.rows() == [first, second]
    assert sampler.notes == []


def test_unsupported_metrics_are_left_out_and_failures_are_none(nvml_fake, tmp_path):
    gpu = FakeGpu(errors={"nvmlDeviceGetTemperature": 3, "nvmlDeviceGetUtilizationRates": 999})
    nv = nvml_fake([gpu])
    sampler = Sampler(0.1, clock=FakeClock(0.0), rapl_root=tmp_path)
    row = sampler.sample_once()
    sampler.sample_once()
    assert "gpu0_temp_c" not in row
    assert row["gpu0_util_pct"] is None and row["gpu0_mem_util_pct"] is None
    assert nv.nvmlDeviceGetTemperature.call_count == 1    # not retried after NOT_SUPPORTED
    assert nv.nvmlDeviceGetUtilizationRates.call_count == 2
    assert sampler.notes == [
        "gpu0_temp: not sampled (reading the temperature: not supported on this GPU (NVML error 3))",
        "gpu0_util: read failed at least once (reading utilization: Unknown Error (NVML error 999))",
    ]


def test_loop_samples_every_interval_on_the_fake_clock(nvml_fake, tmp_path):
    nvml_fake()
    clk = FakeClock(10.0)
    sampler = Sampler(0.1, clock=clk, rapl_root=tmp_path, wait=clk.waiter(stop_after=5))
    sampler._loop()  # run the thread body synchronously
    times = [row["t_s"] for row in sampler.rows()]
    assert times == pytest.approx([10.0, 10.1, 10.2, 10.3, 10.4])


def test_loop_skips_missed_ticks_instead_of_bursting(tmp_path):
    clk = FakeClock(0.0)
    waits: list[float] = []

    def wait(timeout: float) -> bool:
        waits.append(round(timeout, 9))
        clk.advance(timeout)
        return len(waits) >= 3

    sampler = Sampler(0.1, clock=clk, sources="none", wait=wait)
    real_sample = sampler.sample_once

    def slow_sample():  # the second sample takes 0.25 s
        row = real_sample()
        if len(sampler.rows()) == 2:
            clk.advance(0.25)
        return row

    sampler.sample_once = slow_sample
    sampler._loop()
    assert [r["t_s"] for r in sampler.rows()] == pytest.approx([0.0, 0.1, 0.4])
    assert waits == [0.1, 0.05, 0.1]  # after the slow sample: next deadline 0.4, not 0.2


def test_summarize_window(nvml_fake, tmp_path):
    gpu = FakeGpu()
    nvml_fake([gpu])
    clk = FakeClock(0.0)
    sampler = Sampler(0.1, clock=clk, rapl_root=tmp_path)
    for t, watts, temp, mask in [(0.0, 500, 40, 0), (0.1, 100, 41, 0x4), (0.2, 200, 47, 0x40),
                                 (0.3, 300, 44, 0x4 | 0x1), (0.4, 400, 43, 0), (0.5, 900, 90, 0x8)]:
        clk.now, gpu.instant_power_mw, gpu.temp_c, gpu.throttle_mask = t, watts * 1000, temp, mask
        gpu.sm_clock_mhz = 1000 + int(t * 1000)
        sampler.sample_once()
    s = sampler.summarize(0.1, 0.4)
    assert s == {
        "sample_count": 4,
        "mean_gpu0_power_w": 250.0,
        "p50_gpu0_power_w": 250.0,
        "p95_gpu0_power_w": pytest.approx(385.0),
        "gpu0_power_kind": "instant",
        "mean_gpu0_sm_clock_mhz": 1250.0,
        "mean_gpu0_mem_clock_mhz": 2619.0,
        "mean_gpu0_util_pct": 100.0,
        "max_gpu0_temp_c": 47,
        "gpu0_throttle_reasons": "GpuIdle;SwPowerCap;HwThermalSlowdown",
    }
    assert sampler.summarize(5.0, 6.0) == {}


def test_sources_none_and_bad_arguments(nvml_fake):
    nv = nvml_fake()
    sampler = Sampler(0.1, clock=FakeClock(3.0), sources="none")
    assert sampler.sample_once() == {"t_s": 3.0}
    nv.nvmlInit.assert_not_called()
    with pytest.raises(ConfigError, match=r"^sampler interval must be > 0 s, got 0$"):
        Sampler(0)
    with pytest.raises(ConfigError, match="sampler sources must be"):
        Sampler(0.1, sources="all")  # type: ignore[arg-type]


def test_without_nvml_gpus_are_not_sampled(nvml_fake, tmp_path):
    nvml_fake(init_error=9)
    sampler = Sampler(0.1, gpus=[0], clock=FakeClock(1.0), rapl_root=tmp_path)
    assert sampler.sample_once() == {"t_s": 1.0}
    assert sampler.notes == ["GPU telemetry not sampled: initializing NVML: the NVIDIA driver is not loaded "
                             "(NVML error 9)"]


def test_real_thread_samples_at_about_the_interval(nvml_fake, tmp_path):
    nv = nvml_fake()
    with Sampler(0.02, rapl_root=tmp_path) as sampler:
        time.sleep(0.25)
        assert sampler.running
    assert not sampler.running
    rows = sampler.rows()
    assert 8 <= len(rows) <= 15
    gaps = [b["t_s"] - a["t_s"] for a, b in zip(rows, rows[1:])]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.02, abs=0.008)
    assert nv.nvmlShutdown.call_count == 1  # NVML released on stop


def test_auto_backend_stays_in_process_for_fakes_and_custom_clocks(tmp_path, nvml_fake, powercap):
    assert Sampler(0.05, rapl_root=str(tmp_path)).backend == "thread"  # the fake RAPL reader is active
    nvml_fake()
    assert Sampler(0.05, rapl_root=str(tmp_path)).backend == "thread"  # and a fake NVML
    with pytest.raises(ConfigError, match="the process sampler needs the default clock"):
        Sampler(0.05, clock=FakeClock(), backend="process")
    with pytest.raises(ConfigError, match="sampler backend must be"):
        Sampler(0.05, backend="fiber")  # type: ignore[arg-type]


def test_process_backend_without_fakes(tmp_path):
    from charbench.measure.testing import FakePowercap

    pc = FakePowercap(tmp_path / "pc")  # plain files, readable by the child
    pc.add_standard(packages=1, dram=False)
    t_before = time.perf_counter()
    sampler = Sampler(0.05, rapl_root=str(pc.root))
    assert sampler.backend == "process"
    with sampler:
        assert sampler.running
        time.sleep(0.3)
        pc.set_energy("intel-rapl:0", 5_000_000)
        time.sleep(0.2)
        live = sampler.rows()
    rows = sampler.rows()
    assert not sampler.running
    assert len(live) >= 5 and len(rows) >= len(live)
    # the child's perf_counter is the parent's clock (CLOCK_MONOTONIC)
    assert t_before < rows[0]["t_s"] < rows[-1]["t_s"] < time.perf_counter()
    assert set(rows[1]) >= {"t_s", "cpu_package_power_w"}
    assert sum(r["cpu_package_power_w"] or 0.0 for r in rows) > 0  # the 4 J step shows up
    assert sampler.summarize(rows[0]["t_s"], rows[-1]["t_s"])["sample_count"] == len(rows)
    assert sampler.cpu_s > 0.0
    assert sampler.gpu_indices == [] or all(isinstance(i, int) for i in sampler.gpu_indices)


def test_repeated_sample_failures_are_logged_once_and_counted(tmp_path, caplog, monkeypatch):
    clk = FakeClock(0.0)
    sampler = Sampler(0.1, clock=clk, rapl_root=tmp_path, sources="none", wait=clk.waiter(stop_after=6))

    def boom() -> dict:
        raise RuntimeError("sensor gone")

    monkeypatch.setattr(sampler, "sample_once", boom)
    with caplog.at_level("ERROR", logger="charbench.measure.sampler"):
        sampler._loop()
    failures = [r for r in caplog.records if "sample failed" in r.getMessage()]
    assert len(failures) == 1  # one traceback, not one per interval
    assert sampler.notes[-1].endswith("sample(s) failed and were skipped")
    assert int(sampler.notes[-1].split()[0]) >= 6


def test_process_backend_releases_its_pipes(tmp_path):
    import gc
    import warnings

    from charbench.measure.testing import FakePowercap

    pc = FakePowercap(tmp_path / "pc")
    pc.add_standard(packages=1, dram=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = Sampler(0.05, rapl_root=str(pc.root))
        assert sampler.backend == "process"
        sampler.start()
        time.sleep(0.15)
        sampler.stop()
        assert len(sampler.rows()) >= 2
        del sampler
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
