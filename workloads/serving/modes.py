"""Which loads a point measures: explicit (grid), GuideLLM-style sweep, SLO search.

A mode drives a ``measure(load) -> record`` callable, so its logic is testable with a fake::

    recs = run_sweep(measure, n_rates=3)            # synchronous, throughput, 3 rates between
    recs = slo_search(measure, attainment=0.9, iters=5)

* ``sweep`` (GuideLLM): one request at a time (``synchronous``), then everything at once
  (``throughput``), then ``n_rates`` constant-rate/Poisson loads evenly spaced strictly
  between the two measured request throughputs.
* ``slo-search``: the largest request rate whose SLO attainment is at least the target,
  by bisection. The upper bound is the measured max throughput (rate ``inf``); if that
  rate already meets the SLOs it is the answer. The lower bound is
  ``lo_frac`` x max throughput; if even that fails there is no answer (null, with the
  reason). Each step halves the bracket until ``(hi - lo) / hi < rel_tol`` or ``iters``
  steps ran. Every measured load is kept as a record (``mode_step``), and the answer is
  marked ``slo_search_best``; all records carry ``slo_max_rate_rps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from charbench.record import Record


@dataclass(frozen=True)
class Load:
    """One load to measure.

    Attributes:
        kind: ``rate`` (open loop, req/s; inf = all at once), ``concurrency`` (closed loop)
            or ``trace`` (the trace's own timing).
        value: the rate or the number of users (None for ``trace``).
        step: a short label saved as ``mode_step`` (also names per-request files).
    """

    kind: str
    value: float | int | None
    step: str


Measure = Callable[[Load], Record]


def meets_slo(rec: dict[str, Any], attainment: float) -> bool:
    """The record's SLO attainment is measured and at least ``attainment``."""
    a = rec.get("slo_attainment_frac")
    return a is not None and a >= attainment - 1e-12


def _rps(rec: dict[str, Any]) -> float | None:
    v = rec.get("request_throughput_rps")
    return float(v) if v is not None and math.isfinite(v) and v > 0 else None


def run_sweep(measure: Measure, n_rates: int) -> list[dict[str, Any]]:
    """GuideLLM's sweep: synchronous, throughput, then ``n_rates`` rates in between.

    Returns:
        The records in measurement order. Without both bounds measured (every request of
        one of them failed), the in-between rates are skipped.
    """
    sync = measure(Load("concurrency", 1, "synchronous"))
    thr = measure(Load("rate", math.inf, "throughput"))
    out = [sync, thr]
    lo, hi = _rps(sync), _rps(thr)
    if lo is None or hi is None or n_rates < 1:
        return out
    if hi < lo:
        lo, hi = hi, lo
    for i, r in enumerate(np.linspace(lo, hi, n_rates + 2)[1:-1], start=1):
        out.append(measure(Load("rate", float(r), f"sweep-{i}")))
    return out


def slo_search(measure: Measure, attainment: float, iters: int = 5, rel_tol: float = 0.05, lo_frac: float = 0.1) -> list[dict[str, Any]]:
    """The largest request rate meeting the SLOs, by bisection (see module docstring).

    Returns:
        Every measured record; each carries ``slo_max_rate_rps`` (None when no rate met the
        SLOs, with ``slo_search_note`` and the null's reason saying why) and
        ``slo_search_best``.
    """
    recs: list[dict[str, Any]] = []
    thr = measure(Load("rate", math.inf, "throughput"))
    recs.append(thr)
    r_max = _rps(thr)
    best: dict[str, Any] | None = None
    note = ""
    if r_max is None:
        note = "max-throughput load completed no request; no rate to search"
    else:
        top = measure(Load("rate", r_max, "search-max"))
        recs.append(top)
        if meets_slo(top, attainment):
            best = top
            note = f"the SLOs hold at the measured max throughput {r_max:.4g} req/s"
        else:
            lo = r_max * lo_frac
            low = measure(Load("rate", lo, "search-lo"))
            recs.append(low)
            if not meets_slo(low, attainment):
                note = f"the SLOs are missed even at {lo:.4g} req/s ({lo_frac:g} x max throughput)"
            else:
                best, hi = low, r_max
                for i in range(1, iters + 1):
                    if (hi - lo) / hi < rel_tol:
                        break
                    mid = (lo + hi) / 2.0
                    rec = measure(Load("rate", mid, f"search-{i}"))
                    recs.append(rec)
                    if meets_slo(rec, attainment):
                        lo, best = mid, rec
                    else:
                        hi = mid
                note = f"bisection bracket [{lo:.4g}, {hi:.4g}] req/s"
    best_rate = None
    if best is not None:
        best_rate = best.get("request_rate_rps")
    for r in recs:
        r.set("slo_max_rate_rps", best_rate, reason=f"no rate meets the SLOs: {note}")
        r.set("slo_search_best", r is best)
        r.set("slo_search_note", note)
    return recs
