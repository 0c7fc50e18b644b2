"""Benchmarks of issue 13 (long context) on CPU, one torch thread per rank.

Sections (``--only`` picks some; each prints one JSON object and appends it to ``--out``):

* ``kvp``: decode step time at 64K context, kvp=2 vs kvp=1 (target <= 0.65x). The prompt's
  KV is filled with random values (``synthetic_prefill``: decode cost only, labeled) unless
  ``--kvp-real-prefill``.
* ``spp``: TTFT of a 32K prompt, spp=2 vs spp=1 (target <= 0.65x); real prefill.
* ``adaptive-ttft``: TTFT of a 16K prompt on the single-rank engine, adaptive chunking vs
  one-shot prefill (target: <= 10% more).
* ``mixed-tbt``: a 32K prompt arriving while 8 requests decode; p99 TBT of the decodes
  during the prefill with adaptive chunking (target: within the SLO) and fixed 2048-token
  chunks (expected: above it).
* ``long``: a 128K-token prompt + 32 decode steps with kvp=2 on ``tiny-long``; memory per rank
  (``--long-synthetic``: random KV instead of the prefill, labeled; the real prefill is
  about 2.6e13 FLOPs on rank 0, roughly 25 minutes of one free core).

Run::

    .venv/bin/python tests/perf/bench_long_context.py --out /tmp/lc.jsonl            # all, full sizes
    .venv/bin/python tests/perf/bench_long_context.py --only spp --spp-context 8192  # one, smaller

Method: ``charbench.engine.lc_runner.launch`` on gloo ranks (spawned processes) for kvp, spp
and long; ``charbench.engine.engine.LLMEngine`` for the chunking sections, whose adaptive
policy uses a predictor fitted from profiled iterations of the same engine
(``charbench.engine.chunk_profile``; cached in ``$CHARBENCH_HOME/cache/bench-long-context``).
Times are ``perf_counter``; process start-up and weight init are excluded. Every section
records ``uptime``'s load average before and after, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from charbench.engine.adaptive_chunking import AdaptiveChunkPolicy
from charbench.engine.api import EngineConfig, SamplingParams
from charbench.engine.chunk_profile import PROFILE_GRIDS, ProfileGrid, cached_predictor
from charbench.engine.chunking import FixedChunkPolicy
from charbench.engine.engine import LLMEngine
from charbench.engine.lc_runner import GenerateSpec, launch
from charbench.engine.parallel import Layout
from charbench.prepare_cache import PrepareCache

MODEL = "tiny-long"
PROFILE = ProfileGrid(chunks=(0, 32, 128, 512, 2048), contexts=(0, 8192, 24576), decodes=(0, 8),
                      decode_contexts=(128, 1024), repeats=1)
"""Iterations profiled for the chunking sections' predictor (up to 26.6K tokens)."""


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _chunks(n: int, chunk: int) -> list[int]:
    return [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])


