"""Workloads for cluster-sim: Azure trace files, synthetic diurnal/bursty traces, carbon, prices.

::

    wl = synthetic_trace(SyntheticSpec(duration_s=3600, mean_rate_rps=5.4), seed=0)
    wl = azure_trace(Path("AzureLLMInferenceTrace_conv_1week.csv"), time_scale=1, start_s=0, duration_s=3600)
    wl, clipped = fit_workload(wl, max_context=4096)
    g = carbon_intensity(None)            # synthetic diurnal curve (g/kWh over time)

The Azure reader is serve-sweep's (:mod:`charbench.workloads.serving.traces`): both the 2023
files and the 2024 one-week files (UTC offsets, mixed fractional seconds) parse.
Synthetic lengths are serve-sweep's ``azure-conv``/``azure-code`` distributions (published
medians, assumed spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from charbench.errors import ConfigError
from charbench.sim.engine import Workload
from charbench.workloads.serving.lengths import LengthSpec, fit_to_context, sample_lengths
from charbench.workloads.serving.traces import load_azure_trace

DAY_S = 86_400.0


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic trace: diurnal non-homogeneous Poisson arrivals with bursts.

    Attributes:
        duration_s: span in s.
        mean_rate_rps: mean arrival rate over a day.
        peak_to_mean: daily peak rate / mean (DynamoLLM's Conversation trace: 1.7 [S]).
        burst_per_h: bursts per hour (Poisson).
        burst_factor: rate multiplier during a burst.
        burst_s: burst length in s.
        length_dist: ``azure-conv`` or ``azure-code``.
        start_hour: hour of day the trace starts (the diurnal phase; peak at 14:00).
    """

    duration_s: float = 3600.0
    mean_rate_rps: float = 5.4
    peak_to_mean: float = 1.7
    burst_per_h: float = 2.0
    burst_factor: float = 2.0
    burst_s: float = 60.0
    length_dist: str = "azure-conv"
    start_hour: float = 10.0


def diurnal_rate(spec: SyntheticSpec, t: np.ndarray) -> np.ndarray:
    """Rate (req/s) at times ``t``: mean x (1 + (peak/mean - 1) cos(2 pi (hour - 14) / 24))."""
    hour = spec.start_hour + np.asarray(t) / 3600.0
    return spec.mean_rate_rps * (1.0 + (spec.peak_to_mean - 1.0) * np.cos(2 * math.pi * (hour - 14.0) / 24.0))


#: span of one generation chunk (bounds the thinning's candidate arrays, whatever the duration)
GEN_CHUNK_S = 3600.0


def synthetic_trace(spec: SyntheticSpec, seed: int) -> Workload:
    """Draw arrivals by thinning and lengths from ``spec.length_dist`` (seeded; same seed, same trace).

    Arrivals are drawn one :data:`GEN_CHUNK_S` window at a time from one generator, so the
    transient memory is an hour's candidates, and the result is kept compact (float64
    times, int32 lengths: 16 B a request).
    """
    if spec.length_dist not in ("azure-conv", "azure-code"):
        raise ConfigError(f"--length-dist: {spec.length_dist!r} is not a published length distribution; use azure-conv or azure-code")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    nb = rng.poisson(spec.burst_per_h * spec.duration_s / 3600.0)
    b0 = np.sort(rng.random(nb) * spec.duration_s)
    peak = spec.mean_rate_rps * spec.peak_to_mean * max(1.0, spec.burst_factor)
    parts = []
    start = 0.0
    while start < spec.duration_s:
        span = min(GEN_CHUNK_S, spec.duration_s - start)
        t = start + np.sort(rng.random(rng.poisson(peak * span)) * span)
        rate = diurnal_rate(spec, t)
        if nb:
            k = np.searchsorted(b0, t, side="right") - 1
            in_burst = (k >= 0) & (t - b0[np.maximum(k, 0)] < spec.burst_s)
            rate = np.where(in_burst, rate * spec.burst_factor, rate)
        parts.append(t[rng.random(len(t)) * peak < rate])
        start += span
    arrivals = np.concatenate(parts) if parts else np.zeros(0)
    del parts
    inp, out = sample_lengths(LengthSpec(dist=spec.length_dist), len(arrivals), seed=seed)
    return Workload(arrivals, inp.astype(np.int32), out.astype(np.int32), spec.duration_s,
                    f"synthetic {spec.length_dist} {spec.mean_rate_rps:g} req/s mean, peak/mean {spec.peak_to_mean:g}, {nb} bursts")


