"""Fit a measured profile's iteration costs by simulating the loads it was measured under.

serve-sweep's profile holds per-load summaries (median TTFT and TPOT, throughput), not
per-iteration times. Reading the decode iteration time straight off the median TPOT counts
the prefill iterations that interrupt decoding twice (the simulator adds them again), and
reading the prefill time off the median TTFT ignores the wait for the iteration in flight.
So the coefficients are calibrated against the simulator itself::

    coeffs = calibrate(entries, initial, max_batch=16, chunk_tokens=512)

Each open-loop entry (``load_kind`` rate, finite ``request_rate_rps``, central
``input_len``/``output_len``) is replayed as a seeded Poisson load of :data:`CAL_REQUESTS`
fixed-length requests on one instance (``inf``: all at once), and three coefficients
(decode iteration fixed and per-sequence time, prefill time per token) are fitted so that the
simulated median TPOT and TTFT match the measured ones (Levenberg-Marquardt in log space;
the fixed part is one per forward: a prefill-only iteration pays it as a decode one does).
An overloaded load (served below :data:`OVERLOAD_FRAC` of its rate, or all at once)
contributes its TPOT only: its TTFT is the backlog of that run's length. Entries without an
open-loop load (closed loop, traces) are left to the closed-form first guess.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

#: requests per replayed load (seeded Poisson; enough for a stable median, fast to simulate)
CAL_REQUESTS = 400
#: a load served below this share of its offered rate was overloaded (its TTFT is not calibrated to)
OVERLOAD_FRAC = 0.9
#: most Levenberg-Marquardt iterations
CAL_ROUNDS = 8
#: stop when every simulated median is within this log-ratio of the measured one (1%)
CAL_TOL = 0.01


def rate_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries usable for calibration: open loop (a finite rate, or ``inf`` = all at once) with central lengths and both medians."""
    out = []
    for e in entries:
        rate = e.get("request_rate_rps")
        if e.get("load_kind") not in (None, "rate") or rate is None or math.isnan(float(rate)) or float(rate) <= 0:
            continue
        if not e.get("input_len") or not e.get("output_len") or int(e["output_len"]) < 2:
            continue
        if e.get("median_tpot_ms") is None or e.get("median_ttft_ms") is None:
            continue
        out.append(e)
    return out


def _overloaded(e: dict[str, Any]) -> bool:
    """Served below :data:`OVERLOAD_FRAC` of the offered rate: its TTFT is the backlog of that run's length, not a steady state."""
    x, rate = e.get("request_throughput_rps"), float(e["request_rate_rps"])
    return math.isinf(rate) or (x is not None and float(x) < OVERLOAD_FRAC * rate)


def _replay(op: Any, e: dict[str, Any], max_batch: int, chunk_tokens: int, seed: int) -> tuple[float, float, float]:
    """(median TTFT s, median TPOT s, mean decode batch) of one instance under the entry's load."""
    from charbench.sim.engine import SimSettings, Simulator, Workload

    rng = np.random.default_rng(np.random.SeedSequence([seed, 31]))
    n = CAL_REQUESTS
    rate = float(e["request_rate_rps"])
    t = np.cumsum(rng.exponential(1.0 / rate, n)) if math.isfinite(rate) else np.zeros(n)  # inf: all at once
    wl = Workload(t, np.full(n, int(e["input_len"])), np.full(n, int(e["output_len"])), max(1e-9, float(t[-1])), "calibration")
    prof = _OneOp(op)
    policy = _OneInstance(op)
    res = Simulator(prof, wl, policy, SimSettings(max_num_seqs=max_batch, chunk_tokens=max(chunk_tokens, max_batch + 1))).run()
    decode_s = float(np.sum(res.finish_s - res.first_token_s))
    return float(np.median(res.ttft_s)), float(np.median(res.tpot_s)), max(1.0, decode_s / max(1e-12, res.end_s))


class _OneInstance:
    """The policy of a calibration replay: one instance at the operating point, nothing else.

    (Not :class:`charbench.sim.policies.Policy`: the policies import the planner, which imports
    the profiles, which calibrate here.)
    """

    name, num_pools, load_factor, initial_gpus = "calibration", 1, 1.0, 1

    def __init__(self, op: Any) -> None:
        self.op = op

    def assign_pools(self, workload: Any) -> np.ndarray:
        return np.zeros(len(workload), dtype=np.int64)

    def setup(self, sim: Any) -> None:
        sim.add_instance(0, self.op.tp, self.op.freq_mhz)

    def periods(self) -> list[Any]:
        return []

    def on_ready(self, sim: Any, inst: Any) -> None:
        """Nothing to do (the instance serves from the start)."""

    def summary(self, sim: Any) -> dict[str, Any]:
        return {}


