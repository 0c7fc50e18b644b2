"""Switching features of the paper's inputs (``--generator paper``), per (dtype, experiment, value).

Writes one CSV row per point, so the model fit on the paper's A100 traces
(``tests/perf/gemm_power_paper_fit.py``) need not regenerate 2048^2 inputs::

    python tests/perf/gemm_power_trace_features.py OUT.csv --dtype fp16 --seed 1 [--size 2048]

Per point: the switching statistics, the per-field statistics, the per-bit-position rates
(:func:`~charbench.kernels.switching.bit_position_stats`) and the sampled output magnitude
(:func:`~charbench.kernels.switching.output_stats`). The seeded normal and experiment 4's
bit-position shuffles are computed once per operand and reused across a sweep (cached in
:mod:`charbench.workloads.gemm_power.paper_generators`); the partial sorts' heap selection
dominates what is left. Resumable: points already in OUT.csv are skipped. Run it with one
thread and ``nice``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--skip", default="", help="experiments to skip (comma-separated)")
    args = ap.parse_args()
    from charbench.kernels.gemm import get_dtype
    import torch

    from charbench.kernels.switching import bit_position_stats, field_switching_stats, output_stats, switching_stats
    from charbench.workloads.gemm_power.experiments import EXPERIMENTS, NON_GEMM_GENERATORS
    from charbench.workloads.gemm_power.generators import generate_pair

    torch.set_num_threads(1)
    spec = get_dtype(args.dtype)
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as fh:
            done = {(r["experiment"], float(r["value"])) for r in csv.DictReader(fh)}
    skip = set(filter(None, args.skip.split(",")))
    order = sorted(EXPERIMENTS.values(), key=lambda e: (e.generator == "bits_random", e.generator.startswith("sort"), e.number))
    writer = None
    with open(args.out, "a", newline="") as fh:
        for exp in order:
            if exp.name in skip or exp.generator in NON_GEMM_GENERATORS:
                continue
            for v in exp.values(spec.family, "paper", spec.bits):
                if (exp.name, float(v)) in done:
                    continue
                t0 = time.time()
                n = args.size
                a, b, info = generate_pair(exp, v, spec, n, n, n, args.seed, "cpu", generator="paper")
                row = {"dtype": args.dtype, "experiment": exp.name, "value": float(v), "seed": args.seed}
                row.update(switching_stats(a, b, spec))
                row.update(field_switching_stats(a, b, spec))
                row.update(bit_position_stats(a, b, spec))
                row.update(output_stats(a, b))
                row["nonfinite_input_frac"] = info["nonfinite_input_frac"]
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    if not done:
                        writer.writeheader()
                writer.writerow(row)
                fh.flush()
                print(f"{exp.name}={v:g} {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
