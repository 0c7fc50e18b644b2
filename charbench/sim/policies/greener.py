"""``greener``: the best static knob setting for the workload ("Towards Greener LLMs", arXiv 2403.20306).

No runtime control: before the run, the (tp, SM frequency, instances) that serves the trace's
peak load (highest mean rate over :data:`PEAK_WINDOW_S` windows, as static is sized, plus
``load_headroom``) within the
planning targets at the least modelled power is chosen from the profile, and kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from charbench.sim.planner import Plan, plan_pool
from charbench.sim.policies.base import PEAK_WINDOW_S, Policy, peak_rate, pool_classes
from charbench.sim.policies.registry import register_policy


@register_policy
class GreenerPolicy(Policy):
    """One pool at the offline-best static (tp, frequency, instances)."""

    name = "greener"
    plan: Plan | None = None

    def assign_pools(self, workload: Any) -> np.ndarray:
        pools = np.zeros(len(workload), dtype=np.int64)
        cls = pool_classes(workload, pools, 1)[0]
        load = peak_rate(workload.arrival_s, PEAK_WINDOW_S) * (1 + self.cfg.load_headroom)
        ttft, tbt = self.targets()
        tps = self.cfg.dyn_tps or self.profile.tps
        freqs = self.cfg.dyn_freqs_mhz or self.profile.freq_levels_mhz
        self.plan = plan_pool(self.profile, cls, load, ttft, tbt, self.cfg.chunk_tokens, tuple(tps), tuple(freqs))
        return pools

    def setup(self, sim: Any) -> None:
        assert self.plan is not None
        for _ in range(self.plan.instances):
            sim.add_instance(0, self.plan.tp, self.plan.freq_mhz)

    def summary(self, sim: Any) -> dict[str, Any]:
        assert self.plan is not None
        return {"greener_tp": self.plan.tp, "greener_sm_freq_mhz": self.plan.freq_mhz, "greener_instances": self.plan.instances}
