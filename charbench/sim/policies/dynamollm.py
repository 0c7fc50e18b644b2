"""``dynamollm``: energy-aware reconfiguration per request pool (Stojkovic et al., HPCA'25, arXiv 2408.00741).

Requests are binned into pools by input length (known) and a *predicted* output length
(right with probability ``predictor_accuracy``, else another class at random): cuts at
256/1024 input and 100/350 output tokens (the paper's S/M/L classes, per the appendix).
Three controllers, each on its own period (the paper's 30 min / 5 min / 5 s):

* cluster (``cluster_period_s``): instances and tp per pool, the plan with the least modelled
  power that meets the planning targets at the observed load (the busiest minute of the last
  period, as static is sized for the trace's busiest minute, plus ``load_headroom``); new
  instances spin up for ``spinup_s`` (drawing idle power, counted as reconfiguration energy),
  extra ones drain;
* pool (``pool_period_s``): re-shard a pool to another tp within its GPUs when that saves > 5%
  modelled power (``reshard_s``; the old instances serve until the new ones are ready);
* instance (``freq_period_s``): the SM frequency with the least modelled power that meets the
  targets at each instance's share of the load (the highest of the last 30 s, the last period
  and the busiest minute of the last pool period; a ``freq_change_s`` stall).

The first period's plan uses the first period's load (an oracle; the paper predicts it);
later plans use only past arrivals. With one pool, one frequency, one tp and the cluster and
pool controllers off it is exactly ``static``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from charbench.errors import ConfigError
from charbench.sim.planner import Plan, best_freq, plan_pool
from charbench.sim.policies.base import PEAK_WINDOW_S, Policy, pool_classes, recent_peak_rate, recent_rate
from charbench.sim.policies.registry import register_policy

#: input / output token cuts of the S/M/L classes (DynamoLLM, per the cluster-energy appendix [S])
INPUT_CUTS: tuple[int, ...] = (256, 1024)
OUTPUT_CUTS: tuple[int, ...] = (100, 350)
POOLINGS: tuple[str, ...] = ("io9", "out3", "single")
#: re-shard only when the modelled power drops by more than this share
RESHARD_GAIN = 0.05
#: window of the frequency controller's load estimate
FREQ_WINDOW_S = 30.0


def length_class(lengths: np.ndarray, cuts: tuple[int, ...]) -> np.ndarray:
    """0 (S), 1 (M) or 2 (L) per length."""
    return np.searchsorted(np.asarray(cuts), np.asarray(lengths), side="right").astype(np.int64)


@register_policy
class DynamoLLMPolicy(Policy):
    """Pools by predicted size; hierarchical instance / tp / frequency control."""

    name = "dynamollm"

    def __init__(self, profile: Any, cfg: Any) -> None:
        super().__init__(profile, cfg)
        if cfg.dyn_pools not in POOLINGS:
            raise ConfigError(f"--dyn-pools: unknown pooling {cfg.dyn_pools!r}; valid: {', '.join(POOLINGS)}")
        self.num_pools = {"io9": 9, "out3": 3, "single": 1}[cfg.dyn_pools]
        self.tps = tuple(cfg.dyn_tps or profile.tps)
        self.freqs = tuple(cfg.dyn_freqs_mhz or profile.freq_levels_mhz)
        self.old: dict[int, list[Any]] = {}
        self.plans: dict[int, Plan] = {}
        self.mispredicted = 0

    def assign_pools(self, workload: Any) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 12]))
        true_out = length_class(workload.output_len, OUTPUT_CUTS)
        wrong = rng.random(len(workload)) >= self.cfg.predictor_accuracy
        shift = rng.integers(1, 3, size=len(workload))
        pred = np.where(wrong, (true_out + shift) % 3, true_out)
        self.mispredicted = int(wrong.sum())
        if self.cfg.dyn_pools == "io9":
            pools = length_class(workload.input_len, INPUT_CUTS) * 3 + pred
        elif self.cfg.dyn_pools == "out3":
            pools = pred
        else:
            pools = np.zeros(len(workload), dtype=np.int64)
        arr = np.asarray(workload.arrival_s)
        self.arrivals = [arr[pools == p] for p in range(self.num_pools)]
        self.classes = pool_classes(workload, pools, self.num_pools)
        self.duration = float(workload.duration_s)
        return pools

    def _plan(self, pool: int, load: float, gpus: int | None = None, tps: tuple[int, ...] | None = None) -> Plan:
        ttft, tbt = self.targets()
        return plan_pool(self.profile, self.classes[pool], load, ttft, tbt, self.cfg.chunk_tokens, tps or self.tps, self.freqs, gpus)

    def setup(self, sim: Any) -> None:
        if self.cfg.cluster_period_s <= 0:  # no instance control: the static cluster, split by load
            counts = np.array([len(a) for a in self.arrivals], dtype=np.float64)
            share = counts / max(1.0, counts.sum())
            n = np.maximum(1, np.round(share * self.cfg.instances)).astype(int) if self.num_pools > 1 else [self.cfg.instances]
            for p in range(self.num_pools):
                for _ in range(int(n[p])):
                    sim.add_instance(p, self.cfg.tp, max(self.freqs))
            return
        window = min(self.cfg.cluster_period_s, max(1.0, self.duration))
        for p in range(self.num_pools):
            load = recent_peak_rate(self.arrivals[p], window, window, PEAK_WINDOW_S) * (1 + self.cfg.load_headroom)
            plan = self.plans[p] = self._plan(p, load)
            for _ in range(plan.instances):
                sim.add_instance(p, plan.tp, plan.freq_mhz)

    def periods(self) -> list[tuple[float, Callable[[Any, float], None]]]:
        out = []
        for period, fn in ((self.cfg.cluster_period_s, self._cluster), (self.cfg.pool_period_s, self._pool), (self.cfg.freq_period_s, self._freq)):
            if period > 0:
                out.append((period, fn))
        return out

    def _load(self, pool: int, t: float, *windows: float) -> float:
        """The highest of: the mean rate over each window up to a minute, the busiest minute of each longer one; plus headroom."""
        rates = [recent_rate(self.arrivals[pool], t, w) if w <= PEAK_WINDOW_S else recent_peak_rate(self.arrivals[pool], t, w, PEAK_WINDOW_S)
                 for w in windows]
        return max(rates) * (1 + self.cfg.load_headroom)

    def _busy(self, sim: Any, pool: int) -> bool:
        """A reconfiguration of the pool is still in flight."""
        return pool in self.old or any(not i.accepting and not i.draining for i in sim.pools[pool])

    def _cluster(self, sim: Any, t: float) -> None:
        for p in range(self.num_pools):
            if not self._busy(sim, p):
                self._apply(sim, p, self._plan(p, self._load(p, t, self.cfg.cluster_period_s, self.cfg.pool_period_s)))

    def _pool(self, sim: Any, t: float) -> None:
        for p in range(self.num_pools):
            cur = sim.accepting(p)
            if self._busy(sim, p) or not cur:
                continue
            load = self._load(p, t, self.cfg.pool_period_s, self.cfg.cluster_period_s)  # stay valid for the load the pool was sized for
            gpus = sum(i.tp for i in cur)
            now = self._plan(p, load, gpus=gpus, tps=(cur[0].tp,))
            alt = self._plan(p, load, gpus=gpus)
            if alt.tp != cur[0].tp and alt.power_w < now.power_w * (1 - RESHARD_GAIN):
                self._apply(sim, p, alt)

    def _freq(self, sim: Any, t: float) -> None:
        ttft, tbt = self.targets()
        for p in range(self.num_pools):
            cur = sim.accepting(p)
            if not cur:
                continue
            # the recent busiest minute too: a burst that came in the last pool period may come back
            per = self._load(p, t, FREQ_WINDOW_S, self.cfg.freq_period_s, self.cfg.pool_period_s) / len(cur)
            f = best_freq(self.profile, cur[0].tp, self.classes[p], per, ttft, tbt, self.cfg.chunk_tokens, self.freqs)
            for inst in cur:
                sim.set_freq(inst, f)

    def _apply(self, sim: Any, pool: int, plan: Plan) -> None:
        cur = sim.accepting(pool)
        self.plans[pool] = plan
        if cur and plan.tp == cur[0].tp:
            diff = plan.instances - len(cur)
            for _ in range(diff):
                sim.add_instance(pool, plan.tp, cur[0].freq, delay_s=sim.s.spinup_s)
            if diff < 0:
                for inst in sorted(cur, key=lambda i: (i.outstanding, -i.iid))[:-diff]:
                    sim.drain(inst)
            return
        sim.counters["reshards"] += 1
        self.old[pool] = cur
        for _ in range(plan.instances):
            sim.add_instance(pool, plan.tp, plan.freq_mhz, delay_s=sim.s.reshard_s)

    def on_ready(self, sim: Any, inst: Any) -> None:
        pool = inst.pool
        if pool in self.old and all(i.accepting or i.draining for i in sim.pools[pool]):
            for old in self.old.pop(pool):
                sim.drain(old)

    def summary(self, sim: Any) -> dict[str, Any]:
        return {"pools": self.num_pools, "mispredicted_requests": self.mispredicted}
