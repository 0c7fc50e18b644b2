"""Real-hardware checks of the measurement package (read-only: no clock or power-limit changes).

Run on a machine with an NVIDIA GPU: ``pytest tests/measure/test_gpu_real.py -m gpu``.
"""

from __future__ import annotations

import time

import pytest

from charbench.measure.meters import NvmlMeter, integrate_power_j
from charbench.measure.nvml import Nvml, gpu_inventory, nvml_available
from charbench.measure.sampler import Sampler
from charbench.measure.timer import Timer

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch_cuda():
    ok, reason = nvml_available()
    if not ok:
        pytest.skip(f"needs NVML: {reason}")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch


def test_inventory_is_complete(torch_cuda):
    rows, reason = gpu_inventory()
    assert reason is None and rows
    row = rows[0]
    for key in ("name", "uuid", "pci_bus_id", "driver", "memory_total_mib", "sm_clock_mhz",
                "max_sm_clock_mhz", "power_limit_w", "energy_counter"):
        assert row[key] is not None, row.get(f"{key}_reason")
    # NVML's bus id for cuda:0 is the one torch reports
    props = torch_cuda.cuda.get_device_properties(0)
    if hasattr(props, "pci_domain_id"):  # torch gives the parts as ints
        bus = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        with Nvml() as nvml:
            assert nvml.gpu_by_pci_bus_id(bus).uuid == row["uuid"]


def test_counter_energy_matches_integrated_power_under_load(torch_cuda):
    torch = torch_cuda
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    timer = Timer("cuda:0")
    with Nvml() as nvml:
        sampler = Sampler(0.02, gpus=[0], nvml=nvml, sources="gpu-power").start()
        meter = NvmlMeter(gpus=[0], nvml=nvml, sync=timer.sync)
        for _ in range(3):
            a @ a
        loop = timer.run_for_at_least(lambda: a @ a, 2.0, on_start=lambda: meter.begin_window("load"))
        m = meter.end_window("load")
        sampler.stop()
        meter.close()
    series, kinds = sampler.power_series(0, m.start_s, m.end_s)
    integrated = integrate_power_j(series, m.start_s, m.end_s)
    assert m.provenance == {"gpu0": "nvml-energy-counter"}
    assert m.time_s >= 2.0 and loop.iterations > 10
    assert 50.0 < m.avg_power_w["gpu0"] < 1500.0
    print(f"\ncounter {m.energy_j['gpu0']:.1f} J ({m.avg_power_w['gpu0']:.1f} W) vs integrated "
          f"{kinds} power {integrated:.1f} J over {m.time_s:.2f} s, {len(series)} samples")
    assert integrated == pytest.approx(m.energy_j["gpu0"], rel=0.15)


def test_sampler_rows_on_real_gpu(torch_cuda):
    with Sampler(0.05, gpus=[0]) as sampler:
        time.sleep(0.5)
    rows = sampler.rows()
    assert 6 <= len(rows) <= 12, len(rows)
    row = rows[-1]
    print(f"\nlast row: {row}\nnotes: {sampler.notes}")
    assert row["gpu0_power_w"] > 0 and row["gpu0_power_kind"] in ("instant", "average-1s")
    assert row["gpu0_sm_clock_mhz"] > 0 and row["gpu0_temp_c"] > 0
    assert isinstance(row["gpu0_throttle_mask"], int)
    stats = sampler.summarize(rows[0]["t_s"], rows[-1]["t_s"])
    assert stats["sample_count"] == len(rows) and "mean_gpu0_power_w" in stats
