"""A steady-state model of one instance, for controllers that choose configurations from profiles.

At a request rate ``r`` per instance, with mean input ``I`` and output ``O`` tokens:

* prefill busy share ``rho = r * prefill(I)``;
* decode iteration ``tau(B) = d0 + B * g`` with ``g`` the per-sequence cost at mean context
  ``I + O/2``; requests in flight by Little's law ``B = r * O * TBT``, ``TBT = tau(B) / (1 - rho)``,
  so ``B = r O d0 / ((1 - rho) - r O g)``;
* TTFT ~ prefill(I) (1 + rho / (2 (1 - rho))) (M/D/1 wait) + tau(B);
* power = idle + rho (P_prefill - idle) + (1 - rho) min(1, B) (P_decode(B) - idle).

DynamoLLM's and Greener's controllers use it to pick (instances, tp, frequency) under the
SLOs; the engine itself never does (it simulates every iteration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charbench.sim.profiles import OperatingPoint, Profile


@dataclass(frozen=True)
class RequestClass:
    """Mean lengths of the requests a pool serves."""

    input_len: float
    output_len: float


@dataclass(frozen=True)
class Plan:
    """A pool configuration: ``instances`` of ``tp`` GPUs at ``freq_mhz``, drawing ``power_w`` in all."""

    instances: int
    tp: int
    freq_mhz: float
    power_w: float

    @property
    def gpus(self) -> int:
        """GPUs the plan uses."""
        return self.instances * self.tp


def prefill_s(op: OperatingPoint, tokens: float, chunk_tokens: int) -> float:
    """Time to prefill ``tokens`` in chunks of ``chunk_tokens``."""
    return math.ceil(max(1.0, tokens) / chunk_tokens) * op.prefill_fixed_s + tokens * op.prefill_per_token_s


def steady_state(op: OperatingPoint, cls: RequestClass, rate: float, chunk_tokens: int) -> tuple[float, float, float] | None:
    """(TTFT s, TBT s, power W) of one instance at ``rate`` req/s, or None when it cannot keep up."""
    pf = prefill_s(op, cls.input_len, chunk_tokens)
    rho = rate * pf
    if rho >= 1.0:
        return None
    g = op.decode_per_seq_s + op.decode_per_ctx_token_s * (cls.input_len + cls.output_len / 2)
    denom = (1.0 - rho) - rate * cls.output_len * g
    if denom <= 0:
        return None
    b = rate * cls.output_len * op.decode_fixed_s / denom
    # twice the mean footprint: room for the long tail of a pool's lengths before preemptions start
    if b > op.max_batch or 2 * b * (cls.input_len + cls.output_len) > op.kv_capacity_tokens:
        return None
    tau = op.decode_fixed_s + b * g
    tbt = tau / (1.0 - rho)
    ttft = pf * (1.0 + rho / (2.0 * (1.0 - rho))) + tau
    power = op.idle_w + rho * (op.prefill_w - op.idle_w) + (1.0 - rho) * min(1.0, b) * (op.decode_power_w(max(1, round(b))) - op.idle_w)
    return ttft, tbt, power


def meets(op: OperatingPoint, cls: RequestClass, rate: float, slo_ttft_s: float, slo_tbt_s: float, chunk_tokens: int) -> bool:
    """True when one instance at ``rate`` keeps the modelled TTFT and TBT within the targets."""
    st = steady_state(op, cls, rate, chunk_tokens)
    return st is not None and st[0] <= slo_ttft_s and st[1] <= slo_tbt_s


def max_rate(op: OperatingPoint, cls: RequestClass, slo_ttft_s: float, slo_tbt_s: float, chunk_tokens: int) -> float:
    """The largest rate per instance that meets the targets (0 when even one request misses them)."""
    if not meets(op, cls, 1e-9, slo_ttft_s, slo_tbt_s, chunk_tokens):
        return 0.0
    lo, hi = 0.0, 1.0 / prefill_s(op, cls.input_len, chunk_tokens)
    for _ in range(40):
        mid = (lo + hi) / 2
        if meets(op, cls, mid, slo_ttft_s, slo_tbt_s, chunk_tokens):
            lo = mid
        else:
            hi = mid
    return lo


def plan_pool(profile: Profile, cls: RequestClass, load_rps: float, slo_ttft_s: float, slo_tbt_s: float, chunk_tokens: int,
              tps: tuple[int, ...], freqs: tuple[float, ...], gpus: int | None = None) -> Plan:
    """The (instances, tp, frequency) that serves ``load_rps`` within the targets at the least power.

    Args:
        gpus: when given, only plans using exactly ``instances = gpus // tp`` instances
            (a re-shard within the pool's GPUs).

    Falls back to the largest-capacity plan when no configuration meets the targets.
    """
    best: Plan | None = None
    fallback: tuple[float, Plan] | None = None
    for tp in tps:
        for f in freqs:
            op = profile.point(tp, f)
            r = max_rate(op, cls, slo_ttft_s, slo_tbt_s, chunk_tokens)
            if gpus is not None:
                n = max(1, gpus // tp)
            else:
                n = max(1, math.ceil(load_rps / r)) if r > 0 else 1
            per = load_rps / n
            st = steady_state(op, cls, per, chunk_tokens)
            ok = st is not None and st[0] <= slo_ttft_s and st[1] <= slo_tbt_s
            power = n * (st[2] if st is not None else op.prefill_w)
            plan = Plan(n, tp, f, power)
            if ok and (best is None or (plan.power_w, plan.gpus) < (best.power_w, best.gpus)):
                best = plan
            cap = n * r
            if fallback is None or cap > fallback[0]:
                fallback = (cap, plan)
    if best is not None:
        return best
    assert fallback is not None
    return fallback[1]


def best_freq(profile: Profile, tp: int, cls: RequestClass, rate: float, slo_ttft_s: float, slo_tbt_s: float, chunk_tokens: int,
              freqs: tuple[float, ...]) -> float:
    """The frequency of ``freqs`` with the least modelled power that meets the targets at ``rate`` (else the highest)."""
    best: tuple[float, float] | None = None
    for f in freqs:
        st = steady_state(profile.point(tp, f), cls, rate, chunk_tokens)
        if st is not None and st[0] <= slo_ttft_s and st[1] <= slo_tbt_s and (best is None or st[2] < best[0]):
            best = (st[2], f)
    return best[1] if best is not None else max(freqs)