def _lc(layout: str, context: int, chunk: int, new_tokens: int, synthetic: bool = False) -> dict[str, Any]:
    lay = Layout.parse(layout)
    per_rank = -(-(context + new_tokens) // lay.kvp)
    t0 = time.perf_counter()
    res = launch(lay, GenerateSpec(MODEL, _prompt(context), _chunks(context, chunk), new_tokens, per_rank,
                                   synthetic_prefill=synthetic))
    return {
        "layout": lay.label, "context": context, "chunk": chunk, "decode_steps": new_tokens - 1,
        "synthetic_prefill": res.synthetic_prefill,
        "ttft_s": None if res.synthetic_prefill else res.ttft_s,
        "median_tbt_ms": statistics.median(res.tbt_s) * 1e3 if res.tbt_s else None,
        "max_kv_mib_per_rank": max(res.kv_bytes_per_rank) / 2**20,
        "kv_mib_per_rank": [b / 2**20 for b in res.kv_bytes_per_rank],
        "decode_kvp_bytes_per_step": res.comm_bytes_per_step["kvp"],
        "wall_s": time.perf_counter() - t0,
    }


def bench_kvp(args: argparse.Namespace) -> dict[str, Any]:
    """kvp=2 vs kvp=1 decode step time."""
    runs = {lay: _lc(lay, args.kvp_context, args.chunk, args.decode_steps + 1, not args.kvp_real_prefill)
            for lay in ("1x1x1", "kvp=2")}
    ratio = runs["kvp=2"]["median_tbt_ms"] / runs["1x1x1"]["median_tbt_ms"]
    return {"runs": runs, "kvp2_over_kvp1_tbt": ratio, "target": "<= 0.65", "met": ratio <= 0.65}


def bench_spp(args: argparse.Namespace) -> dict[str, Any]:
    """spp=2 vs spp=1 TTFT (real prefill)."""
    runs = {lay: _lc(lay, args.spp_context, args.chunk, 2) for lay in ("1x1x1", "spp=2")}
    ratio = runs["spp=2"]["ttft_s"] / runs["1x1x1"]["ttft_s"]
    return {"runs": runs, "spp2_over_spp1_ttft": ratio, "target": "<= 0.65", "met": ratio <= 0.65}


def _engine_cfg(budget: int, tokens: int) -> EngineConfig:
    gb = 2 * tokens * 4 * 4 * 32 * 4 / 2**30 * 1.2 + 0.01  # K+V x layers x kv heads x dim x fp32
    return EngineConfig(model=MODEL, kv_cache_gb=gb, max_num_seqs=16, max_num_batched_tokens=budget,
                        max_model_len=tokens + 64)


def _predictor(args: argparse.Namespace) -> Any:
    grid = PROFILE if args.profile == "bench" else PROFILE_GRIDS[args.profile]
    cfg = _engine_cfg(4096, grid.max_tokens())
    return cached_predictor(PrepareCache.for_study("bench-long-context"), cfg, grid)


def _ttft(policy: Any, context: int, budget: int) -> dict[str, Any]:
    eng = LLMEngine(_engine_cfg(budget, context), chunk_policy=policy)
    try:
        eng.add_request("warm", _prompt(64, 9), SamplingParams(max_tokens=1))
        while eng.has_unfinished():
            eng.step()
        eng.add_request("long", _prompt(context), SamplingParams(max_tokens=1))
        steps = 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
        rec = eng.get_record("long")
        return {"ttft_ms": rec.ttft_ms, "iterations": steps}
    finally:
        eng.shutdown()


def bench_adaptive_ttft(args: argparse.Namespace) -> dict[str, Any]:
    """Adaptive chunking vs one-shot prefill TTFT at 16K, no decodes."""
    got = _predictor(args)
    n = args.ttft_context
    one_shot = _ttft(FixedChunkPolicy(None), n, n)
    policy = AdaptiveChunkPolicy(got.predictor, args.tbt_slo_ms / 1e3, min_chunk=32, max_chunk=8192,
                                 online_correction=args.online_correction)
    adaptive = _ttft(policy, n, 8192)
    adaptive["final_correction"] = policy.correction
    adaptive["chunks"] = [c for _, c in policy.history]
    cost = adaptive["ttft_ms"] / one_shot["ttft_ms"] - 1
    return {"context": n, "tbt_slo_ms": args.tbt_slo_ms, "online_correction": args.online_correction, "one_shot": one_shot, "adaptive": adaptive,
            "adaptive_ttft_cost_frac": cost, "target": "<= 0.10", "met": cost <= 0.10,
            "predictor": {"coef": got.predictor.coef, "fit_error": got.error, "cache_hit": got.hit}}


def _mixed(policy: Any, context: int, decodes: int, budget: int) -> dict[str, Any]:
    eng = LLMEngine(_engine_cfg(budget, context + decodes * 4096), chunk_policy=policy)
    try:
        for i in range(decodes):
            eng.add_request(f"d{i}", _prompt(128, 100 + i), SamplingParams(max_tokens=4000, ignore_eos=True))
        while any(eng.get_record(f"d{i}").first_token_time_s is None for i in range(decodes)):
            eng.step()
        for _ in range(3):  # a few decode-only iterations before the long prompt arrives
            eng.step()
        if hasattr(policy, "history"):
            policy.history.clear()  # keep the long prompt's chunks only
        eng.add_request("long", _prompt(context), SamplingParams(max_tokens=1))
        arrival = eng.get_record("long").arrival_time_s
        while eng.get_record("long").first_token_time_s is None:
            eng.step()
        end = eng.get_record("long").first_token_time_s
        gaps = []
        for i in range(decodes):
            t = eng.get_record(f"d{i}").token_times_s
            gaps += [(b - a) * 1e3 for a, b in zip(t, t[1:]) if arrival < b <= end]
        ttft = eng.get_record("long").ttft_ms
        for i in range(decodes):
            eng.abort(f"d{i}")
    finally:
        eng.shutdown()
    gaps.sort()
    p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else None
    return {"p99_tbt_ms": p99, "p50_tbt_ms": statistics.median(gaps) if gaps else None,
            "max_tbt_ms": max(gaps) if gaps else None, "tbt_samples": len(gaps), "long_ttft_ms": ttft}


def bench_mixed_tbt(args: argparse.Namespace) -> dict[str, Any]:
    """A 32K prefill arriving during 8 decodes: adaptive vs fixed 2048-token chunks."""
    got = _predictor(args)
    slo = args.tbt_slo_ms
    policy = AdaptiveChunkPolicy(got.predictor, slo / 1e3, min_chunk=32, max_chunk=8192,
                                 online_correction=args.online_correction)
    adaptive = _mixed(policy, args.mixed_context, args.decodes, 8192)
    adaptive["final_correction"] = policy.correction
    hist = policy.history
    adaptive["chunk_vs_kv"] = hist[:: max(1, len(hist) // 20)] + hist[-1:]
    fixed = (_mixed(FixedChunkPolicy(2048), args.mixed_context, args.decodes, 2048 + args.decodes)
             if not args.mixed_adaptive_only else {"p99_tbt_ms": None, "skipped": "--mixed-adaptive-only"})
    return {"context": args.mixed_context, "decodes": args.decodes, "tbt_slo_ms": slo,
            "online_correction": args.online_correction,
            "adaptive": adaptive, "fixed_2048": fixed,
            "adaptive_within_slo": adaptive["p99_tbt_ms"] is not None and adaptive["p99_tbt_ms"] <= slo,
            "fixed_exceeds_slo": fixed["p99_tbt_ms"] is not None and fixed["p99_tbt_ms"] > slo}


def bench_long(args: argparse.Namespace) -> dict[str, Any]:
    """128K-token prompt + 32 decode steps with kvp=2 (real prefill)."""
    run = _lc("kvp=2", args.long_context, args.long_chunk, 33, args.long_synthetic)
    return {"run": run, "completed": True, "end_to_end": not args.long_synthetic}


SECTIONS = {"kvp": bench_kvp, "spp": bench_spp, "adaptive-ttft": bench_adaptive_ttft,
            "mixed-tbt": bench_mixed_tbt, "long": bench_long}


def main() -> None:
    """Run the chosen sections; print and append one JSON object each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    ap.add_argument("--kvp-context", type=int, default=65536)
    ap.add_argument("--kvp-real-prefill", action="store_true")
    ap.add_argument("--spp-context", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--ttft-context", type=int, default=16384)
    ap.add_argument("--mixed-context", type=int, default=32768)
    ap.add_argument("--decodes", type=int, default=8)
    ap.add_argument("--mixed-adaptive-only", action="store_true", help="skip the fixed-2048 run")
    ap.add_argument("--tbt-slo-ms", type=float, default=1000.0)
    ap.add_argument("--online-correction", type=float, default=0.3, help="adaptive policy's EWMA weight (0 = off)")
    ap.add_argument("--long-context", type=int, default=131072)
    ap.add_argument("--long-chunk", type=int, default=4096)
    ap.add_argument("--long-synthetic", action="store_true", help="random KV instead of the 128K prefill (decode + memory only)")
    ap.add_argument("--profile", default="bench", choices=["bench", *PROFILE_GRIDS], help="predictor profile grid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        load0, t0 = _load(), time.perf_counter()
        result = {"section": name, **SECTIONS[name](args)}
        result.update(load_before=load0, load_after=_load(), section_wall_s=time.perf_counter() - t0)
        line = json.dumps(result)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
