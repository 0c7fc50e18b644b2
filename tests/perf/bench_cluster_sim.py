"""Benchmark: cluster-sim's speed (simulated requests per wall-second) and memory at scale.

Scenarios:

* ``vidur``: the speed anchor's scenario (../shared/vidur/README.md): llama-2-7b on one A100
  replica, 10k requests, Poisson at 1.7 req/s, uniform 1024-4096 tokens with prefill:decode 10,
  chunk 512, batch cap 128. Vidur does about 420-460 requests per wall-second on a 2-core box.
* ``week``: one simulated week of a conversation-like trace (>= 1M requests) on a 100-instance
  cluster (llama-2-13b, A100, tp 1, static policy); also run for one day to show memory.

Run::

    .venv/bin/python tests/perf/bench_cluster_sim.py --json-out bench_cluster_sim.json
    .venv/bin/python tests/perf/bench_cluster_sim.py --quick      # vidur scenario + one simulated day
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from charbench.sim import SimSettings, Workload, simulate
from charbench.sim.policies import PolicyConfig, policy_class
from charbench.sim.profiles import analytic_profile
from charbench.workloads.cluster.traces import SyntheticSpec, fit_workload, synthetic_trace


def _vidur_workload(n: int, qps: float, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / qps, n))
    total = rng.integers(1024, 4097, n)
    dec = np.maximum(1, total // 11)
    return Workload(t, total - dec, dec, float(t[-1]), "vidur-like uniform")


def _run(model: str, gpu: str, wl: Workload, instances: int, tp: int) -> dict[str, float]:
    prof = analytic_profile(gpu, model, max_batch=128)
    policy = policy_class("static")(prof, PolicyConfig(tp=tp, instances=instances))
    t0 = time.perf_counter()
    res = simulate(prof, wl, policy, SimSettings(max_num_seqs=128, chunk_tokens=512, bin_s=60.0))
    wall = time.perf_counter() - t0
    assert (res.finish_count == 1).all()
    return {"requests": len(wl), "wall_s": wall, "requests_per_wall_s": len(wl) / wall,
            "simulated_h": res.end_s / 3600, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "p50_ttft_ms": float(np.median(res.ttft_s)) * 1000, "energy_kwh": res.energy_j / 3.6e6}


def main() -> None:
    """Run the scenarios and print (and optionally save) the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="vidur scenario + one simulated day only")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    out: dict[str, object] = {"loadavg": os.getloadavg()}
    out["vidur"] = _run("llama-2-7b", "a100", _vidur_workload(10_000, 1.7), 1, 1)
    print("vidur scenario:", out["vidur"], flush=True)
    days = [1] if args.quick else [1, 7]
    for d in days:
        wl = synthetic_trace(SyntheticSpec(duration_s=d * 86_400.0, mean_rate_rps=1.75, peak_to_mean=1.7, burst_per_h=1), seed=0)
        wl, _ = fit_workload(wl, 4096)
        out[f"{d}d"] = _run("llama-2-13b", "a100", wl, 100, 1)
        print(f"{d} simulated day(s):", out[f"{d}d"], flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
