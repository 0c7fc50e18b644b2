"""The end-of-run summary table: one row per point, the knobs that vary and the study's headline metrics.

::

    rows = summary_rows(RunStore.open(run_dir))          # (headers, rows) as text
    print_summary(run_dir, stream=sys.stderr)            # a rich table in a terminal, plain text in CI/pipes

Metrics are the study's declared ones (:attr:`charbench.studies.StudySpec.metrics`, in that
order) that were measured at some point; a null value prints as ``null`` (not measured),
never 0. Knobs another knob decides are left out (gemm-power's ``param`` follows its
``experiment``); seeds and repeats of one setting make one row: the mean and ``n``. Like ``vllm bench serve``, a serve-sweep run ends with its latency percentiles,
throughput and energy per token per load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from charbench.compare.text import text_table
from charbench.progress import in_ci, is_interactive

#: most metric columns one table shows (a terminal is ~120 characters wide)
MAX_METRICS = 8


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "inf" if isinstance(v, float) and math.isinf(v) else "null"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_rows(store: Any) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a run's summary: varying knobs, then up to :data:`MAX_METRICS` metrics."""
    from charbench.compare.columns import knob_names
    from charbench.studies import find_study

    from charbench.compare.columns import is_noise_knob
    from charbench.progress import naming_knobs

    df = store.results_frame()
    if df is None or len(df) == 0:
        return [], []
    records = df.to_dict("records")
    present = [k for k in knob_names(records) if k in df.columns]
    named = naming_knobs([{k: str(r.get(k)) for k in present} for r in records]) if len(records) > 1 else present
    knobs = [k for k in present if k in named and df[k].astype(str).nunique() > 1]
    spec = find_study(store.study)
    declared = list(spec.metrics) if spec is not None else []
    metrics = [m for m in declared if m in df.columns and df[m].notna().any()][:MAX_METRICS]
    noise = [k for k in knobs if is_noise_knob(k)]
    if not noise:
        return knobs + metrics, [[_fmt(r.get(c)) for c in knobs + metrics] for r in records]
    # seeds/repeats of one setting: one row per setting, the mean of its samples and how many there were
    keys = [k for k in knobs if k not in noise]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(str(r.get(k)) for k in keys), []).append(r)
    rows = []
    for members in groups.values():
        cells = [_fmt(members[0].get(k)) for k in keys] + [str(len(members))]
        for m in metrics:
            vals = [float(r[m]) for r in members if isinstance(r.get(m), (int, float)) and math.isfinite(float(r[m]))]
            cells.append(_fmt(sum(vals) / len(vals)) if vals else "null")
        rows.append(cells)
    return keys + ["n"] + [f"mean {m}" for m in metrics], rows


def print_summary(run_dir: Path, stream: Any) -> None:
    """Print the summary table of the run in ``run_dir`` to ``stream`` (rich in a terminal, plain text otherwise)."""
    from charbench.results import RunStore

    store = RunStore.open(Path(run_dir))
    headers, rows = summary_rows(store)
    if not headers or not rows:
        return
    if is_interactive(stream) and not in_ci():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{store.study}: {len(rows)} point(s)")
        for h in headers:
            table.add_column(h, justify="left" if rows and not rows[0][headers.index(h)][:1].isdigit() else "right")
        for r in rows:
            table.add_row(*r)
        Console(file=stream).print(table)
    else:
        stream.write(f"{store.study}: {len(rows)} point(s)\n{text_table(headers, rows)}\n")