class _OneOp:
    """A profile with one operating point (what :class:`Policy` and the engine ask of a profile)."""

    def __init__(self, op: Any) -> None:
        self.op, self.max_freq_mhz, self.name = op, op.freq_mhz, "calibration"

    def point(self, tp: int, freq_mhz: float) -> Any:
        return self.op


def _residuals(op: Any, x: np.ndarray, use: list[dict[str, Any]], max_batch: int, chunk_tokens: int) -> tuple[np.ndarray, Any, list[tuple[float, float, float]]]:
    """log(simulated / measured) median TPOT and TTFT of every entry at log-parameters ``x``."""
    d0, d1, p1 = np.exp(x)
    # one fixed cost per forward, prefill or decode (the engine runs either as one model call)
    cand = replace(op, decode_fixed_s=float(d0), prefill_fixed_s=float(d0), decode_per_seq_s=float(d1), prefill_per_token_s=float(p1))
    sims = [_replay(cand, e, max_batch, chunk_tokens, i) for i, e in enumerate(use)]
    r = []
    for e, (ttft, tpot, _) in zip(use, sims):
        r.append(math.log(max(1e-12, tpot) / (float(e["median_tpot_ms"]) / 1000.0)))
        if not _overloaded(e):
            r.append(math.log(max(1e-12, ttft) / (float(e["median_ttft_ms"]) / 1000.0)))
    return np.asarray(r), cand, sims


def calibrate(entries: list[dict[str, Any]], initial: Any, max_batch: int, chunk_tokens: int = 512) -> tuple[Any, dict[str, Any]]:
    """Calibrate ``initial`` (an :class:`~charbench.sim.profiles.OperatingPoint`) to the entries' medians.

    Levenberg-Marquardt on log(decode_fixed_s, decode_per_seq_s, prefill_per_token_s) with
    the residuals log(simulated / measured) median TPOT and TTFT per load (forward
    differences); parameters a single load cannot tell apart move together (the damped
    step is the smallest one).

    Returns:
        (the calibrated operating point, a report: entries used, iterations, the largest
        remaining error, and per entry the measured and simulated medians).
    """
    use = rate_entries(entries)
    if not use:
        return initial, {"calibrated_entries": 0}
    x = np.log([max(1e-6, initial.decode_fixed_s), max(1e-3 * initial.decode_fixed_s, initial.decode_per_seq_s, 1e-7),
                max(1e-9, initial.prefill_per_token_s)])
    r, op, sims = _residuals(initial, x, use, max_batch, chunk_tokens)
    lam, h, it = 1e-2, 0.05, 0
    for it in range(1, CAL_ROUNDS + 1):
        if float(np.max(np.abs(r))) < CAL_TOL:
            break
        jac = np.empty((len(r), 3))
        for k in range(3):
            xk = x.copy()
            xk[k] += h
            jac[:, k] = (_residuals(initial, xk, use, max_batch, chunk_tokens)[0] - r) / h
        jtj, jtr = jac.T @ jac, jac.T @ r
        improved = False
        for _ in range(6):
            step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj)) + 1e-9 * np.eye(3), -jtr)
            step = np.clip(step, -2.0, 2.0)  # at most e^2 per iteration
            r2, op2, sims2 = _residuals(initial, x + step, use, max_batch, chunk_tokens)
            if float(r2 @ r2) < float(r @ r):
                x, r, op, sims, lam, improved = x + step, r2, op2, sims2, max(1e-4, lam / 3), True
                break
            lam *= 4
        if not improved:
            break
    report = {"calibrated_entries": len(use), "iterations": it, "max_abs_log_error": float(np.max(np.abs(r))), "entries": [
        {"request_rate_rps": float(e["request_rate_rps"]), "measured_median_ttft_ms": float(e["median_ttft_ms"]),
         "simulated_median_ttft_ms": s[0] * 1000, "measured_median_tpot_ms": float(e["median_tpot_ms"]),
         "simulated_median_tpot_ms": s[1] * 1000, "decode_batch": s[2]} for e, s in zip(use, sims)]}
    return op, report
