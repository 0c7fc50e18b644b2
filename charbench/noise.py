"""Noise made visible: was the machine busy, and how far do repeated measurements of a point spread?

::

    charbench gemm-power            # every record gets machine_load1_count, machine_cpu_mhz, machine_threads_count, machine_busy
    busy = busy_summary(results, env)          # the run page's warning (None when the machine was quiet)
    band = spread(results, "time_per_gemm_ms", by=["experiment", "value", "dtype", "backend"])

**Busy** (:func:`is_busy`): the 1-minute load average is above the number of logical CPUs
(:data:`BUSY_LOAD_PER_CORE` = 1.0 runnable thread per CPU). Above that, more threads wanted a
CPU than there were CPUs, so some of them (charbench's own included: the load counts every
runnable thread on the machine) waited, and times measured then include that wait. A point
is busy when the load was above the line when it started or when it ended (the 1-minute
average lags, so both ends are read). The runner stores this per point, in the record
schema's machine columns (:data:`charbench.record.MACHINE_COLUMNS`).

**Spread** (:func:`spread`): per point (the ``by`` columns, seeds and repeats pooled), the
number of samples, mean, min, max and ``spread_pct = 100 * (max - min) / |mean|``: the noise a
difference between points must exceed before it says something about the points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from charbench.record import Record

#: runnable threads per logical CPU (1-minute load average / CPUs) above which the machine is busy
BUSY_LOAD_PER_CORE = 1.0

#: one sentence that says what "busy" means, for pages and notes
BUSY_RULE = ("busy = the 1-minute load average was above the number of logical CPUs at the start or end of a point "
             "(more runnable threads than CPUs, charbench's own included, so threads waited for a CPU)")


def is_busy(load1: float | None, cores: int | None) -> bool | None:
    """Whether a 1-minute load average means a busy machine (None when either is unknown)."""
    if load1 is None or not cores or not math.isfinite(float(load1)):
        return None
    return float(load1) > BUSY_LOAD_PER_CORE * int(cores)


def point_machine(before: Mapping[str, Any], after: Mapping[str, Any]) -> Record:
    """The machine columns of one point from :func:`charbench.envinfo.machine_state` taken before and after it.

    ``machine_load1_count`` is the larger of the two 1-minute load averages, ``machine_cpu_mhz`` and
    ``machine_threads_count`` are read after the point (while its threads still exist),
    ``machine_busy`` is :func:`is_busy` of either end. Unreadable values are null with why. No
    provenance is stamped (the sources are fixed: os.getloadavg, cpufreq or /proc/cpuinfo,
    /proc/self/status; env.json's ``machine.cpu_mhz_source`` says which clock source).
    """
    rec = Record()
    loads = [float(m["load1"]) for m in (before, after) if m.get("load1") is not None]
    reasons = {**(before.get("reasons") or {}), **(after.get("reasons") or {})}
    if loads:
        rec.set("machine_load1_count", max(loads))
    else:
        rec.null("machine_load1_count", reasons.get("load1", "load average not readable"))
    if after.get("cpu_mhz") is not None:
        rec.set("machine_cpu_mhz", float(after["cpu_mhz"]))
    else:
        rec.null("machine_cpu_mhz", reasons.get("cpu_mhz", "CPU frequency not readable"))
    if after.get("process_threads") is not None:
        rec.set("machine_threads_count", int(after["process_threads"]))
    else:
        rec.null("machine_threads_count", reasons.get("process_threads", "thread count not readable"))
    cores = after.get("cpu_cores") or before.get("cpu_cores")
    busy = [b for b in (is_busy(m.get("load1"), cores) for m in (before, after)) if b is not None]
    if busy:
        rec.set("machine_busy", any(busy))
    else:
        rec.null("machine_busy", "load average or CPU count not readable")
    return rec


def busy_summary(results: Any, env: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """How busy the machine was during a run, or None when it was quiet (or nothing says).

    Args:
        results: the run's records (a DataFrame with the machine columns).
        env: env.json (``machine`` holds the load at the start; ``cpu_cores``).

    Returns:
        ``{"busy_points", "points", "max_load1", "cores", "text"}``: the sentence a page shows.
    """
    env = dict(env or {})
    start = env.get("machine") or {}
    cores = env.get("cpu_cores") or start.get("cpu_cores")
    busy_points, points, loads = 0, 0, []
    if results is not None and len(results) and "machine_busy" in results.columns:
        col = results["machine_busy"]
        known = col[col.notna()]
        points = len(known)
        busy_points = int(sum(bool(v) for v in known))
        if "machine_load1_count" in results.columns:
            loads = [float(v) for v in results["machine_load1_count"].dropna()]
    start_busy = bool(start.get("busy"))
    if start.get("load1") is not None:
        loads.append(float(start["load1"]))
    if not busy_points and not start_busy:
        return None
    peak = max(loads) if loads else None
    where = f"during {busy_points} of {points} point(s)" if points else "when the run started"
    text = (f"The machine was busy {where}: 1-minute load average up to {peak:.2f} on {cores} logical CPU(s) ({BUSY_RULE}). "
            "Times measured while other work held the CPUs vary with that work; compare such runs with care, "
            "and treat differences within the spread of repeated points as noise.")
    return {"busy_points": busy_points, "points": points, "max_load1": peak, "cores": cores, "start_busy": start_busy, "text": text}


def spread(results: Any, metric: str, by: list[str]) -> Any:
    """Per point (``by``, seeds and repeats pooled): ``n``, ``mean``, ``min``, ``max``, ``spread_pct`` and ``busy`` of ``metric``.

    ``spread_pct`` = 100 * (max - min) / |mean| (null for a single sample: one sample has no
    measured spread, which is not a spread of 0); ``busy`` is whether any sample of the point
    ran on a busy machine (null when the run has no machine columns).

    Returns:
        a DataFrame, one row per point, or None when ``metric`` has no value.
    """
    import pandas as pd

    if results is None or metric not in results.columns:
        return None
    d = results[results[metric].notna()]
    if len(d) == 0:
        return None
    g = d.groupby(by, sort=True, dropna=False)
    out = g[metric].agg(["count", "mean", "min", "max"]).reset_index().rename(columns={"count": "n"})
    out["spread_pct"] = pd.Series([100.0 * (hi - lo) / abs(m) if n >= 2 and m else None
                                   for n, m, lo, hi in zip(out["n"], out["mean"], out["min"], out["max"])], dtype=object)
    if "machine_busy" in d.columns:
        out["busy"] = g["machine_busy"].agg(lambda s: bool(s.fillna(False).astype(bool).any()) if s.notna().any() else None).to_numpy()
    else:
        out["busy"] = None
    return pd.DataFrame(out)


def run_noise_pct(results: Any, metric: str, by: list[str]) -> float | None:
    """The run's own noise in ``metric``: the median :func:`spread` ``spread_pct`` over its repeated points (None when no point was repeated)."""
    import statistics

    s = spread(results, metric, by)
    if s is None:
        return None
    vals = [float(v) for v in s["spread_pct"] if v is not None and v == v]
    return statistics.median(vals) if vals else None
