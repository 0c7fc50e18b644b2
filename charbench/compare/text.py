"""The plain-text summary ``charbench compare`` prints: aggregates, notable points, verdict."""

from __future__ import annotations

from charbench.compare.runs import Comparison
from charbench.compare.stats import NOISE_K

def fmt_value(v: float | None, pct: bool = False) -> str:
    """A mean as ``4.2e+03``-style text, a change as ``+1.23%``; ``-`` for None."""
    if v is None:
        return "-"
    return f"{v:+.2f}%" if pct else f"{v:.4g}"


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain, aligned text table (stable for logs and tests)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def summary_text(cmp: Comparison, max_points: int = 40) -> str:
    """The summary printed by ``charbench compare``: aggregates, notable points, verdict."""
    b, c = cmp.baseline.store, cmp.candidate.store
    out = [
        f"study {cmp.study}: baseline {b.meta.get('run_id')} ({b.meta.get('label') or 'no label'}) vs candidate {c.meta.get('run_id')} ({c.meta.get('label') or 'no label'})",
        f"{len(cmp.matched)} matched point(s); threshold {cmp.threshold_pct:g}%; noise = |delta| <= {NOISE_K:g} x std error when both runs have >= 2 samples",
        "",
    ]
    rows = []
    for s in cmp.summaries:
        n = s.counts
        rows.append([("* " if s.gated else "  ") + s.metric, s.direction, str(s.points), fmt_value(s.aggregate_pct, pct=True),
                     str(n["regression"]), str(n["improvement"]), str(n["changed"]), str(n["noise"]), str(n["unchanged"]), str(n["missing"])])
    out.append(text_table(["metric (* gated)", "better", "points", "aggregate", "regr", "impr", "changed", "noise", "same", "missing"], rows))
    notable = [d for d in cmp.deltas if d.gated and d.verdict in ("regression", "improvement", "noise")]
    if notable:
        out.append("")
        out.append("gated metrics, per point:")
        prow = [[d.metric, d.point, fmt_value(d.mean_b), fmt_value(d.mean_c), fmt_value(d.delta_pct, pct=True),
                 "-" if d.noise_band_pct is None else f"±{d.noise_band_pct:.2f}%", d.verdict] for d in notable[:max_points]]
        out.append(text_table(["metric", "point", "baseline", "candidate", "delta", "noise band", "verdict"], prow))
        if len(notable) > max_points:
            out.append(f"... {len(notable) - max_points} more in the HTML page")
    for note in cmp.notes:
        out.append(f"note: {note}")
    out.append("")
    out.append(cmp.verdict())
    return "\n".join(out)
