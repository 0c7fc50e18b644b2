"""The cluster-sim study: one point per policy (POLCA: per oversubscription), all on one trace."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from charbench.study import Study
from charbench.workloads.cluster import STUDY
from charbench.workloads.cluster.config import ClusterSimConfig


#: a power budget no cluster reaches (POLCA's uncapped twin)
UNCAPPED_W = 1e18
#: rows per part of the per-request table
REQUEST_PART = 200_000
#: metrics that need the profile's power (null when a measured profile has none)
POWER_METRICS: tuple[str, ...] = ("energy_kwh", "energy_per_request_wh", "carbon_kgco2e", "electricity_cost_usd", "cost_usd", "mean_power_w",
                                  "p50_power_w", "p99_power_w", "max_power_w", "reconfiguration_energy_kwh")


class ClusterSimStudy(Study):
    """Simulates the trace once per policy; per-request and timeline data go to named tables."""

    name = STUDY.command
    report_hook = STUDY.report_hook
    measures = False

    def __init__(self, cfg: ClusterSimConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._wl: Any = None

    def points(self) -> list[dict[str, Any]]:
        """Policies in the given order; POLCA once per oversubscription."""
        out: list[dict[str, Any]] = []
        for p in self.cfg.policies:
            if p == "polca":
                out += [{"policy": p, "polca_oversubscription": float(o)} for o in self.cfg.polca_oversubscription]
            else:
                out.append({"policy": p})
        return out

    def setup(self, ctx: Any) -> None:
        """Load the profile and the trace once (every point simulates the same requests)."""
        from charbench.sim.profiles import resolve_profile
        from charbench.workloads.cluster.traces import SyntheticSpec, azure_trace, carbon_intensity, fit_workload, synthetic_trace

        c = self.cfg
        self.profile = resolve_profile(c.profile, c.model, c.kv_capacity_tokens, max_batch=c.max_num_seqs)
        if c.tp not in self.profile.tps:
            from charbench.errors import ConfigError

            raise ConfigError(f"--tp {c.tp}: profile {self.profile.name} covers tp {', '.join(map(str, self.profile.tps))} for {c.model}")
        if c.trace == "synthetic":
            wl = synthetic_trace(SyntheticSpec(c.duration_s or 3600.0, c.mean_rate_rps, c.peak_to_mean, c.burst_per_h, c.burst_factor,
                                               length_dist=c.length_dist, start_hour=c.start_hour), seed=ctx.seed)
        else:
            wl = azure_trace(Path(c.trace), c.time_scale, c.trace_start_s, c.duration_s)
        op = self.profile.point(c.tp, self.profile.max_freq_mhz)
        max_ctx = min(op.kv_capacity_tokens // 2, self._model_context())
        self._wl, self.clipped = fit_workload(wl, max_ctx)
        self.intensity, self.carbon_source = carbon_intensity(Path(c.carbon_file) if c.carbon_file else None, c.start_hour)
        self.instances = c.instances or self._provision()
        ctx.log(f"cluster-sim: {len(self._wl)} requests ({self._wl.source}); {self.instances} static instances of tp {c.tp}; profile {self.profile.name} ({self.profile.kind})")

    def _model_context(self) -> int:
        from charbench.sim.hardware import MODELS

        spec = MODELS.get(self.profile.model.lower())
        return spec.max_context if spec is not None else 1 << 30

    def _provision(self) -> int:
        """Static instances for the trace's peak (``PEAK_WINDOW_S`` windows + load headroom) at the maximum clock.

        The papers' baseline is sized for the peak; a window as short as a burst keeps the
        bursts inside it (5-minute means hid them and left static under-provisioned).
        """
        from charbench.sim.planner import plan_pool
        from charbench.sim.policies.base import PEAK_WINDOW_S, peak_rate, pool_classes

        c = self.cfg
        pc = c.policy_config(1, 0)
        cls = pool_classes(self._wl, np.zeros(len(self._wl), dtype=np.int64), 1)[0]
        load = peak_rate(self._wl.arrival_s, PEAK_WINDOW_S) * (1 + c.load_headroom)
        ttft, tbt = pc.slo_ttft_s * pc.plan_headroom, pc.slo_tbt_s * pc.plan_headroom
        plan = plan_pool(self.profile, cls, load, ttft, tbt, c.chunk_tokens, (c.tp,), (self.profile.max_freq_mhz,))
        return plan.instances

    def run_point(self, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """Simulate one policy; write its requests and timelines; return its metrics."""
        import pandas as pd

        from charbench.sim import SimSettings, simulate
        from charbench.sim.metrics import Costs, cluster_power_bins, summarize
        from charbench.sim.policies import policy_class
        from charbench.workloads.cluster.traces import ELECTRICITY_USD_PER_KWH, GPU_USD_PER_H

        c = self.cfg
        name = params["policy"]
        pc = c.policy_config(self.instances, ctx.seed)
        if name == "polca":
            pc = dataclasses.replace(pc, polca_oversubscription=params["polca_oversubscription"])
        policy = policy_class(name)(self.profile, pc)
        dur = self._wl.duration_s
        bin_s = c.bin_s or max(1.0, dur / 720.0)
        settings = SimSettings(max_num_seqs=c.max_num_seqs, chunk_tokens=c.chunk_tokens, routing=c.routing, bin_s=bin_s,
                               gpus_per_row=c.gpus_per_row, spinup_s=c.spinup_s, reshard_s=c.reshard_s, freq_change_s=c.freq_change_s,
                               progress=_progress_printer(ctx, name, dur))
        t0 = time.perf_counter()
        res = simulate(self.profile, self._wl, policy, settings)
        wall = time.perf_counter() - t0
        price = c.gpu_usd_per_h if c.gpu_usd_per_h is not None else GPU_USD_PER_H.get(self.profile.gpu, GPU_USD_PER_H["unknown"])
        costs = Costs(pc.slo_ttft_s, pc.slo_tbt_s, price, c.electricity_usd_per_kwh if c.electricity_usd_per_kwh is not None else ELECTRICITY_USD_PER_KWH)
        rec: dict[str, Any] = summarize(res, costs, self.intensity)
        if name == "polca":  # its uncapped twin: what the power capping itself costs (POLCA's measure)
            twin = simulate(self.profile, self._wl, policy_class(name)(self.profile, dataclasses.replace(pc, polca_budget_w=UNCAPPED_W)),
                            dataclasses.replace(settings, progress=None))
            rec["p99_uncapped_ttft_ms"] = float(np.percentile(twin.ttft_s, 99)) * 1000
            rec["p99_uncapped_tbt_ms"] = float(np.percentile(twin.tpot_s, 99)) * 1000
        if not self.profile.power_measured:  # a measured profile without power: energy is unknown, not 0
            for k in POWER_METRICS:
                rec[k] = None
        rec.update({k: v for k, v in res.extra.items()})
        rec.update({
            "profile": self.profile.name, "profile_kind": self.profile.kind, "model": self.profile.model, "tp": c.tp,
            "static_instances": self.instances, "peak_instances": int(res.bins.frame_data()[1 + res.pools: 1 + 2 * res.pools].sum(axis=0).max() / bin_s + 0.5) if res.bins.used else 0,
            "clipped_requests": self.clipped, "trace": self._wl.source, "carbon_source": self.carbon_source,
            "gpu_usd_per_h": price, "profile_provenance": json.dumps(self.profile.provenance, sort_keys=True),
            "sim_wall_s": wall, "sim_speed_rps": rec["request_count"] / wall if wall > 0 else None,
        })
        # per-request and timeline data are tables, not records
        label = name if name != "polca" else f"polca+{params['polca_oversubscription']:g}"
        # one part per REQUEST_PART rows: the table never exists as one frame in memory
        for lo in range(0, len(res.arrival_s), REQUEST_PART):
            sl = slice(lo, lo + REQUEST_PART)
            arr, first, fin, outl = res.arrival_s[sl], res.first_token_s[sl], res.finish_s[sl], res.output_len[sl]
            gaps = np.maximum(outl - 1, 1)
            ctx.store.append_table("requests", pd.DataFrame({
                "policy": label, "arrival_s": arr, "input_len": res.input_len[sl], "output_len": outl, "pool": res.pool[sl],
                "ttft_ms": (first - arr) * 1000, "tbt_ms": np.where(outl > 1, (fin - first) / gaps, 0.0) * 1000, "e2el_ms": (fin - arr) * 1000,
                "preemption_count": res.preemptions[sl],
            }))
        data, starts = res.bins.frame_data(), res.bins.starts()
        frames = [pd.DataFrame({"policy": label, "t_s": starts, "pool": -1, "arrival_rps": data[0] / bin_s, "power_w": cluster_power_bins(res),
                                "instances": data[1 + res.pools: 1 + 2 * res.pools].sum(axis=0) / bin_s,
                                "mean_sm_freq_mhz": _ratio(data[1 + 2 * res.pools: 1 + 3 * res.pools].sum(axis=0), data[1 + res.pools: 1 + 2 * res.pools].sum(axis=0))})]
        for p in range(res.pools):
            frames.append(pd.DataFrame({"policy": label, "t_s": starts, "pool": p, "arrival_rps": np.nan, "power_w": data[1 + p] / bin_s,
                                        "instances": data[1 + res.pools + p] / bin_s,
                                        "mean_sm_freq_mhz": _ratio(data[1 + 2 * res.pools + p], data[1 + res.pools + p])}))
        ctx.store.append_table("timeline", pd.concat(frames, ignore_index=True))
        if not self.profile.power_measured:
            from charbench.record import Record

            out = Record(rec)
            for k in POWER_METRICS:
                out.null(k, f"profile {self.profile.name} has no measured power (mean_power_w null)")
            return out  # type: ignore[return-value]
        return rec

    def finalize(self, store: Any, ctx: Any) -> dict[str, Any]:
        """The comparison table across policies (deltas against static), also as a named table."""
        from charbench.workloads.cluster.analysis import comparison

        recs = store.records()
        if not recs:
            return {}
        table = comparison(recs)
        store.write_table("comparison", table)
        return {"comparison": table.to_dict("records")}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _progress_printer(ctx: Any, name: str, duration_s: float) -> Any:
    """Progress in simulated time: a log line every ~10% of the arrivals."""
    state = {"next": 0.1}

    def show(t: float, done: int) -> None:
        frac = t / duration_s if duration_s > 0 else 1.0
        if frac >= state["next"]:
            state["next"] = frac + 0.1
            ctx.log(f"  {name}: simulated {t / 3600:.2f} h of {duration_s / 3600:.2f} h, {done} requests done")
    return show
