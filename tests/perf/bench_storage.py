"""Append-only run storage: per-append cost stays flat, a 10-million-row table writes fast.

Targets (issue 9 item 6, a 2-core CPU machine):
  * 100,000 single-row ``append_record`` calls: the mean of the last 1,000 is no slower than
    1.5x the mean of the first 1,000 (an append costs O(its own rows), not O(the run));
  * ``write_table`` of a 10,000,000-row, 4-column numeric frame takes < 10 s.

Also reported: total append time, the compaction at ``finish`` (parts -> results.parquet
and results.csv) and medians next to the means (robust to a neighbour's load).

Run::

    .venv/bin/python tests/perf/bench_storage.py
    nice .venv/bin/python tests/perf/bench_storage.py --json-out storage.json
    .venv/bin/python tests/perf/bench_storage.py --appends 5000 --table-rows 1000000   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from charbench.results import RunStore

APPEND_RATIO_TARGET = 1.5
TABLE_TARGET_S = 10.0
WINDOW = 1000


def _record(i: int) -> dict[str, Any]:
    """A record shaped like a study's: knobs, metrics, bookkeeping text."""
    return {
        "point_key": f"i={i},dtype=fp16", "point_index": i, "i": i, "dtype": "fp16",
        "time_s": 0.001 * i, "energy_j": None, "mean_power_w": None, "flops_count": 2 * i,
        "null_reasons": '{"energy_j": "not measured"}', "provenance": "{}", "warnings": "",
        "completed_at": "2026-01-01T00:00:00+00:00",
    }


def bench_appends(root: Path, n: int) -> dict[str, Any]:
    """Time ``n`` single-row appends one by one, then the compaction at finish."""
    warm = RunStore.create(root, "warmup", config={}, env={})
    warm.append_record(_record(0))  # imports pandas/pyarrow outside the timed appends
    store = RunStore.create(root, "bench", config={}, env={})
    times = []
    t_all = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        store.append_record(_record(i))
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    t0 = time.perf_counter()
    store.finish("completed")
    compaction = time.perf_counter() - t0
    import pyarrow.parquet as pq

    rows = pq.read_metadata(store.path / "results.parquet").num_rows
    w = min(WINDOW, n // 2)
    first, last = times[:w], times[-w:]
    ratio = statistics.fmean(last) / statistics.fmean(first)
    return {
        "appends": n, "window": w, "rows_after_compaction": rows,
        "first_mean_ms": round(statistics.fmean(first) * 1e3, 4), "last_mean_ms": round(statistics.fmean(last) * 1e3, 4),
        "first_median_ms": round(statistics.median(first) * 1e3, 4), "last_median_ms": round(statistics.median(last) * 1e3, 4),
        "ratio_last_to_first": round(ratio, 3),
        "ratio_of_medians": round(statistics.median(last) / statistics.median(first), 3),
        "total_append_s": round(total, 2), "compaction_s": round(compaction, 2),
        "target_ratio": APPEND_RATIO_TARGET, "ok": ratio <= APPEND_RATIO_TARGET and rows == n,
    }


def bench_table(root: Path, rows: int) -> dict[str, Any]:
    """Time ``write_table`` of a ``rows``-row numeric frame (the frame is built untimed)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "t_s": np.arange(rows, dtype=np.float64) * 1e-3,
        "request_index": np.arange(rows, dtype=np.int64),
        "ttft_ms": rng.random(rows),
        "output_tokens": rng.integers(0, 512, rows, dtype=np.int64),
    })
    store = RunStore.create(root, "table", config={}, env={})
    t0 = time.perf_counter()
    path = store.write_table("requests/big", frame)
    elapsed = time.perf_counter() - t0
    listed = store.tables()["requests/big"]["rows"]
    return {
        "rows": rows, "columns": list(frame.columns), "write_s": round(elapsed, 2),
        "file_mb": round(path.stat().st_size / 2**20, 1), "listed_rows": listed,
        "target_s": TABLE_TARGET_S, "ok": elapsed < TABLE_TARGET_S and listed == rows,
    }


def main() -> int:
    """Run both benchmarks, print one line each, exit 0 when both meet their targets."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=100_000)
    ap.add_argument("--table-rows", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp folder, removed after)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cb-storage-", dir=args.dir))
    try:
        a = bench_appends(root, args.appends)
        print(f"appends   {a['appends']} x 1 row: first {a['window']} mean {a['first_mean_ms']:.3f} ms, last {a['window']} mean "
              f"{a['last_mean_ms']:.3f} ms, ratio {a['ratio_last_to_first']:.2f} (medians {a['ratio_of_medians']:.2f}; target <= "
              f"{APPEND_RATIO_TARGET}); total {a['total_append_s']:.1f} s, compaction {a['compaction_s']:.1f} s  {'OK' if a['ok'] else 'SLOW'}")
        t = bench_table(root, args.table_rows)
        print(f"table     {t['rows']} rows x {len(t['columns'])} cols: write_table {t['write_s']:.2f} s ({t['file_mb']} MB; "
              f"target < {TABLE_TARGET_S} s)  {'OK' if t['ok'] else 'SLOW'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                                             "appends": a, "table": t}, indent=2) + "\n")
    return 0 if a["ok"] and t["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
