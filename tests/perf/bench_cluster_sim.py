"""Benchmark: cluster-sim's speed against Vidur (same run), and memory at 1 day vs 1 week.

Scenarios (each in its own process, so every figure has its own wall time and peak RSS):

* ``vidur``: the speed anchor (../shared/vidur/README.md): llama-2-7b on one A100 replica,
  10k requests, Poisson at 1.7 req/s, uniform 1024-4096 tokens with prefill:decode 10,
  chunk 512, batch cap 128 (charbench: static policy on Vidur's own llama-2-7b/A100 MLP
  profile through ``vidur_profile``, so both simulate the same measured operator costs; the
  analytic A100 profile when ../shared/vidur is absent).
* Vidur itself on that scenario, installed by this benchmark in its own venv
  (``--vidur-venv``, default ``$CHARBENCH_HOME/cache/bench/vidur-venv``; ``pip install
  vidur==0.0.26``) and run offline on a writable copy of ../shared/vidur/profiling_data. A
  short warm-up run (200 requests) trains and caches Vidur's predictors first; the timed run
  is the 10k one. Speed = requests / process wall time for both simulators (startup
  included), requests / process CPU time (user + sys; what a shared machine's load does not
  distort), and charbench's loop-only figure.
* ``1d`` / ``7d``: one simulated day / week of a conversation-like trace (>= 1M requests in
  the week) on a 100-instance cluster (llama-2-13b, A100, tp 1, static policy); peak RSS of
  each process shows whether memory stays flat in trace length.

Run::

    .venv/bin/python tests/perf/bench_cluster_sim.py --json-out bench_cluster_sim.json
    .venv/bin/python tests/perf/bench_cluster_sim.py --quick      # vidur scenario (both simulators) + one day
    .venv/bin/python tests/perf/bench_cluster_sim.py --no-vidur   # charbench only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VIDUR_VERSION = "0.0.26"
VIDUR_REQUESTS = 10_000
VIDUR_QPS = 1.7
SPEED_TARGET_X, SPEED_AIM_X = 10.0, 30.0
SHARED_VIDUR = Path(__file__).resolve().parents[2].parent / "shared" / "vidur"


def _vidur_workload(n: int, qps: float, seed: int = 0) -> Any:
    import numpy as np

    from charbench.sim import Workload

    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / qps, n))
    total = rng.integers(1024, 4097, n)
    dec = np.maximum(1, total // 11)  # prefill:decode = 10
    return Workload(t, total - dec, dec, float(t[-1]), "vidur-like uniform")


def child(scenario: str) -> dict[str, Any]:
    """One scenario in this process: simulated requests per wall-second and this process's peak RSS."""
    t_proc = time.perf_counter()
    from charbench.sim import SimSettings, simulate
    from charbench.sim.policies import PolicyConfig, policy_class
    from charbench.sim.profiles import analytic_profile
    from charbench.workloads.cluster.traces import SyntheticSpec, fit_workload, synthetic_trace

    if scenario == "vidur":
        model, gpu, instances, wl = "llama-2-7b", "a100", 1, _vidur_workload(VIDUR_REQUESTS, VIDUR_QPS)
    else:
        days = {"1d": 1, "7d": 7}[scenario]
        wl = synthetic_trace(SyntheticSpec(duration_s=days * 86_400.0, mean_rate_rps=1.75, peak_to_mean=1.7, burst_per_h=1), seed=0)
        wl, _ = fit_workload(wl, 4096)
        model, gpu, instances = "llama-2-13b", "a100", 100
    vidur_ds = SHARED_VIDUR / "profiling_data" / "compute" / "datasets--local--vidur-llama-2-7b-a100"
    if scenario == "vidur" and vidur_ds.is_dir():  # the same measured MLP table Vidur uses: the scenarios match
        from charbench.sim.profiles import vidur_profile

        prof = vidur_profile(vidur_ds, max_batch=128)
    else:
        prof = analytic_profile(gpu, model, max_batch=128)
    policy = policy_class("static")(prof, PolicyConfig(tp=1, instances=instances))
    t0 = time.perf_counter()
    res = simulate(prof, wl, policy, SimSettings(max_num_seqs=128, chunk_tokens=512, bin_s=60.0))
    wall = time.perf_counter() - t0
    assert (res.finish_count == 1).all()
    import numpy as np

    return {"scenario": scenario, "requests": len(wl), "sim_wall_s": wall, "requests_per_sim_wall_s": len(wl) / wall,
            "process_wall_s": time.perf_counter() - t_proc, "simulated_h": res.end_s / 3600,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "p50_ttft_ms": float(np.median(res.ttft_s)) * 1000, "preemption_count": int(res.counters["preemption_count"]),
            "profile": prof.name}


