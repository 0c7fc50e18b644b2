"""Report sections of ``charbench cache-reuse``.

Per pair: the Pareto frontier of quality vs recomputed layers (every profiled group,
CacheBlend at the same budgets, full reuse and full recompute); per-layer criticality
(quality drop when only that layer's K/V is reused); speedup vs quality per mode next to
the paper's numbers; the chosen group with its held-out transfer; the transfer timeline
(ours at the configured link speed, and the paper's toy); the issue's targets.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from markupsafe import escape

from charbench.pages import Section, figure_html, table_html
from charbench.report import RunData
from charbench.workloads.cache_reuse.analysis import PAPER, summarize
from charbench.workloads.cache_reuse.timeline import TOY, timeline

PAIR_NOTES = {"all_blocks": "every decoder block fine-tuned (DroidSpeak's hard case)",
              "middle": "only the middle layers fine-tuned (DroidSpeak's favourable case)",
              "custom": "--sender / --receiver checkpoints on --data"}


def _frontier_figure(df: pd.DataFrame, s: dict[str, Any], pair: str) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    ds = df[df["mode"] == "droidspeak"]
    fig.add_trace(go.Scatter(x=ds["recomputed_layer_count"], y=ds["quality_pct"], mode="markers", name="DroidSpeak group [a,b]",
                             text=ds["setting"], hovertemplate="[%{text}]: %{y:.1f}%"))
    front = s.get("frontier", [])
    fig.add_trace(go.Scatter(x=[p["layers"] for p in front], y=[p["quality_pct"] for p in front], mode="lines+markers",
                             name="Pareto frontier"))
    cb = df[df["mode"] == "cacheblend"]
    fig.add_trace(go.Scatter(x=cb["recomputed_layer_count"], y=cb["quality_pct"], mode="lines+markers", name="CacheBlend (same budget)"))
    for mode, name in (("full_reuse", "full KV reuse"), ("full_recompute", "receiver (full recompute)")):
        r = df[df["mode"] == mode]
        fig.add_trace(go.Scatter(x=r["recomputed_layer_count"], y=r["quality_pct"], mode="markers", name=name,
                                 marker={"size": 12, "symbol": "diamond"}))
    fig.update_layout(title=f"{pair}: quality vs recomputed layers", xaxis_title="recomputed layers (compute budget)",
                      yaxis_title="quality on the profiling set (%)")
    return figure_html(fig)


def _criticality_figure(s: dict[str, Any], pair: str) -> str:
    import plotly.graph_objects as go

    crit = s.get("criticality_drop_pts", {})
    fig = go.Figure(go.Bar(x=[str(k) for k in crit], y=list(crit.values()), name="drop"))
    fig.update_layout(title=f"{pair}: quality drop when only that layer's K/V is reused", xaxis_title="layer",
                      yaxis_title="drop (points)")
    return figure_html(fig)


def _modes_table(df: pd.DataFrame, s: dict[str, Any]) -> str:
    base = s.get("full_recompute_ms")
    rows = df[["mode", "setting", "quality_pct", "heldout_quality_pct", "mean_prefill_ms", "median_prefill_ms", "recomputed_layer_count", "moved_bytes"]].copy()
    rows["speedup"] = base / rows["median_prefill_ms"] if base else None
    n = s.get("num_layers")
    rows["cost_model_speedup"] = [n / m if m else None for m in rows["recomputed_layer_count"]]
    return table_html(rows.reset_index(drop=True))


def _pair_section(pair: str, df: pd.DataFrame, s: dict[str, Any]) -> Section:
    if "error" in s:
        return Section(f"Pair {pair}", f"<p class='muted'>{escape(s['error'])}</p>")
    chosen = s.get("chosen")
    summary = {k: s.get(k) for k in ("receiver_quality_pct", "full_reuse_quality_pct", "full_reuse_drop_pts", "full_recompute_ms")}
    html = f"<p>{escape(PAIR_NOTES.get(pair, pair))}.</p>" + table_html(pd.DataFrame([summary]))
    if chosen:
        html += "<h4>Chosen group (cheapest on the frontier within tolerance) and its held-out transfer</h4>"
        html += table_html(pd.DataFrame([{k: v for k, v in chosen.items()}]))
    else:
        html += "<p>No group reaches the tolerance: recompute everything.</p>"
    if s.get("best_single_layer"):
        html += "<h4>Best single recomputed layer</h4>" + table_html(pd.DataFrame([s["best_single_layer"]]))
    html += _frontier_figure(df, s, pair) + _criticality_figure(s, pair)
    html += "<h4>Every mode: quality, measured prefill time, speedup vs the cost model L/m</h4>" + _modes_table(df, s)
    if s.get("cacheblend_vs_droidspeak"):
        html += "<h4>CacheBlend vs DroidSpeak at the same budget</h4>" + table_html(pd.DataFrame(s["cacheblend_vs_droidspeak"]))
    if s.get("timeline_ms"):
        html += "<h4>Transfer timeline of the chosen group (ms; measured recompute, modelled link)</h4>"
        html += table_html(pd.DataFrame([s["timeline_ms"]]))
    html += "<h4>Targets</h4>" + table_html(pd.DataFrame([{"target": k, "met": v} for k, v in s.get("targets", {}).items()]))
    return Section(f"Pair {pair}", html, anchor=f"pair-{pair}")


def report_sections(data: RunData) -> list[Section]:
    """All cache-reuse sections for one run folder."""
    df = data.results
    if df is None or len(df) == 0:
        return [Section("Cache reuse", '<p class="muted">No completed points; see Failures.</p>')]
    cfg = data.config.get("study_config", {})
    summ = summarize(df, float(cfg.get("tolerance", 0.01)), float(cfg.get("link_gbps", 200.0)))
    sections = [_pair_section(pair, df[df["pair"] == pair], s) for pair, s in summ.items()]
    toy = timeline(TOY)
    paper = pd.DataFrame([{"figure": k, "paper": v} for k, v in PAPER.items()])
    sections.append(Section("Next to the paper (DroidSpeak, arXiv 2411.02820)", table_html(paper)
                            + "<p>Fig 13 toy timeline from our model: "
                            # str(): a str + Markup sum escapes the str (the table showed as literal tags)
                            + str(escape(" -> ".join(f"{v:g}" for v in toy.values())))
                            + " (load all first, send reused layers only, pipelined; inputs are ours, chosen to give the "
                              "figure's totals).</p>"))
    return sections
