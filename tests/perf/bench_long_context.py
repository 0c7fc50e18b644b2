"""Benchmark: KVP decode step time and SPP TTFT on the tiny preset, one thread per rank (CPU).

Targets (issue 13): KVP decode at 64K context, step time with kvp=2 <= 0.65x kvp=1;
SPP TTFT at 32K context, spp=2 <= 0.65x spp=1. Run::

    .venv/bin/python tests/perf/bench_long_context.py                       # full sizes
    .venv/bin/python tests/perf/bench_long_context.py --kvp-context 16384 --spp-context 8192

Method: ``charbench.engine.lc_runner.launch`` on gloo ranks (spawned processes, one torch
thread each), random prompt, fixed prefill chunks (``--chunk``), greedy decode. KVP step time
is the median gap between decode tokens; TTFT is prefill start (after a barrier) to the first
token on rank 0. Process start-up and weight init are excluded.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from charbench.engine.lc_runner import GenerateSpec, launch
from charbench.engine.parallel import Layout


def _run(layout: str, context: int, chunk: int, new_tokens: int) -> dict[str, float]:
    prompt = torch.randint(0, 256, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    chunks = [chunk] * (context // chunk) + ([context % chunk] if context % chunk else [])
    lay = Layout.parse(layout)
    per_rank = -(-(context + new_tokens) // lay.kvp)
    res = launch(lay, GenerateSpec("tiny", prompt, chunks, new_tokens, per_rank))
    return {"ttft_s": res.ttft_s, "median_tbt_ms": statistics.median(res.tbt_s) * 1000,
            "max_kv_mib_per_rank": max(res.kv_bytes_per_rank) / 2**20,
            "decode_comm_bytes_per_step": res.comm_bytes_per_step["kvp"]}


def main() -> None:
    """Run both comparisons and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvp-context", type=int, default=65536)
    ap.add_argument("--spp-context", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--decode-steps", type=int, default=16)
    args = ap.parse_args()
    out: dict[str, dict[str, float]] = {}
    for lay in ("1x1x1", "kvp=2"):
        out[f"kvp/{lay}"] = _run(lay, args.kvp_context, args.chunk, args.decode_steps)
    for lay in ("1x1x1", "spp=2"):
        out[f"spp/{lay}"] = _run(lay, args.spp_context, args.chunk, 2)
    out["ratios"] = {
        "kvp2_over_kvp1_tbt": out["kvp/kvp=2"]["median_tbt_ms"] / out["kvp/1x1x1"]["median_tbt_ms"],
        "spp2_over_spp1_ttft": out["spp/spp=2"]["ttft_s"] / out["spp/1x1x1"]["ttft_s"],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
