"""Paged decode attention on GPU: the torch path (gather + SDPA) vs the Triton split-K kernel.

For each shape (KV heads, head_dim of real models), batch size and context length it
times one decode attention call of each backend (CUDA events, warm-up discarded, median
of ``--reps``), checks both against each other, and reports the time, the KV bytes read
per second (``B * ctx * 2 * kv_heads * head_dim * bytes / time``) and the speed-up of
Triton over torch. No fixed target: the figure of merit is the Triton/torch ratio and
the fraction of the GPU's memory bandwidth reached. Skips (exit 0) without CUDA::

    .venv/bin/python tests/perf/bench_attention.py
    .venv/bin/python tests/perf/bench_attention.py --batches 1 16 64 --contexts 1024 8192 --json-out att.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

SHAPES = {  # name: (query heads, kv heads, head_dim)
    "llama-2-7b": (32, 32, 128),
    "llama-3-8b": (32, 8, 128),
    "llama-2-70b-tp8": (8, 1, 128),
}


def time_ms(fn, reps: int) -> float:
    """Median milliseconds of ``reps`` calls (3 warm-ups discarded), CUDA events."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_one(shape: str, batch: int, ctx: int, block_size: int, dtype: torch.dtype, reps: int) -> dict:
    """Time both backends for one configuration."""
    from charbench.kernels.attention.paged_decode_triton import paged_decode_triton
    from charbench.kernels.attention.paged_torch import (
        decode_attn_bias,
        decode_valid_mask,
        paged_decode_torch,
    )

    heads, kv, d = SHAPES[shape]
    blocks_per_seq = -(-ctx // block_size)
    num_blocks = batch * blocks_per_seq + 1
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    kc = torch.randn(num_blocks, block_size, kv, d, device=dev, dtype=dtype, generator=g)
    vc = torch.randn(num_blocks, block_size, kv, d, device=dev, dtype=dtype, generator=g)
    perm = torch.randperm(num_blocks - 1, device=dev, generator=g)[: batch * blocks_per_seq]
    bt = perm.view(batch, blocks_per_seq).contiguous()
    seq_lens = torch.full((batch,), ctx, device=dev, dtype=torch.long)
    q = torch.randn(batch, heads, d, device=dev, dtype=dtype, generator=g)
    scale = d**-0.5
    bias = decode_attn_bias(decode_valid_mask(seq_lens, blocks_per_seq * block_size), dtype)

    def run_torch() -> torch.Tensor:
        return paged_decode_torch(q, kc, vc, bt, seq_lens, scale, attn_bias=bias)

    def run_triton() -> torch.Tensor:
        return paged_decode_triton(q, kc, vc, bt, seq_lens, scale, max_seq_len=ctx)[0]

    err = (run_torch().float() - run_triton().float()).abs().max().item()
    t_torch = time_ms(run_torch, reps)
    t_triton = time_ms(run_triton, reps)
    kv_bytes = batch * ctx * 2 * kv * d * kc.element_size()
    return {
        "shape": shape, "batch": batch, "context_tokens": ctx, "block_size": block_size,
        "dtype": str(dtype).replace("torch.", ""),
        "torch_ms": round(t_torch, 4), "triton_ms": round(t_triton, 4),
        "torch_kv_gbps": round(kv_bytes / t_torch / 1e6, 1),
        "triton_kv_gbps": round(kv_bytes / t_triton / 1e6, 1),
        "triton_speedup_x": round(t_torch / t_triton, 2),
        "max_abs_diff": err,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print a table (and JSON with ``--json-out``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--contexts", nargs="+", type=int, default=[512, 2048, 8192])
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention: skipped, needs a CUDA GPU (the Triton kernel is checked on CPU "
              "by tests/kernels/test_paged_decode_triton.py under TRITON_INTERPRET=1)")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"skipped": "needs CUDA", "results": []}, f, indent=2)
        return 0
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    rows = []
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'shape':>16} {'B':>4} {'ctx':>6} {'torch ms':>9} {'triton ms':>9} "
          f"{'torch GB/s':>10} {'triton GB/s':>11} {'speedup':>8} {'max diff':>9}")
    for shape in args.shapes:
        for batch in args.batches:
            for ctx in args.contexts:
                r = bench_one(shape, batch, ctx, args.block_size, dtype, args.reps)
                rows.append(r)
                print(f"{shape:>16} {batch:>4} {ctx:>6} {r['torch_ms']:>9.3f} {r['triton_ms']:>9.3f} "
                      f"{r['torch_kv_gbps']:>10.0f} {r['triton_kv_gbps']:>11.0f} "
                      f"{r['triton_speedup_x']:>7.2f}x {r['max_abs_diff']:>9.1e}")
    speedups = [r["triton_speedup_x"] for r in rows]
    print(f"triton/torch speed-up: median {statistics.median(speedups):.2f}x, "
          f"min {min(speedups):.2f}x, max {max(speedups):.2f}x")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
