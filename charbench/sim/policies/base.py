"""The policy plug-in interface and the settings every policy reads.

A policy is one class in one file: subclass :class:`Policy`, decorate it with
:func:`charbench.sim.policies.register_policy`, and ``charbench cluster-sim --policy-file
my_policy.py --policies static,mine`` runs it::

    from charbench.sim.policies import Policy, register_policy

    @register_policy
    class Mine(Policy):
        name = "mine"
        def setup(self, sim):
            for _ in range(self.base_instances):
                sim.add_instance(0, self.cfg.tp, self.profile.max_freq_mhz)

Hooks: :meth:`assign_pools` (pool per request, before the run), :meth:`setup` (initial
instances), :meth:`periods` (controllers: ``(period_s, fn(sim, t))``), :meth:`on_ready`
(an instance finished spinning up), :meth:`summary` (extra metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from charbench.sim.planner import RequestClass
from charbench.sim.profiles import Profile


@dataclass(frozen=True)
class PolicyConfig:
    """What the policies share and their own knobs (one place, so the study config maps onto it).

    Attributes:
        tp: static baseline's tensor-parallel degree.
        instances: static baseline's instances (the cluster size every policy compares with).
        slo_ttft_s, slo_tbt_s: latency objectives (p99 targets).
        plan_headroom: controllers plan for this fraction of each SLO (room for the tail).
        load_headroom: controllers plan for this much more load than observed.
        chunk_tokens: the engine's prefill chunk (the planner models it).
        seed: seeds predictor errors and priority draws.
        dyn_pools: ``io9`` (3 input x 3 output classes), ``out3`` (output classes) or ``single``.
        predictor_accuracy: probability the output-length class is predicted right.
        cluster_period_s, pool_period_s, freq_period_s: DynamoLLM's controller periods (0 = off).
        dyn_tps, dyn_freqs_mhz: what DynamoLLM may choose (empty = the profile's).
        polca_oversubscription: extra servers POLCA deploys (with their share of load).
        polca_budget_w: the power budget of all rows (None = the static cluster's provisioned power).
        polca_lp_fraction: share of low-priority instances and requests.
        polca_t1, polca_t2, polca_hysteresis: thresholds as fractions of a row's budget.
        polca_t1_lp, polca_t2_lp, polca_t2_hp: frequency caps as fractions of the maximum clock.
        polca_cap_latency_s, polca_brake_latency_s: delay until a cap / the brake takes effect.
        polca_period_s: how often POLCA reads row power.
    """

    tp: int = 8
    instances: int = 4
    slo_ttft_s: float = 2.0
    slo_tbt_s: float = 0.2
    plan_headroom: float = 0.5
    load_headroom: float = 0.2
    chunk_tokens: int = 512
    seed: int = 0
    dyn_pools: str = "io9"
    predictor_accuracy: float = 0.81
    cluster_period_s: float = 1800.0
    pool_period_s: float = 300.0
    freq_period_s: float = 5.0
    dyn_tps: tuple[int, ...] = ()
    dyn_freqs_mhz: tuple[float, ...] = ()
    polca_oversubscription: float = 0.3
    polca_budget_w: float | None = None
    polca_lp_fraction: float = 0.5
    polca_t1: float = 0.80
    polca_t2: float = 0.89
    polca_hysteresis: float = 0.05
    polca_t1_lp: float = 1275 / 1410
    polca_t2_lp: float = 1110 / 1410
    polca_t2_hp: float = 1305 / 1410
    polca_cap_latency_s: float = 5.0
    polca_brake_latency_s: float = 1.0
    polca_period_s: float = 1.0


class Policy:
    """Base policy: one pool, ``cfg.instances`` instances of ``cfg.tp`` at the maximum clock."""

    name: str = ""
    #: how many pools :meth:`assign_pools` uses
    num_pools: int = 1
    #: multiplies the offered load (POLCA adds servers with their share of load)
    load_factor: float = 1.0

    def __init__(self, profile: Profile, cfg: PolicyConfig) -> None:
        self.profile, self.cfg = profile, cfg

    @property
    def initial_gpus(self) -> int:
        """GPUs of the cluster at the start (sizes the power rows)."""
        return self.cfg.instances * self.cfg.tp

    def assign_pools(self, workload: Any) -> np.ndarray:
        """The pool of each request (all in pool 0 here)."""
        return np.zeros(len(workload), dtype=np.int64)

    def setup(self, sim: Any) -> None:
        """Create the initial instances."""
        for _ in range(self.cfg.instances):
            sim.add_instance(0, self.cfg.tp, self.profile.max_freq_mhz)

    def periods(self) -> list[tuple[float, Callable[[Any, float], None]]]:
        """Controllers to call periodically: (period s, fn(sim, t))."""
        return []

    def on_ready(self, sim: Any, inst: Any) -> None:
        """An instance finished its spin-up or re-shard."""

    def summary(self, sim: Any) -> dict[str, Any]:
        """Policy-specific figures for the record."""
        return {}

    def targets(self) -> tuple[float, float]:
        """(TTFT s, TBT s) targets controllers plan for (SLOs x plan_headroom)."""
        return self.cfg.slo_ttft_s * self.cfg.plan_headroom, self.cfg.slo_tbt_s * self.cfg.plan_headroom


def pool_classes(workload: Any, pools: np.ndarray, n: int) -> list[RequestClass]:
    """Mean lengths of each pool's requests (an empty pool gets the overall means)."""
    inp = np.asarray(workload.input_len, dtype=np.float64)
    out = np.asarray(workload.output_len, dtype=np.float64)
    default = RequestClass(float(inp.mean()) if len(inp) else 1.0, float(out.mean()) if len(out) else 1.0)
    out_cls = []
    for p in range(n):
        m = pools == p
        out_cls.append(RequestClass(float(inp[m].mean()), float(out[m].mean())) if m.any() else default)
    return out_cls


def peak_rate(arrival_s: np.ndarray, window_s: float) -> float:
    """Highest mean arrival rate over consecutive windows of ``window_s`` (req/s)."""
    if len(arrival_s) == 0:
        return 0.0
    counts = np.bincount((np.asarray(arrival_s) // window_s).astype(np.int64))
    return float(counts.max() / window_s)


def recent_rate(arrival_s: np.ndarray, t: float, window_s: float) -> float:
    """Mean arrival rate over [t - window_s, t) from sorted arrival times (causal: past only)."""
    lo = np.searchsorted(arrival_s, t - window_s, side="left")
    hi = np.searchsorted(arrival_s, t, side="left")
    return float(hi - lo) / window_s if window_s > 0 else 0.0


#: capacity is sized for the busiest minute (the static baseline, greener, DynamoLLM's cluster
#: and pool controllers): a longer window's mean hides the bursts
PEAK_WINDOW_S = 60.0


def recent_peak_rate(arrival_s: np.ndarray, t: float, window_s: float, sub_s: float = 60.0) -> float:
    """Highest mean arrival rate over the ``sub_s`` sub-windows of [t - window_s, t) (causal; req/s).

    Controllers that size capacity for a period use it, as the static baseline is sized for
    the trace's peak over windows of the same length (a period's mean hides its bursts).
    """
    if window_s <= 0:
        return 0.0
    sub = min(sub_s, window_s)
    edges = t - window_s + sub * np.arange(int(np.ceil(window_s / sub)) + 1)
    edges[-1] = t
    counts = np.diff(np.searchsorted(arrival_s, edges, side="left"))
    widths = np.diff(edges)
    ok = widths > 0
    return float((counts[ok] / widths[ok]).max()) if ok.any() else 0.0


def snap(levels: tuple[float, ...], f: float) -> float:
    """The level nearest to ``f``."""
    return min(levels, key=lambda x: (abs(x - f), x))


def ceil_div(a: float, b: float) -> int:
    """ceil(a / b) for positive b."""
    return int(math.ceil(a / b))
