"""Idle power baseline, and net (baseline-subtracted) energy.

Measure before a sweep, with the device idle, so records can carry gross energy
(what the counters read) and net energy (gross minus idle power × window time).

Use::

    from charbench.measure.baseline import measure_idle_baseline, net_energy_j

    baseline = measure_idle_baseline(meter, duration_s=5.0)   # baseline.power_w["gpu0"]
    m = meter.end_window("point")
    net = net_energy_j(m.energy_j["gpu0"], baseline.power_w["gpu0"], m.time_s)
    record.update(baseline.to_record())                        # idle_gpu0_power_w, ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from charbench.errors import ConfigError
from charbench.measure.meters import Measurement, Meter

MIN_STABLE_IDLE_S = 1.0
"""Baselines shorter than this are flagged: a few counter updates are not a stable mean."""


@dataclass
class IdleBaseline:
    """Idle power per domain.

    Attributes:
        duration_s: measured length of the idle window (s).
        power_w: mean idle power per domain (W); None when not measured.
        provenance: per domain, as in :class:`~charbench.measure.meters.Measurement`.
        warnings: why a value is missing or doubtful.
    """

    duration_s: float
    power_w: dict[str, float | None]
    provenance: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def net(self, measurement: Measurement) -> dict[str, float | None]:
        """Net energy (J) per domain of ``measurement``: gross minus idle power × time."""
        return {
            d: net_energy_j(e, self.power_w.get(d), measurement.time_s)
            for d, e in measurement.energy_j.items()
        }

    def to_record(self) -> dict[str, Any]:
        """Flat record fields: ``idle_baseline_s``, ``idle_<domain>_power_w``."""
        out: dict[str, Any] = {"idle_baseline_s": self.duration_s}
        for domain, watts in self.power_w.items():
            out[f"idle_{domain}_power_w"] = watts
        return out


def measure_idle_baseline(
    meter: Meter,
    duration_s: float,
    sleep: Callable[[float], None] = time.sleep,
    name: str = "idle-baseline",
) -> IdleBaseline:
    """Measure mean idle power with ``meter`` over ``duration_s`` seconds of sleep.

    Raises:
        ConfigError: ``duration_s`` is not positive.
    """
    if not duration_s > 0:
        raise ConfigError(f"idle baseline duration must be > 0 s, got {duration_s}")
    meter.begin_window(name)
    try:
        sleep(duration_s)
    finally:
        m = meter.end_window(name)
    warnings = list(m.warnings)
    if m.time_s < MIN_STABLE_IDLE_S:
        warnings.append(
            f"idle baseline lasted {m.time_s:.3g} s; use at least {MIN_STABLE_IDLE_S:g} s "
            "(several seconds) for a stable idle power"
        )
    return IdleBaseline(m.time_s, dict(m.avg_power_w), dict(m.provenance), warnings)


def net_energy_j(gross_j: float | None, baseline_power_w: float | None, time_s: float) -> float | None:
    """``gross_j - baseline_power_w * time_s``; None when either input is None.

    The result is not clamped: a negative value means the idle baseline was higher
    than the window's mean power and is reported as measured.
    """
    if gross_j is None or baseline_power_w is None:
        return None
    return gross_j - baseline_power_w * time_s
