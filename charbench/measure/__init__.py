"""Measurement: timing, energy meters, telemetry sampling, idle baseline, GPU control.

Importing this package imports neither pynvml nor torch: NVML is loaded inside
:mod:`charbench.measure.nvml` calls, torch only by a CUDA :class:`Timer`.

Use::

    from charbench.measure import Sampler, Timer, make_meters, measure_idle_baseline

    timer = Timer("cpu")
    meter, notes = make_meters("cpu")
    baseline = measure_idle_baseline(meter, 2.0)
    with Sampler(0.1) as sampler:
        loop = timer.run_for_at_least(op, 2.0, on_start=lambda: meter.begin_window("p"))
        m = meter.end_window("p")
    print(m.energy_j, baseline.net(m), sampler.summarize(m.start_s, m.end_s))
"""

from __future__ import annotations

from charbench.measure.baseline import IdleBaseline, measure_idle_baseline, net_energy_j
from charbench.measure.control import GpuControl, locked_clocks, power_limit
from charbench.measure.meters import (
    COUNTER_UPDATE_PERIOD_S,
    CompositeMeter,
    Measurement,
    Meter,
    NullMeter,
    NvmlMeter,
    RaplMeter,
    make_meters,
)
from charbench.measure.nvml import GpuRef, Nvml, gpu_inventory, nvml_available
from charbench.measure.rapl import RaplZone, rapl_available, rapl_zones
from charbench.measure.sampler import Sampler
from charbench.measure.timer import LoopResult, Timer, TimingStats, parse_device

__all__ = [
    "COUNTER_UPDATE_PERIOD_S",
    "CompositeMeter",
    "GpuControl",
    "GpuRef",
    "IdleBaseline",
    "LoopResult",
    "Measurement",
    "Meter",
    "NullMeter",
    "Nvml",
    "NvmlMeter",
    "RaplMeter",
    "RaplZone",
    "Sampler",
    "Timer",
    "TimingStats",
    "gpu_inventory",
    "locked_clocks",
    "make_meters",
    "measure_idle_baseline",
    "net_energy_j",
    "nvml_available",
    "parse_device",
    "power_limit",
    "rapl_available",
    "rapl_zones",
]
