"""Request arrival schedules: Poisson, gamma (bursty), constant, all-at-once, linear ramp-up.

Every open-loop schedule is an array of send times in seconds from the start of the load,
drawn from a seeded generator, so a run is reproducible::

    t = arrival_times(100, rate_rps=8.0, process="gamma", burstiness=0.5, seed=0)
    t = arrival_times(100, rate_rps=8.0, process="poisson", ramp_up_s=5.0, seed=0)

Definitions (the same as vLLM's ``bench serve``):

* ``poisson``: exponential inter-arrival gaps (a gamma with shape 1).
* ``gamma``: gaps ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)); burstiness < 1
  is burstier than Poisson, > 1 smoother. The mean gap is 1/rate either way.
* ``constant``: gaps of exactly 1/rate.
* rate ``inf``: every request at t = 0.

With ``rescale=True`` (default) the cumulative gaps are rescaled so that the last of the N
requests is sent at exactly N/rate: the run lasts as long as the nominal rate says, and
only the pattern inside it is random. (For Poisson this is the process conditioned on its
count.)

Linear ramp-up: the instantaneous rate rises linearly from ``ramp_start_rps`` to ``rate``
over ``ramp_up_s`` seconds, then stays at ``rate``. The unit-rate schedule is mapped
through the inverse of the cumulative rate Lambda(t), which keeps the arrival process's
shape (Poisson stays Poisson, constant stays evenly spaced in Lambda).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from charbench.errors import ConfigError

Process = Literal["poisson", "gamma", "constant"]
PROCESSES: tuple[str, ...] = ("poisson", "gamma", "constant")


def unit_gaps(n: int, process: str, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Inter-arrival gaps of a rate-1 process (mean 1).

    Args:
        n: number of gaps (one per request).
        process: ``poisson``, ``gamma`` or ``constant``.
        burstiness: gamma shape (used by ``gamma`` only; must be > 0).
        rng: the seeded generator.

    Raises:
        ConfigError: unknown process or burstiness <= 0.
    """
    if process == "constant":
        return np.ones(n)
    if process == "poisson":
        return rng.exponential(1.0, size=n)
    if process == "gamma":
        if not burstiness > 0:
            raise ConfigError(f"--burstiness: must be > 0, got {burstiness}; 1 = Poisson, < 1 burstier, > 1 smoother")
        return rng.gamma(shape=burstiness, scale=1.0 / burstiness, size=n)
    raise ConfigError(f"--arrival: unknown process {process!r}; valid: {', '.join(PROCESSES)}, closed, trace")


def ramp_inverse(u: np.ndarray, rate_rps: float, ramp_up_s: float, ramp_start_rps: float) -> np.ndarray:
    """Times t with Lambda(t) = u for the linear ramp rate(t) = r0 + (r - r0) * t / T, t < T.

    Lambda(t) = r0 t + (r - r0) t^2 / (2T) for t <= T, then Lambda(T) + r (t - T).
    The quadratic is solved in the cancellation-free form t = 2u / (b + sqrt(b^2 + 4 a u)).
    """
    r, r0, big_t = float(rate_rps), float(ramp_start_rps), float(ramp_up_s)
    a = (r - r0) / (2.0 * big_t)
    b = r0
    lam_t = (r0 + r) * big_t / 2.0
    out = np.empty_like(u, dtype=float)
    inside = u <= lam_t
    ui = u[inside]
    disc = np.sqrt(np.maximum(b * b + 4.0 * a * ui, 0.0))
    denom = b + disc
    with np.errstate(divide="ignore", invalid="ignore"):
        ti = np.where(denom > 0, 2.0 * ui / np.where(denom > 0, denom, 1.0), 0.0)
    out[inside] = ti
    out[~inside] = big_t + (u[~inside] - lam_t) / r
    return out


def arrival_times(
    n: int,
    rate_rps: float,
    process: str = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
    *,
    rescale: bool = True,
    ramp_up_s: float = 0.0,
    ramp_start_rps: float = 0.0,
) -> np.ndarray:
    """Send times (s from load start, non-decreasing) of ``n`` requests.

    Args:
        n: number of requests.
        rate_rps: mean request rate; ``inf`` sends everything at t = 0.
        process: ``poisson``, ``gamma`` or ``constant``.
        burstiness: gamma shape (``gamma`` only).
        seed: generator seed.
        rescale: rescale so the N-th request is sent at N / rate (vLLM's behaviour).
        ramp_up_s: length of a linear ramp from ``ramp_start_rps`` to ``rate_rps`` (0 = none).
        ramp_start_rps: rate at t = 0 of the ramp.

    Raises:
        ConfigError: n < 1, a rate <= 0, a negative ramp, or an unknown process.
    """
    if n < 1:
        raise ConfigError(f"--num-requests: must be >= 1, got {n}")
    if not rate_rps > 0:
        raise ConfigError(f"--request-rate: must be > 0 (or inf), got {rate_rps}")
    if ramp_up_s < 0 or ramp_start_rps < 0:
        raise ConfigError("--ramp-up-s and --ramp-start-rps must be >= 0")
    rng = np.random.default_rng(seed)
    gaps = unit_gaps(n, process, burstiness, rng)
    if math.isinf(rate_rps):
        return np.zeros(n)
    u = np.cumsum(gaps)  # arrivals of a rate-1 process, in "expected request count" units
    if rescale and u[-1] > 0:
        u = u * (n / u[-1])
    if ramp_up_s > 0:
        return ramp_inverse(u, rate_rps, ramp_up_s, ramp_start_rps)
    return u / rate_rps


def lateness_stats_ms(scheduled_s: np.ndarray, actual_s: np.ndarray) -> dict[str, float | None]:
    """How late each send was against its schedule (ms): mean, p50, p99, max.

    Args:
        scheduled_s: intended send times (s, same origin as ``actual_s``).
        actual_s: measured send times (s).
    """
    if len(scheduled_s) == 0:
        return {"send_lateness_mean_ms": None, "send_lateness_p50_ms": None, "send_lateness_p99_ms": None, "send_lateness_max_ms": None}
    d = (np.asarray(actual_s, dtype=float) - np.asarray(scheduled_s, dtype=float)) * 1e3
    return {
        "send_lateness_mean_ms": float(np.mean(d)),
        "send_lateness_p50_ms": float(np.percentile(d, 50)),
        "send_lateness_p99_ms": float(np.percentile(d, 99)),
        "send_lateness_max_ms": float(np.max(d)),
    }