def _child_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _spawn(scenario: str) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), _child_cpu_s()
    out = subprocess.run([sys.executable, __file__, "--child", scenario], check=True, capture_output=True, text=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["process_wall_s"] = time.perf_counter() - t0  # interpreter start included, as for Vidur
    rec["process_cpu_s"] = _child_cpu_s() - c0  # user + sys: comparable across a shared machine's load
    rec["requests_per_process_wall_s"] = rec["requests"] / rec["process_wall_s"]
    rec["requests_per_cpu_s"] = rec["requests"] / rec["process_cpu_s"]
    return rec


def ensure_vidur(venv: Path) -> Path:
    """Vidur in its own venv (created on first use); returns its python."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import vidur"], capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"vidur=={VIDUR_VERSION}"], check=True)
    return py


def vidur_args(cache: Path, out: Path, n: int) -> list[str]:
    """The recipe of ../shared/vidur/README.md (sarathi, chunk 512, batch cap 128, uniform lengths, no plots or trace)."""
    p = "--random_forrest_execution_time_predictor_config"
    return ["-m", "vidur.main",
            "--replica_config_model_name", "meta-llama/Llama-2-7b-hf", "--replica_config_device", "a100",
            "--replica_config_network_device", "a100_dgx", "--replica_config_tensor_parallel_size", "1",
            "--replica_config_num_pipeline_stages", "1", "--cluster_config_num_replicas", "1",
            "--replica_scheduler_config_type", "sarathi", "--sarathi_scheduler_config_batch_size_cap", "128",
            "--sarathi_scheduler_config_chunk_size", "512", "--request_generator_config_type", "synthetic",
            "--synthetic_request_generator_config_num_requests", str(n), "--interval_generator_config_type", "poisson",
            "--poisson_request_interval_generator_config_qps", str(VIDUR_QPS), "--length_generator_config_type", "uniform",
            "--uniform_request_length_generator_config_min_tokens", "1024", "--uniform_request_length_generator_config_max_tokens", "4096",
            "--uniform_request_length_generator_config_prefill_to_decode_ratio", "10",
            "--execution_time_predictor_config_type", "random_forrest",
            f"{p}_model_profiling_dataset", "local/vidur-llama-2-7b-a100", f"{p}_network_profiling_dataset", "local/vidur-a100_dgx",
            f"{p}_cache_dir", str(cache), f"{p}_prediction_max_tokens_per_request", "8192",
            f"{p}_num_estimators", "250", f"{p}_max_depth", "16", f"{p}_min_samples_split", "2",
            "--metrics_config_output_dir", str(out), "--no-metrics_config_store_plots", "--no-metrics_config_enable_chrome_trace"]


def run_vidur(venv: Path, data: Path) -> dict[str, Any]:
    """Vidur on the anchor scenario: a warm-up (trains its predictors), then the timed 10k run."""
    py = ensure_vidur(venv)
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="vidur-") as tmp:
        cache = Path(tmp) / "vidur"  # the README's "copy of this folder" (Vidur writes predictors into it)
        shutil.copytree(data / "profiling_data", cache / "profiling_data")
        warm = time.perf_counter()
        w = subprocess.run([str(py), *vidur_args(cache, Path(tmp) / "warm", 200)], env=env, capture_output=True, text=True)
        if w.returncode != 0:
            raise RuntimeError(f"vidur warm-up failed: {w.stderr[-3000:]}")
        warm = time.perf_counter() - warm
        t0, c0 = time.perf_counter(), _child_cpu_s()
        proc = subprocess.run([str(py), *vidur_args(cache, Path(tmp) / "run", VIDUR_REQUESTS)], env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, _child_cpu_s() - c0
        if proc.returncode != 0:
            raise RuntimeError(f"vidur failed: {proc.stderr[-3000:]}")
        # the largest child so far: Vidur's runs dwarf the charbench child spawned before them
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"requests": VIDUR_REQUESTS, "process_wall_s": wall, "requests_per_process_wall_s": VIDUR_REQUESTS / wall,
            "process_cpu_s": cpu, "requests_per_cpu_s": VIDUR_REQUESTS / cpu,
            "warmup_wall_s": warm, "peak_rss_mb": rss, "version": VIDUR_VERSION}


def main() -> None:
    """Run the scenarios and print (and optionally save) the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="vidur scenario + one simulated day only")
    ap.add_argument("--no-vidur", action="store_true", help="skip installing and running Vidur")
    ap.add_argument("--vidur-venv", type=Path, default=None)
    ap.add_argument("--vidur-data", type=Path, default=SHARED_VIDUR)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    out: dict[str, Any] = {"loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}
    out["charbench_vidur_scenario"] = _spawn("vidur")
    print("charbench, vidur scenario:", out["charbench_vidur_scenario"], flush=True)
    if not args.no_vidur:
        home = Path(os.environ.get("CHARBENCH_HOME", Path.home() / ".charbench"))
        venv = args.vidur_venv or home / "cache" / "bench" / "vidur-venv"
        out["vidur"] = run_vidur(venv, args.vidur_data)
        print("vidur:", out["vidur"], flush=True)
        ours, theirs = out["charbench_vidur_scenario"], out["vidur"]
        out["speedup_process_wall_x"] = ours["requests_per_process_wall_s"] / theirs["requests_per_process_wall_s"]
        out["speedup_cpu_time_x"] = ours["requests_per_cpu_s"] / theirs["requests_per_cpu_s"]
        out["speedup_sim_loop_vs_vidur_process_x"] = ours["requests_per_sim_wall_s"] / theirs["requests_per_process_wall_s"]
        print(f"speed-up (process wall, startup included): {out['speedup_process_wall_x']:.1f}x; per CPU second: {out['speedup_cpu_time_x']:.1f}x; "
              f"charbench loop vs Vidur process: {out['speedup_sim_loop_vs_vidur_process_x']:.1f}x (target >= {SPEED_TARGET_X:g}x, aim {SPEED_AIM_X:g}x)",
              flush=True)
    for d in (["1d"] if args.quick else ["1d", "7d"]):
        out[d] = _spawn(d)
        print(f"{d}:", out[d], flush=True)
    out["loadavg_end"] = os.getloadavg()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
