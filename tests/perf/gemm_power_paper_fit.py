"""The switching model on the paper's A100 traces: R^2 and leave-one-experiment-out MAE per dtype.

Joins the traces (reduced as ``--import-dcgm`` does: mean POWER over GPUTL >= 90, per trace)
with the features of the paper's regenerated inputs (``gemm_power_trace_features.py``, one
CSV per storage type) and fits :func:`fit_switching_models`::

    python tests/perf/gemm_power_paper_fit.py CLONE/a100_expt_results FEATURES_DIR

FEATURES_DIR holds ``fp16.csv`` (used for FP16-T and FP16), ``fp32.csv``, ``int8.csv``.
Points without a feature row are left out, and the table says how many points were fitted.
The nested LOEO MAE redoes the feature selection inside every fold (the honest held-out
error); the plain LOEO MAE is the selected model's, optimistic by the selection.

Measured on the release's traces (commit 2987094; features of seed 1 at 2048^2; 6.5 min on
one core at load ~3.6-6)::

    dtype      points  throttled (cap)  R^2    LOEO MAE  nested LOEO MAE  R^2 Hamming alone
    fp16 (T)   208     71 (298 W)       0.956  6.1 W     10.2 W           0.294
    fp16-simt  208     0                0.805  8.2 W     9.9 W            0.272
    fp32       208     0                0.895  8.2 W     11.9 W           0.015
    int8       143     0                0.803  8.1 W     9.6 W            0.330
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    import pandas as pd

    from charbench.workloads.gemm_power.analysis import fit_switching_models, headline
    from charbench.workloads.gemm_power.dcgm_import import discover, parse_dmon, steady_stats

    traces, feat_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rows = []
    for e in discover(traces):
        if e.experiment in ("memory-ones", "memory-zeros", "idle", "bit-flips"):
            continue
        s = steady_stats(parse_dmon(e.path))
        rows.append({"dtype": e.dtype, "backend": "cutlass", "experiment": e.experiment, "value": e.value, "seed": e.seed,
                     "mean_power_w": s["mean_power_w"], "mean_sm_clock_mhz": s["mean_sm_clock_mhz"]})
    power = pd.DataFrame(rows)
    storage = {"fp16": "fp16", "fp16-simt": "fp16", "fp32": "fp32", "int8": "int8"}
    frames = []
    for dt, st in storage.items():
        f = feat_dir / f"{st}.csv"
        if not f.is_file():
            continue
        feats = pd.read_csv(f).drop(columns=["dtype", "seed"])
        frames.append(power[power["dtype"] == dt].merge(feats, on=["experiment", "value"], how="inner"))
    df = pd.concat(frames, ignore_index=True)
    models, notes = fit_switching_models(df, nested=True)
    print("| dtype | points | throttled (cap W) | R^2 | LOEO MAE (W) | nested LOEO MAE (W) | R^2 Hamming alone | R^2 toggle+hamming+zero | chosen features |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in models:
        total = power[power["dtype"] == m.dtype].groupby(["experiment", "value"]).ngroups
        cap = f"{m.n_throttled} ({m.power_cap_w:.0f})" if m.power_cap_w is not None else "0"
        print(f"| {m.dtype} | {m.n_points}/{total} | {cap} | {m.r2:.3f} | {m.loeo_mae_w:.1f} | {m.nested_loeo_mae_w:.1f} | {m.baseline_r2.get('hamming_frac', float('nan')):.3f} | "
              f"{m.baseline_r2.get('three_feature', float('nan')):.3f} | " + ", ".join(f"{c:+.0f}*{f}" for c, f in zip(m.coef[1:], m.features))
              + f" (+{m.coef[0]:.0f} W" + (f", min with {m.power_cap_w:.0f} W" if m.power_cap_w is not None else "") + ") |")
    for n in notes:
        print("note:", n)
    hd = headline(power, "mean_power_w")
    print()
    print(hd[["dtype", "baseline", "lowest", "at_lowest", "swing_paper_pct", "swing_maxmin_pct", "noise", "beyond_noise"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