def azure_trace(path: Path, time_scale: float, start_s: float, duration_s: float | None) -> Workload:
    """An Azure LLM inference trace window (2023 or 2024 format) as a workload.

    Raises:
        ConfigError: see :func:`charbench.workloads.serving.traces.load_azure_trace`.
    """
    tr = load_azure_trace(path, time_scale=time_scale, start_s=start_s, duration_s=duration_s)
    span = float(tr.times_s[-1]) if len(tr.times_s) else 0.0
    dur = duration_s * time_scale if duration_s is not None else span
    return Workload(np.asarray(tr.times_s, dtype=np.float64), tr.input_len, tr.output_len, max(dur, span, 1e-9),
                    f"{Path(path).name} ({tr.rows_in_file} rows; window start {start_s:g} s, scale {time_scale:g})")


def fit_workload(wl: Workload, max_context: int) -> tuple[Workload, int]:
    """Shorten requests longer than the model's context (serve-sweep's rule); returns the count shortened."""
    inp, out, clipped = fit_to_context(wl.input_len, wl.output_len, max_context)
    return Workload(wl.arrival_s, inp.astype(np.int32), out.astype(np.int32), wl.duration_s, wl.source), clipped


#: synthetic carbon intensity: a solar "duck curve" (charbench's assumption, shaped like CAISO's
#: daily pattern; mean about 250 g/kWh, lowest at 13:00). Use --carbon-file for a real series.
CARBON_MEAN_G_PER_KWH = 250.0
CARBON_SWING_G_PER_KWH = 100.0


def carbon_intensity(path: Path | None, start_hour: float = 10.0) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(g CO2e per kWh at simulated times, provenance): a CSV ``time_s,g_per_kwh`` or the synthetic curve.

    Raises:
        ConfigError: a missing file, or one without the two columns.
    """
    if path is None:
        def synth(t: np.ndarray) -> np.ndarray:
            hour = start_hour + np.asarray(t) / 3600.0
            return CARBON_MEAN_G_PER_KWH - CARBON_SWING_G_PER_KWH * np.cos(2 * math.pi * (hour - 13.0) / 24.0)
        return synth, f"synthetic diurnal curve (assumption: mean {CARBON_MEAN_G_PER_KWH:g} g/kWh, swing {CARBON_SWING_G_PER_KWH:g}, lowest at 13:00)"
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--carbon-file: file not found: {path}")
    df = pd.read_csv(path)
    if not {"time_s", "g_per_kwh"} <= set(df.columns):
        raise ConfigError(f"--carbon-file {path}: needs columns time_s,g_per_kwh (found: {', '.join(map(str, df.columns))})")
    ts, gs = df["time_s"].to_numpy(float), df["g_per_kwh"].to_numpy(float)
    order = np.argsort(ts)
    ts, gs = ts[order], gs[order]

    def series(t: np.ndarray) -> np.ndarray:
        # step function: each value holds until the next time (last value to the end)
        idx = np.clip(np.searchsorted(ts, np.asarray(t), side="right") - 1, 0, len(gs) - 1)
        return gs[idx]
    return series, f"{path.name} ({len(ts)} points, held until the next)"


#: GPU-hour prices in USD (assumption: the order of 2024 public-cloud on-demand list prices for
#: 8-GPU VMs divided by 8; override with --gpu-price). Electricity: 0.10 USD/kWh (assumption).
GPU_USD_PER_H: dict[str, float] = {"a100": 3.40, "h100": 12.29, "h200": 13.50, "unknown": 12.29}
ELECTRICITY_USD_PER_KWH = 0.10
