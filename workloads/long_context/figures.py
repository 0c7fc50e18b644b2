"""Report sections of long-context: TTFT/TBT vs context, chunk sizes, TBT timelines, memory, projection."""

from __future__ import annotations

from typing import Any

from charbench.pages import Section, figure_html, table_html
from charbench.workloads.long_context.analysis import PROJECTED


def _records(data: Any) -> list[dict[str, Any]]:
    df = data.results
    return [] if df is None or not len(df) else df.to_dict("records")


def _table(data: Any, name: str) -> Any:
    return data.store.read_table(name) if name in data.store.tables() else None


def context_figure(recs: list[dict[str, Any]]) -> Any:
    """TTFT (s) and median decode TBT (ms) against context, one line per layout (prefill points)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT (s)", "median decode TBT (ms)"])
    layouts = list(dict.fromkeys(r["parallel"] for r in recs if r.get("workload") == "prefill"))
    for lay in layouts:
        pts = sorted((r for r in recs if r.get("workload") == "prefill" and r["parallel"] == lay), key=lambda r: r["context"])
        x = [int(r["context"]) for r in pts]
        fig.add_trace(go.Scatter(x=x, y=[None if r.get("ttft_ms") is None else r["ttft_ms"] / 1e3 for r in pts], mode="lines+markers",
                                 name=lay, legendgroup=lay), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[r.get("p50_tbt_ms") for r in pts], mode="lines+markers", name=lay, legendgroup=lay,
                                 showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="context (tokens)", type="log")
    fig.update_yaxes(title_text="TTFT (s)", row=1, col=1)
    fig.update_yaxes(title_text="TBT (ms)", row=1, col=2)
    return fig


def context_section(recs: list[dict[str, Any]]) -> Section | None:
    """TTFT and TBT against context per layout, with the values as a table."""
    pre = [r for r in recs if r.get("workload") == "prefill"]
    if not pre:
        return None
    import pandas as pd

    cols = ["parallel", "context", "ttft_ms", "prefill_throughput_tok_s", "p50_tbt_ms", "p99_tbt_ms", "max_kv_bytes",
            "mean_prefill_kvp_comm_bytes", "mean_prefill_spp_comm_bytes", "mean_kvp_comm_bytes"]
    df = pd.DataFrame(pre)[[c for c in cols if c in pre[0]]]
    return Section("TTFT and TBT vs context per layout", figure_html(context_figure(recs), height=420) + table_html(df),
                   note="Measured on this machine's ranks (gloo, one process per rank). TBT: decode steps after the prefill. "
                        "KV bytes: the largest rank's; communication: bytes rank 0 sent per step (counted).",
                   anchor="lc-context")


def mixed_section(recs: list[dict[str, Any]]) -> Section | None:
    """The mixed workload's TTFT and co-batched TBT per chunk policy and layout."""
    mixed = [r for r in recs if r.get("workload") == "mixed"]
    if not mixed:
        return None
    import pandas as pd

    cols = ["parallel", "chunk", "context", "ttft_ms", "p50_tbt_ms", "p99_tbt_ms", "max_tbt_ms", "tbt_slo_ms",
            "tbt_slo_attainment_frac", "chunk_count", "mean_chunk_tokens", "over_budget_chunk_count"]
    df = pd.DataFrame(mixed)[[c for c in cols if c in mixed[0]]]
    return Section("Mixed workload: a long prefill among decodes", table_html(df),
                   note="TBT of the co-batched short requests' decodes while the long prompt prefilled (measured); "
                        "TTFT of the long prompt from its arrival.", anchor="lc-mixed")


def chunk_figure(chunks: Any) -> Any:
    """Chunk size against the long prompt's KV length, one line per (policy, layout) of the mixed workload."""
    import plotly.graph_objects as go

    mixed = chunks[chunks["workload"] == "mixed"]
    fig = go.Figure()
    for (pol, lay), g in mixed.groupby(["chunk", "parallel"], sort=False):
        fig.add_trace(go.Scatter(x=g["kv_context_tokens"], y=g["chunk_tokens"], mode="lines+markers", name=f"{pol} ({lay})"))
    fig.update_layout(xaxis_title="KV length of the long prompt (tokens)", yaxis_title="chunk (tokens)")
    return fig


