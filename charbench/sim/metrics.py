"""Cluster metrics from a :class:`~charbench.sim.engine.SimResult` (statistic first, unit last).

::

    m = summarize(result, Costs(slo_ttft_s=2.0, slo_tbt_s=0.2, gpu_usd_per_h=12.29, ...), intensity)

TBT is the per-request mean time between output tokens (vLLM's TPOT); its percentiles are
over requests. Power percentiles are over the timeline bins (cluster power averaged per bin);
the peak is the exact instantaneous maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from charbench.sim.engine import SimResult

J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Costs:
    """SLOs and prices the metrics need.

    Attributes:
        slo_ttft_s, slo_tbt_s: per-request objectives.
        gpu_usd_per_h: price of one GPU-hour.
        electricity_usd_per_kwh: price of a kWh (reported separately from the GPU cost).
    """

    slo_ttft_s: float
    slo_tbt_s: float
    gpu_usd_per_h: float
    electricity_usd_per_kwh: float


def cluster_power_bins(result: SimResult) -> np.ndarray:
    """Mean cluster power per timeline bin in W (the last bin over its simulated part only)."""
    data = result.bins.frame_data()
    rows = data[-result.rows:].sum(axis=0)
    widths = np.full(len(rows), result.bins.bin_s)
    if len(rows):
        widths[-1] = max(1e-9, result.end_s - (len(rows) - 1) * result.bins.bin_s)
    return rows / widths


def summarize(result: SimResult, costs: Costs, intensity_g_per_kwh: Callable[[np.ndarray], np.ndarray]) -> dict[str, float | int]:
    """Energy, carbon, cost, latency percentiles and SLO attainment, power statistics, counters."""
    ttft, tbt = result.ttft_s, result.tpot_s
    n = len(ttft)
    data = result.bins.frame_data()
    bin_kwh = data[-result.rows:].sum(axis=0) / J_PER_KWH
    carbon_kg = float((bin_kwh * intensity_g_per_kwh(result.bins.starts())).sum() / 1000.0)
    energy_kwh = result.energy_j / J_PER_KWH
    gpu_h = result.gpu_seconds / 3600.0
    power = cluster_power_bins(result)
    ok_ttft = ttft <= costs.slo_ttft_s
    ok_tbt = tbt <= costs.slo_tbt_s

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q)) * 1000.0 if n else float("nan")

    out: dict[str, float | int] = {
        "request_count": n,
        "energy_kwh": energy_kwh,
        "energy_per_request_wh": energy_kwh * 1000.0 / n if n else float("nan"),
        "carbon_kgco2e": carbon_kg,
        "gpu_time_h": gpu_h,
        "gpu_cost_usd": gpu_h * costs.gpu_usd_per_h,
        "electricity_cost_usd": energy_kwh * costs.electricity_usd_per_kwh,
        "cost_usd": gpu_h * costs.gpu_usd_per_h + energy_kwh * costs.electricity_usd_per_kwh,
        "p50_ttft_ms": pct(ttft, 50), "p99_ttft_ms": pct(ttft, 99),
        "p50_tbt_ms": pct(tbt, 50), "p99_tbt_ms": pct(tbt, 99),
        "p50_e2el_ms": pct(result.e2e_s, 50), "p99_e2el_ms": pct(result.e2e_s, 99),
        "ttft_slo_attainment_frac": float(ok_ttft.mean()) if n else float("nan"),
        "tbt_slo_attainment_frac": float(ok_tbt.mean()) if n else float("nan"),
        "slo_attainment_frac": float((ok_ttft & ok_tbt).mean()) if n else float("nan"),
        "mean_power_w": result.energy_j / result.end_s if result.end_s > 0 else float("nan"),
        "p50_power_w": float(np.percentile(power, 50)) if len(power) else float("nan"),
        "p99_power_w": float(np.percentile(power, 99)) if len(power) else float("nan"),
        "max_power_w": result.peak_power_w,
        "reconfiguration_energy_kwh": result.reconfig_energy_j / J_PER_KWH,
        "reconfiguration_count": int(result.counters["instances_added"] + result.counters["reshards"]),
        "freq_change_count": int(result.counters["freq_change_count"]),
        "preemption_count": int(result.counters["preemption_count"]),
        "max_kv_frac": result.max_kv_fraction,
        "simulated_time_s": result.end_s,
    }
    return out
