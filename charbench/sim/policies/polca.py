"""``polca``: power oversubscription with frequency capping (Patel et al., ASPLOS'24, arXiv 2308.12908).

POLCA deploys ``polca_oversubscription`` more servers (whole instances; each with its share
of load: the offered load grows by the instances actually added) under the power budget of the static cluster's
servers (``polca_budget_w``; default: static's instances at full prefill power, i.e. their
provisioned peak). Every ``polca_period_s`` it reads each row's power as telemetry reports
it, the mean over the last period (the row's energy counter difference / period; an
instantaneous sample would see every prefill iteration's spike):

* above T1 (80% of the row budget): low-priority instances (``polca_lp_fraction`` of them;
  they serve the same pool as the others) capped (A100: 1275 of 1410 MHz);
* above T2 (89%): low priority to 1110 MHz and high priority to 1305 MHz;
* above 100%: the power brake, every GPU to the profile's lowest clock (the paper's
  ~288 MHz is below what the profiles cover);
* a level is left when power falls ``polca_hysteresis`` below its threshold.

Caps take effect ``polca_cap_latency_s`` after the decision (out-of-band capping is slow), the
brake after ``polca_brake_latency_s``. Caps are fractions of the maximum clock snapped to the
profile's levels. With no reachable budget it never caps and equals ``static``.
"""

from __future__ import annotations

from typing import Any, Callable


from charbench.sim.policies.base import Policy, snap
from charbench.sim.policies.registry import register_policy

@register_policy
class PolcaPolicy(Policy):
    """Two-threshold frequency capping of a row power budget, with a power brake."""

    name = "polca"

    def __init__(self, profile: Any, cfg: Any) -> None:
        super().__init__(profile, cfg)
        self.n = max(1, round(cfg.instances * (1.0 + cfg.polca_oversubscription)))
        # the load grows with the servers actually added (8 instances + 5% is still 8)
        self.load_factor = self.n / cfg.instances
        self.throttle_events = 0
        self.brake_events = 0
        self.level_time: dict[int, float] = {1: 0.0, 2: 0.0, 3: 0.0}

    @property
    def initial_gpus(self) -> int:
        return self.n * self.cfg.tp

    def setup(self, sim: Any) -> None:
        n_lp = round(self.n * self.cfg.polca_lp_fraction)
        fmax = self.profile.max_freq_mhz
        # one pool, as static: priority marks which instances are capped first, it does not
        # split the cluster (a split would cost tail latency through lost pooling, caps or not)
        self.lp_ids: set[int] = set()
        for k in range(self.n):
            inst = sim.add_instance(0, self.cfg.tp, fmax)
            if k < n_lp:
                self.lp_ids.add(inst.iid)
        budget = self.cfg.polca_budget_w
        if budget is None:
            budget = self.cfg.instances * self.profile.point(self.cfg.tp, fmax).prefill_w
        self.budget_w = float(budget)
        self.row_budget = self.budget_w / sim.rows
        self.level = [0] * sim.rows
        self.pending = [0] * sim.rows
        self.last_e = [0.0] * sim.rows
        self.last_t = 0.0
        self.since = [0.0] * sim.rows

    def periods(self) -> list[tuple[float, Callable[[Any, float], None]]]:
        return [(self.cfg.polca_period_s, self._tick)]

    def _desired(self, row: int, frac: float) -> int:
        c = self.cfg
        up = 3 if frac > 1.0 else 2 if frac > c.polca_t2 else 1 if frac > c.polca_t1 else 0
        cur = self.pending[row]
        if up >= cur:
            return up
        thresholds = {1: c.polca_t1, 2: c.polca_t2, 3: 1.0}
        level = cur
        while level > up and frac < thresholds[level] - c.polca_hysteresis:
            level -= 1
        return level

    def _tick(self, sim: Any, t: float) -> None:
        span = t - self.last_t
        self.last_t = t
        for row in range(sim.rows):
            e = sim.row_energy_j(row)
            mean_w = (e - self.last_e[row]) / span if span > 0 else sim.row_power_w(row)
            self.last_e[row] = e
            want = self._desired(row, mean_w / self.row_budget)
            if want != self.pending[row]:
                self.pending[row] = want
                delay = self.cfg.polca_brake_latency_s if want == 3 else self.cfg.polca_cap_latency_s
                sim.schedule(t + delay, lambda s, when, r=row, lv=want: self._apply(s, when, r, lv))

    def _freqs(self, level: int) -> tuple[float, float]:
        c, levels, fmax = self.cfg, self.profile.freq_levels_mhz, self.profile.max_freq_mhz
        if level == 0:
            return fmax, fmax
        if level == 1:
            return fmax, snap(levels, c.polca_t1_lp * fmax)
        if level == 2:
            return snap(levels, c.polca_t2_hp * fmax), snap(levels, c.polca_t2_lp * fmax)
        return levels[0], levels[0]

    def _apply(self, sim: Any, t: float, row: int, level: int) -> None:
        if level != self.pending[row] or level == self.level[row]:
            return  # superseded by a later decision, or already there
        old = self.level[row]
        if old > 0:
            self.level_time[old] += t - self.since[row]
        if old == 0 and level > 0:
            self.throttle_events += 1
        if level == 3:
            self.brake_events += 1
        self.level[row], self.since[row] = level, t
        hp_f, lp_f = self._freqs(level)
        for inst in sim.instances:
            if inst.alive and inst.row == row:
                sim.set_freq(inst, lp_f if inst.iid in self.lp_ids else hp_f)

    def summary(self, sim: Any) -> dict[str, Any]:
        for row in range(sim.rows):
            if self.level[row] > 0:
                self.level_time[self.level[row]] += sim.t - self.since[row]
                self.since[row] = sim.t
        return {
            "servers": self.n * self.cfg.tp / 8,
            "polca_added_servers_frac": self.n / self.cfg.instances - 1.0,
            "power_budget_w": self.budget_w,
            "throttle_events": self.throttle_events,
            "power_brake_events": self.brake_events,
            "t1_capped_s": self.level_time[1],
            "t2_capped_s": self.level_time[2],
            "braked_s": self.level_time[3],
        }