def chunk_section(data: Any) -> Section | None:
    """Chunk size vs KV length (adaptive shrinks as the KV grows)."""
    chunks = _table(data, "chunks")
    if chunks is None or not (chunks["workload"] == "mixed").any():
        return None
    return Section("Chunk size vs KV length", figure_html(chunk_figure(chunks), height=380),
                   note="Chunks the policy chose for the long prompt (adaptive: the largest chunk whose predicted iteration "
                        "time fits the TBT SLO, from the predictor fitted on this machine).", anchor="lc-chunks")


def timeline_figure(tl: Any, slo_ms: float | None) -> Any:
    """TBT of the first short request over its tokens, one line per (policy, layout), with the SLO."""
    import plotly.graph_objects as go

    fig = go.Figure()
    first = tl[tl["request"] == 0]
    for (pol, lay), g in first.groupby(["chunk", "parallel"], sort=False):
        fig.add_trace(go.Scatter(x=g["token"], y=g["tbt_ms"], mode="lines", name=f"{pol} ({lay})"))
    if slo_ms is not None:
        fig.add_hline(y=slo_ms, line_dash="dash", annotation_text=f"TBT SLO {slo_ms:g} ms")
    fig.update_layout(xaxis_title="token of short request 0", yaxis_title="TBT (ms)", yaxis_type="log")
    return fig


def timeline_section(data: Any, recs: list[dict[str, Any]]) -> Section | None:
    """TBT timelines, adaptive vs fixed chunking."""
    tl = _table(data, "tbt_timeline")
    if tl is None or not len(tl):
        return None
    slo = next((r.get("tbt_slo_ms") for r in recs if r.get("tbt_slo_ms") is not None), None)
    return Section("TBT timelines: adaptive vs fixed chunking", figure_html(timeline_figure(tl, slo), height=400),
                   note="Measured gaps between a co-batched short request's tokens while the long prompt arrives and prefills.",
                   anchor="lc-timeline")


def memory_section(data: Any) -> Section | None:
    """KV and weight bytes per rank, and communication bytes per step."""
    mem, comm = _table(data, "memory"), _table(data, "comm")
    if mem is None:
        return None
    html = table_html(mem[mem["workload"] == "prefill"] if (mem["workload"] == "prefill").any() else mem)
    if comm is not None:
        wide = comm.pivot_table(index=["parallel", "workload", "chunk", "context"], columns="kind", values="bytes_per_step").reset_index()
        html += table_html(wide)
    return Section("Memory per rank and communication per step", html,
                   note="Counted from the ranks' tensors (fp32 weights of each rank's stage and TP shard; KV in use), not "
                        "sampled from the OS.", anchor="lc-memory")


def projection_section(data: Any) -> Section | None:
    """The calibration, the projection table and the paper's numbers (all labeled projected)."""
    cal, proj, paper = _table(data, "calibration"), _table(data, "projection"), _table(data, "paper_comparison")
    if proj is None:
        return None
    html = "<h4>Measured parallel efficiencies (calibration)</h4>" + (table_html(cal) if cal is not None and len(cal) else
                                                                      "<p>No layout pair measured: the projection is uncalibrated (ideal scaling).</p>")
    if paper is not None:
        html += "<h4>Paper's reported numbers vs projected</h4>" + table_html(paper)
    html += "<h4>Projection: 1M-10M tokens (projected)</h4>" + table_html(proj, max_rows=1000)
    return Section("Projection to 1M-10M tokens (projected)", html, note=PROJECTED + ". Constants and formulas: "
                   "charbench/workloads/long_context/projection.py; GPU and model specs: charbench/sim/hardware.py.",
                   anchor="lc-projection")


def report_sections(data: Any) -> list[Section]:
    """Every long-context section of the run's report."""
    recs = _records(data)
    if not recs:
        return [Section("Long-context", "<p>No completed point in this run (see Failures).</p>", anchor="lc-context")]
    out = []
    for s in (context_section(recs), mixed_section(recs), chunk_section(data), timeline_section(data, recs), memory_section(data),
              projection_section(data)):
        if s is not None:
            out.append(s)
    return out
