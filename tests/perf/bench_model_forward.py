"""Model-runner forward speed: batched decode steps and prefill, random-weight presets.

Times ``ModelRunner.forward`` alone (no scheduler, no sampling): a decode step of ``B``
sequences at a given context, and a prefill of ``P`` tokens. Reports ms/step, tokens/s,
and on GPU the weight bandwidth a decode step reaches (``weight_bytes / step time``;
decode at small batch is bound by reading the weights) and prefill model FLOP/s.
Warm-up steps are discarded; GPU timings synchronize before each clock read::

    .venv/bin/python tests/perf/bench_model_forward.py                       # CPU: tiny, small
    .venv/bin/python tests/perf/bench_model_forward.py --model llama-2-7b --device cuda --dtype bf16
    .venv/bin/python tests/perf/bench_model_forward.py --json-out fwd.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(model: str, device: str, dtype: str, backend: str, batches: list[int], ctx: int,
          prefill_tokens: int, steps: int) -> list[dict]:
    """Decode and prefill timings for one model."""
    from charbench.engine.api import EngineConfig
    from charbench.engine.runner import SeqChunk, make_runner

    max_b = max(batches)
    runner = make_runner(EngineConfig(model=model, device=device, dtype=dtype, block_size=16,
                                      attention_backend=backend, max_num_seqs=max_b,
                                      max_model_len=max(ctx + steps + 8, prefill_tokens) + 16))
    cfg = runner.model_config
    per_seq = -(-(max(ctx + steps + 8, prefill_tokens) + 16) // 16)
    if runner.num_blocks < max_b * per_seq:
        raise SystemExit(f"KV cache too small: {runner.num_blocks} blocks < {max_b * per_seq}")
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(max_b)]
    rows = []
    # prefill: one sequence of prefill_tokens
    prompt = [1] * prefill_tokens
    runner.forward([SeqChunk(0, prompt, 0, tables[0], True)])
    _sync(device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        runner.forward([SeqChunk(0, prompt, 0, tables[0], True)])
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    rows.append({"model": model, "device": device, "dtype": dtype, "attention_backend": backend,
                 "phase": "prefill", "tokens": prefill_tokens, "ms": round(t * 1e3, 3),
                 "tokens_per_s": round(prefill_tokens / t, 1),
                 "model_tflops": round(cfg.flops_per_token(prefill_tokens // 2) * prefill_tokens / t / 1e12, 2)})
    # fill every sequence's cache to ctx tokens
    for i in range(max_b):
        runner.forward([SeqChunk(i, [1] * ctx, 0, tables[i], False)])
    for b in batches:
        pos = ctx

        def step() -> None:
            nonlocal pos
            runner.forward([SeqChunk(i, [5], pos, tables[i], True) for i in range(b)])
            pos += 1

        for _ in range(3):
            step()
        _sync(device)
        pos = ctx
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        row = {"model": model, "device": device, "dtype": dtype, "attention_backend": backend,
               "phase": "decode", "batch": b, "context_tokens": ctx, "ms": round(t * 1e3, 3),
               "tokens_per_s": round(b / t, 1)}
        if device.startswith("cuda"):
            row["weight_gbps"] = round(cfg.weight_bytes(dtype) / t / 1e9, 1)
        rows.append(row)
    runner.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print, optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=None, help="presets (default: tiny small on CPU, llama-2-7b on GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 on CPU, bf16 on GPU by default")
    ap.add_argument("--backend", default="torch", choices=["torch", "triton"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    models = args.model or (["llama-2-7b"] if gpu else ["tiny", "small"])
    dtype = args.dtype or ("bf16" if gpu else "fp32")
    rows = []
    for m in models:
        rows += bench(m, args.device, dtype, args.backend, args.batches, args.context,
                      args.prefill_tokens, args.steps)
    for r in rows:
        extra = f"  weights {r['weight_gbps']} GB/s" if "weight_gbps" in r else ""
        extra += f"  {r['model_tflops']} TFLOP/s" if "model_tflops" in r else ""
        if r["phase"] == "prefill":
            what = f"prefill {r['tokens']} tok"
        else:
            what = f"decode B={r['batch']} ctx={r['context_tokens']}"
        print(f"{r['model']:>12} {r['dtype']} {r['device']} {r['attention_backend']:>6} {what:>24}: "
              f"{r['ms']:9.3f} ms  {r['tokens_per_s']:10.1f} tok/s{extra}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
