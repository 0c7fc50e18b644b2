"""Report sections of cluster-sim: comparison, paper claims, timelines, latency CDFs, provenance."""

from __future__ import annotations

import json
from typing import Any

from charbench.pages import Section, figure_html, html_escape, table_html
from charbench.workloads.cluster.analysis import claims_table, comparison

SIM_NOTE = "Simulated: nothing here was measured; every value comes from charbench cluster-sim with the profile below."


def _records(data: Any) -> list[dict[str, Any]]:
    df = data.results
    return [] if df is None or not len(df) else df.to_dict("records")


def comparison_section(recs: list[dict[str, Any]]) -> Section:
    """Energy, carbon, cost and SLO attainment per policy, with deltas against static."""
    return Section("Policy comparison (simulated)", table_html(comparison(recs)), note=SIM_NOTE + " Deltas are % against static.", anchor="cluster-comparison")


def claims_section(recs: list[dict[str, Any]]) -> Section:
    """The papers' headline claims next to this run's simulated values."""
    return Section("Papers' claims vs simulated", table_html(claims_table(recs)),
                   note="Published numbers come from each paper's own setting; ours are simulated on this run's trace and profile (a direction check, not a reproduction).",
                   anchor="cluster-claims")


def timeline_section(data: Any) -> Section | None:
    """Load, power, frequency and instances over simulated time, one line per policy."""
    if "timeline" not in data.store.tables():
        return None
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tl = data.store.read_table("timeline")
    cl = tl[tl["pool"] == -1]
    rows = [("arrival rate (req/s)", "arrival_rps"), ("cluster power (W)", "power_w"), ("mean SM clock (MHz)", "mean_sm_freq_mhz"), ("instances", "instances")]
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=[r[0] for r in rows])
    for i, (_, col) in enumerate(rows, start=1):
        for pol, g in cl.groupby("policy", sort=False):
            fig.add_trace(go.Scattergl(x=g["t_s"] / 3600, y=g[col], mode="lines", name=str(pol), legendgroup=str(pol), showlegend=i == 1), row=i, col=1)
    fig.update_xaxes(title_text="simulated time (h)", row=len(rows), col=1)
    pools = tl[(tl["pool"] >= 0)]
    multi = pools.groupby("policy")["pool"].nunique()
    pfig = None
    if (multi > 1).any():
        pol = multi[multi > 1].index[0]
        g = pools[pools["policy"] == pol]
        pfig = go.Figure([go.Scattergl(x=s["t_s"] / 3600, y=s["instances"], mode="lines", name=f"pool {p}") for p, s in g.groupby("pool")])
        pfig.update_layout(title=f"instances per pool ({pol}, simulated)", xaxis_title="simulated time (h)")
    html = figure_html(fig, height=900) + (figure_html(pfig, height=350) if pfig is not None else "")
    return Section("Timelines (simulated)", html, note="Bin averages of the simulated cluster.", anchor="cluster-timelines")


def latency_section(data: Any) -> Section | None:
    """TTFT and TBT distributions per policy."""
    if "requests" not in data.store.tables():
        return None
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rq = data.store.read_table("requests")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT (ms)", "TBT (ms)"])
    for pol, g in rq.groupby("policy", sort=False):
        for c, col in enumerate(("ttft_ms", "tbt_ms"), start=1):
            x = np.sort(g[col].dropna().to_numpy())
            idx = np.linspace(0, len(x) - 1, min(len(x), 500)).astype(int) if len(x) else []
            fig.add_trace(go.Scattergl(x=x[idx], y=(np.asarray(idx) + 1) / max(1, len(x)), mode="lines", name=str(pol), legendgroup=str(pol), showlegend=c == 1), row=1, col=c)
    fig.update_xaxes(type="log")
    return Section("Latency CDFs (simulated)", figure_html(fig, height=380), anchor="cluster-latency")


def provenance_section(recs: list[dict[str, Any]]) -> Section:
    """Where the profile, trace, carbon series and prices come from."""
    r = recs[0]
    prov = json.loads(r.get("profile_provenance") or "{}")
    items = [("profile", f"{r.get('profile')} ({r.get('profile_kind')}), model {r.get('model')}"), *prov.items(),
             ("trace", r.get("trace")), ("carbon intensity", r.get("carbon_source")), ("GPU price", f"{r.get('gpu_usd_per_h')} USD per GPU-hour"),
             ("requests shortened to fit the context", r.get("clipped_requests"))]
    body = "<table>" + "".join(f"<tr><th>{html_escape(k)}</th><td>{html_escape(v)}</td></tr>" for k, v in items) + "</table>"
    return Section("Simulation inputs and provenance", body, anchor="cluster-provenance")


def report_sections(data: Any) -> list[Section]:
    """Every cluster-sim section of the run's report."""
    recs = _records(data)
    if not recs:
        return [Section("Cluster simulation", "<p>No completed policy in this run (see Failures).</p>", anchor="cluster-comparison")]
    out = [comparison_section(recs), claims_section(recs)]
    for extra in (timeline_section(data), latency_section(data)):
        if extra is not None:
            out.append(extra)
    out.append(provenance_section(recs))
    return out
