"""Report sections of a serve-sweep run (the report hook).

``report_hook = "charbench.workloads.serving.figures:report_sections"``; the report
renderer calls :func:`report_sections` with the loaded run folder::

    charbench report charbench-runs/serve-sweep/20261130-101500

Sections: summary table; latency CDFs (from the ``requests/<load>`` tables); throughput-latency
curves; energy per output token against every swept knob; the energy-latency Pareto
frontier with the SLO line; power and clock timelines with the measured windows shaded;
the best configuration under the SLO per workload class; the mode's own table (sweep or
SLO search); client- vs server-side timing; the steady-state windows. A figure whose data
was not measured says so and why instead of drawing zeros.
"""

from __future__ import annotations

import json
import math
from typing import Any

from markupsafe import escape

from charbench.pages import SERIES, Section, figure_html, table_html
from charbench.report import RunData

KNOB_COLUMNS: tuple[str, ...] = (
    "model", "tp", "dtype", "max_num_seqs", "sm_freq_mhz", "power_limit_w", "input_len", "output_len",
    "request_rate_rps", "concurrency",
)
#: knobs that set the offered load (one curve per configuration runs over them)
LOAD_KNOBS: tuple[str, ...] = ("request_rate_rps", "concurrency")
LAT = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
MAX_CDF_TRACES = 16
PALETTE: tuple[str, ...] = SERIES  # the palette every study shares (charbench.pages)


def _note(text: str) -> str:
    return f'<p class="muted">{escape(text)}</p>'


def _isnum(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _records(data: RunData) -> list[dict[str, Any]]:
    df = data.results
    if df is None or len(df) == 0:
        return []
    recs = df.to_dict("records")
    for r in recs:
        for k, v in list(r.items()):
            if isinstance(v, float) and math.isnan(v):
                r[k] = None
    return recs


def _study_cfg(data: RunData) -> dict[str, Any]:
    return dict((data.config or {}).get("study_config") or {})


def _reason(recs: list[dict[str, Any]], field: str) -> str:
    for r in recs:
        try:
            reasons = json.loads(r.get("null_reasons") or "{}")
        except (TypeError, ValueError):
            continue
        if field in reasons:
            return str(reasons[field])
    return "not measured"


def _varying(recs: list[dict[str, Any]]) -> list[str]:
    """Knobs (the names in the points' keys, as the record schema defines them) that take more than one value."""
    from charbench.record import point_key_names

    names = list(dict.fromkeys(n for r in recs for n in point_key_names(r.get("point_key") or "")))
    if not names:  # records without point keys (hand-made data): the usual knobs
        names = list(KNOB_COLUMNS)
    order = {k: i for i, k in enumerate(KNOB_COLUMNS)}  # the usual reading order first, then the rest as keyed
    names.sort(key=lambda k: order.get(k, len(order)))
    out = []
    for k in names:
        vals = {json.dumps(r.get(k), default=str) for r in recs if k in r}
        if len(vals) > 1:
            out.append(k)
    return out


def _rate_text(rate: Any) -> str:
    """A request rate as the pages show it: ``inf`` is the max-throughput load (every request at once)."""
    if _is_max_rate(rate):
        return "max throughput"
    return f"{rate:g} req/s" if _isnum(rate) else str(rate)


def _config_label(r: dict[str, Any], knobs: list[str]) -> str:
    parts = [f"{k}={r.get(k)}" for k in knobs if k not in LOAD_KNOBS and r.get(k) is not None]
    return ", ".join(parts) or "all points"


def _load_label(r: dict[str, Any], knobs: list[str]) -> str:
    cfg = _config_label(r, knobs)
    load = r.get("offered_load") or r.get("mode_step") or ""
    if _is_max_rate(r.get("request_rate_rps")):
        load = f"{_rate_text(r.get('request_rate_rps'))} ({load})" if load else _rate_text(r.get("request_rate_rps"))
    step = r.get("mode_step")
    if step and step not in ("grid",):
        load = f"{step}: {load}"
    return f"{cfg} | {load}" if cfg != "all points" else str(load)


def _energy_tok(r: dict[str, Any]) -> tuple[float | None, str]:
    """J/output token and its basis as labeled in the figures ("steady", "whole load", "")."""
    from charbench.workloads.serving.profile import energy_per_token

    v, basis = energy_per_token(r)
    return v, {"steady": "steady", "point": "whole load"}.get(basis, "")


# --------------------------------------------------------------------------- sections


def summary_section(recs: list[dict[str, Any]]) -> Section:
    """One row per measured load with the headline metrics."""
    import pandas as pd

    knobs = _varying(recs)
    rows = []
    for r in recs:
        e, basis = _energy_tok(r)
        rows.append({
            "load": _load_label(r, knobs),
            "req/s": r.get("request_throughput_rps"),
            "out tok/s": r.get("output_throughput_tok_s"),
            "median TTFT ms": r.get("median_ttft_ms"),
            "p99 TTFT ms": r.get("p99_ttft_ms"),
            "median TPOT ms": r.get("median_tpot_ms"),
            "p99 TPOT ms": r.get("p99_tpot_ms"),
            "median ITL ms": r.get("median_itl_ms"),
            "median E2EL ms": r.get("median_e2el_ms"),
            "SLO attainment": r.get("slo_attainment_frac"),
            "goodput req/s": r.get("request_goodput_rps"),
            "errors": r.get("error_count"),
            "J/out tok": e,
            "J basis": basis or "not measured",
            "avg power W": r.get("mean_steady_power_w") if basis == "steady" else r.get("mean_power_w"),
        })
    return Section("Serving summary", table_html(pd.DataFrame(rows)), note="One row per measured load. J/out tok uses the steady-state window when it formed, else the whole load.", anchor="serving-summary")


def cdf_section(data: RunData, recs: list[dict[str, Any]]) -> Section:
    """Empirical CDFs of TTFT, TPOT, ITL and E2EL per load."""
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    knobs = _varying(recs)
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"{t} CDF" for _, t in LAT])
    shown = 0
    missing = 0
    # Per-request data are named tables; a record names its table's file (old folders: requests/<load>.parquet).
    by_file = {t.get("file"): name for name, t in data.store.tables().items()}
    for r in recs:
        name = by_file.get(r.get("requests_file"))
        if name is None or not (data.store.path / data.store.tables()[name]["file"]).is_file():
            missing += 1
            continue
        if shown >= MAX_CDF_TRACES:
            break
        df = data.store.read_table(name)
        ok = df[df["error"].isna()] if "error" in df else df
        label = _load_label(r, knobs)
        for i, (m, _) in enumerate(LAT):
            if m == "itl":
                vals = np.concatenate([np.asarray(x, dtype=float) for x in ok["itl_ms"] if x is not None and len(x)]) if len(ok) else np.array([])
            else:
                vals = ok[f"{m}_ms"].dropna().to_numpy(dtype=float)
            if len(vals) == 0:
                continue
            vals = np.sort(vals)
            y = np.arange(1, len(vals) + 1) / len(vals)
            if len(vals) > 2000:  # thin long ITL lists; the curve shape is kept
                idx = np.linspace(0, len(vals) - 1, 2000).astype(int)
                vals, y = vals[idx], y[idx]
            fig.add_trace(go.Scattergl(x=vals, y=y, mode="lines", name=label, legendgroup=label, showlegend=(i == 0)), row=i // 2 + 1, col=i % 2 + 1)
        shown += 1
    if shown == 0:
        return Section("Latency CDFs", _note("No per-request tables (requests/<load>) in this run folder."), anchor="latency-cdf")
    for i, (_, t) in enumerate(LAT):
        fig.update_xaxes(title_text=f"{t} (ms)", type="log", row=i // 2 + 1, col=i % 2 + 1)
        fig.update_yaxes(title_text="fraction of requests" if t != "ITL" else "fraction of gaps", range=[0, 1], row=i // 2 + 1, col=i % 2 + 1)
    note = ("Client-side times of successful requests (vLLM definitions). ITL gaps near 0 (about 0.001 ms, the left tail) are "
            "tokens flushed together, not 0.001 ms decode steps: the engine produced them while the client's event loop was "
            "busy, so the client took them back to back (in process: queued engine outputs read one after the other, or one "
            "output holding several tokens, which share a timestamp; over HTTP: several server-sent events in one read). The "
            "server-side ITL in 'Client vs server timing' is per token as the engine produced it.")
    if len(recs) > shown + missing:
        note += f" Showing the first {shown} loads of {len(recs)}."
    return Section("Latency CDFs", figure_html(fig, height=720), note=note, anchor="latency-cdf")


def throughput_latency_section(recs: list[dict[str, Any]]) -> Section:
    """Median and p99 TTFT/TPOT against output throughput, one line per configuration."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    knobs = _varying(recs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if _isnum(r.get("output_throughput_tok_s")):
            groups.setdefault(_config_label(r, knobs), []).append(r)
    if not groups:
        return Section("Throughput vs latency", _note("No load completed a request."), anchor="throughput-latency")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT vs output throughput", "TPOT vs output throughput"])
    for g, (label, rs) in enumerate(groups.items()):
        color = PALETTE[g % len(PALETTE)]
        rs = sorted(rs, key=lambda r: r["output_throughput_tok_s"])
        x = [r["output_throughput_tok_s"] for r in rs]
        loads = [_short_load(r) for r in rs]
        for col, m in ((1, "ttft"), (2, "tpot")):
            for stat, dash in (("median", "solid"), ("p99", "dot")):
                y = [r.get(f"{stat}_{m}_ms") for r in rs]
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers+text" if stat == "median" else "lines+markers",
                                         name=f"{label} {stat}" if label != "all points" else stat, legendgroup=label,
                                         text=loads, textposition="top center", textfont={"size": 10, "color": color}, cliponaxis=False,
                                         hovertemplate="%{text}<br>%{x:.4g} tok/s<br>" + f"{stat} {m.upper()} " + "%{y:.4g} ms<extra></extra>",
                                         line={"dash": dash, "color": color}, marker={"color": color}, showlegend=(col == 1)), row=1, col=col)
    fig.update_xaxes(title_text="output throughput (tok/s)")
    fig.update_yaxes(title_text="TTFT (ms)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="TPOT (ms)", type="log", row=1, col=2)
    return Section("Throughput vs latency", figure_html(fig, height=460),
                   note="Solid: median; dotted: p99. Each marker is one load, labeled with its offered load; a line joins one "
                        "configuration's loads in order of the throughput they reached, so it runs left to right.", anchor="throughput-latency")


def _short_load(r: dict[str, Any]) -> str:
    """A marker's label: the offered load of one point (``4 req/s``, ``max throughput``, ``c=8``)."""
    if "request_rate_rps" in r and r.get("request_rate_rps") is not None:
        return _rate_text(r.get("request_rate_rps"))
    return str(r.get("offered_load") or r.get("mode_step") or "")


_AXIS_TITLES = {"max_num_seqs": "max_num_seqs (sequences)", "request_rate_rps": "request rate (req/s)",
                "output_throughput_tok_s": "output throughput reached (tok/s)", "concurrency": "concurrency (requests)",
                "sm_freq_mhz": "SM clock (MHz)", "power_limit_w": "power limit (W)", "input_len": "input length (tokens)",
                "output_len": "output length (tokens)", "tp": "tensor parallel (GPUs)"}


def _axis_title(knob: str) -> str:
    """An axis title with its unit for a knob or metric column."""
    return _AXIS_TITLES.get(knob, knob)


def _is_max_rate(rate: Any) -> bool:
    """The max-throughput (all at once) rate: inf, as the knob holds it."""
    return isinstance(rate, (int, float)) and math.isinf(rate)


def energy_knob_section(recs: list[dict[str, Any]]) -> Section:
    """J/output token against every knob that takes more than one value."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    swept = _varying(recs)
    knobs = list(swept)  # the x axes: knobs, plus the throughput reached (a metric) where a rate axis cannot hold the loads
    # an all-at-once rate (inf) has no place on a rate axis: plot against the throughput reached
    if any(_is_max_rate(r.get("request_rate_rps")) for r in recs) or any(r.get("mode_step") not in (None, "grid") for r in recs):
        knobs = [k for k in knobs if k != "request_rate_rps"] + ["output_throughput_tok_s"]
    if not knobs:
        knobs = ["output_throughput_tok_s"]
    pts = [(r, *_energy_tok(r)) for r in recs]
    have = [(r, e, b) for r, e, b in pts if e is not None]
    if not have:
        why = _reason(recs, "steady_energy_per_output_token_j") if recs else "no points"
        why2 = _reason(recs, "energy_per_output_token_j") if recs else ""
        return Section("Energy per output token vs each knob",
                       _note(f"Energy was not measured in this run, so J/output token is null (steady window: {why}; whole load: {why2}). "
                             "Run on a machine with readable NVML energy counters (GPU) or RAPL (CPU); `charbench env` lists the usable meters. "
                             f"Knobs swept: {', '.join(swept) or 'none'}."), anchor="energy-knobs")
    fig = make_subplots(rows=len(knobs), cols=1, subplot_titles=[f"J/output token vs {k}" for k in knobs])
    loads = list(dict.fromkeys(str(r.get("offered_load")) for r, _, _ in have))
    other = _varying(recs)
    for i, k in enumerate(knobs, start=1):
        for li, load in enumerate(loads):
            for basis, sym in (("steady", "circle"), ("whole load", "diamond-open")):
                sel = [(r, e) for r, e, b in have if b == basis and r.get(k) is not None and str(r.get("offered_load")) == load]
                if not sel:
                    continue
                color = PALETTE[li % len(PALETTE)]
                fig.add_trace(go.Scatter(x=[r.get(k) for r, _ in sel], y=[e for _, e in sel], mode="markers",
                                         marker={"symbol": sym, "size": 9, "color": color}, name=f"{load} ({basis})",
                                         legendgroup=f"{load}-{basis}", showlegend=(i == 1),
                                         text=[_config_label(r, other) for r, _ in sel]), row=i, col=1)
        fig.update_xaxes(title_text=_axis_title(k), row=i, col=1)
        fig.update_yaxes(title_text="energy per output token (J)", row=i, col=1)
    return Section("Energy per output token vs each knob", figure_html(fig, height=320 * len(knobs)),
                   note="Colour: offered load. Filled circles: steady-state window (ML.ENERGY style); open diamonds: whole load (the steady window did not form). Hover for the configuration.", anchor="energy-knobs")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (latency, energy), both minimized, by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_section(data: RunData, recs: list[dict[str, Any]]) -> Section:
    """Energy per token vs a latency percentile, the Pareto frontier and the SLO line."""
    import plotly.graph_objects as go

    cfg = _study_cfg(data)
    metric = cfg.get("pareto_latency") or "tpot"
    att = float(cfg.get("slo_attainment") or 0.9)
    pct = "p99" if att > 0.95 else "p90"
    slo = cfg.get(f"slo_{metric}_ms")
    field = f"{pct}_{metric}_ms"
    knobs = _varying(recs)
    pts, labels = [], []
    for r in recs:
        e, basis = _energy_tok(r)
        lat = r.get(field)
        if e is not None and _isnum(lat):
            pts.append((float(lat), e))
            labels.append(f"{_load_label(r, knobs)} ({basis})")
    title = "Energy-latency Pareto frontier"
    if not pts:
        return Section(title, _note(f"No load has both {field} and a measured J/output token ({_reason(recs, 'energy_per_output_token_j') if recs else 'no points'})."
                                    + (f" SLO on {metric.upper()}: {slo} ms." if slo else "")), anchor="pareto")
    front = pareto_front(pts)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name="loads", text=labels, marker={"color": "#999", "size": 8}))
    fig.add_trace(go.Scatter(x=[pts[i][0] for i in front], y=[pts[i][1] for i in front], mode="lines+markers", name="Pareto frontier",
                             text=[labels[i] for i in front], marker={"size": 10}))
    if slo:
        # a trace, not a shape: shapes on log axes take log10 coordinates
        ys = [p[1] for p in pts]
        fig.add_trace(go.Scatter(x=[float(slo), float(slo)], y=[min(ys), max(ys)], mode="lines", name=f"SLO {metric.upper()} {slo:g} ms",
                                 line={"dash": "dash", "color": "red"}))
    fig.update_xaxes(title_text=f"{pct} {metric.upper()} (ms)", type="log")
    fig.update_yaxes(title_text="energy per output token (J)")
    return Section(title, figure_html(fig, height=480),
                   note=f"Lower-left is better. The latency axis is the {pct} (matching the {att:g} attainment target); loads left of the red line meet the {metric.upper()} SLO at that percentile.",
                   anchor="pareto")


def timeline_section(data: RunData, recs: list[dict[str, Any]]) -> Section:
    """Power and clock timelines with each load's window (and steady window) shaded."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = data.samples
    if s is None or len(s) == 0 or "t_s" not in s:
        return Section("Power and clock timelines", _note("No sampler timeline in this run (sampler off or nothing readable)."), anchor="serving-timeline")
    power = [c for c in s.columns if c.endswith("_power_w") and s[c].notna().any()]
    clock = [c for c in s.columns if c.endswith("_sm_clock_mhz") and s[c].notna().any()]
    if not power and not clock:
        return Section("Power and clock timelines", _note("The sampler ran but no power or clock source was readable here (see `charbench env`)."), anchor="serving-timeline")
    t0 = float(s["t_s"].min())
    rows = [("power (W)", power)] if power else []
    if clock:
        rows.append(("SM clock (MHz)", clock))
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=[r[0] for r in rows])
    for i, (_, cols) in enumerate(rows, start=1):
        for c in cols:
            fig.add_trace(go.Scattergl(x=s["t_s"] - t0, y=s[c], mode="lines", name=c), row=i, col=1)
    for r in recs:
        a, b = r.get("point_t0_s"), r.get("point_t1_s")
        if _isnum(a) and _isnum(b):
            fig.add_vrect(x0=a - t0, x1=b - t0, fillcolor="#1f77b4", opacity=0.08, line_width=0)
        a, b = r.get("steady_t0_s"), r.get("steady_t1_s")
        if _isnum(a) and _isnum(b):
            fig.add_vrect(x0=a - t0, x1=b - t0, fillcolor="#2ca02c", opacity=0.15, line_width=0)
    for i, (title, _) in enumerate(rows, start=1):
        fig.update_yaxes(title_text=title, row=i, col=1)
    fig.update_xaxes(title_text="time since first sample (s)", row=len(rows), col=1)
    return Section("Power and clock timelines", figure_html(fig, height=280 * len(rows)),
                   note="Blue bands: measured loads; green bands: their steady-state windows. Sampled values for context; energies come from counters.", anchor="serving-timeline")


def best_config_section(data: RunData, recs: list[dict[str, Any]]) -> Section:
    """The best configuration under the SLO per workload class."""
    import pandas as pd

    from charbench.workloads.serving.profile import best_under_slo

    cfg = _study_cfg(data)
    slo = {k[4:]: cfg.get(k) for k in ("slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms") if cfg.get(k) is not None}
    att = float(cfg.get("slo_attainment") or 0.9)
    if not slo:
        return Section("Best configuration under the SLO", _note("No SLO was given (--slo ttft_ms=...,tpot_ms=...,e2el_ms=...), so no configuration can be ranked against one."), anchor="best-config")
    rows = []
    for b in best_under_slo(recs, att):
        rows.append({
            "workload class": b["workload_class"],
            "loads": b["candidates"],
            "meeting SLO": b["meeting_slo"],
            "best configuration": ", ".join(f"{k}={'max throughput' if _is_max_rate(v) else v}" for k, v in (b["config"] or {}).items())
                                  or "none meets the SLO",
            "chosen by": b.get("criterion") or "",
            "J/out tok": b.get("energy_per_output_token_j"),
            "goodput req/s": b.get("request_goodput_rps"),
        })
    slo_text = ", ".join(f"{k} <= {v:g}" for k, v in slo.items())
    return Section("Best configuration under the SLO", table_html(pd.DataFrame(rows)),
                   note=f"SLO: {slo_text}; a load meets it when at least {att:g} of its requests do.", anchor="best-config")


def mode_section(recs: list[dict[str, Any]]) -> Section | None:
    """The sweep or SLO-search steps."""
    import pandas as pd

    steps = [r for r in recs if r.get("mode_step") not in (None, "grid")]
    if not steps:
        return None
    search = any(str(r.get("mode_step", "")).startswith("search") for r in steps)
    knobs = _varying(recs)
    rows = [{
        "configuration": _config_label(r, knobs),
        "step": r.get("mode_step"),
        "offered load": r.get("offered_load"),
        "req/s": r.get("request_throughput_rps"),
        "SLO attainment": r.get("slo_attainment_frac"),
        **({"best": bool(r.get("slo_search_best")), "max rate meeting SLO": r.get("slo_max_rate_rps"), "note": r.get("slo_search_note")} if search else {}),
    } for r in steps]
    title = "SLO search" if search else "Sweep (synchronous -> throughput)"
    note = ("Bisection for the largest request rate whose SLO attainment meets the target." if search
            else "GuideLLM-style sweep: one request at a time, all at once, then rates evenly spaced between the two measured throughputs.")
    return Section(title, table_html(pd.DataFrame(rows)), note=note, anchor="mode")


def server_section(recs: list[dict[str, Any]]) -> Section | None:
    """Client-side vs server-side TTFT/ITL medians."""
    import pandas as pd

    have = [r for r in recs if _isnum(r.get("median_server_ttft_ms"))]
    if not have:
        return None
    knobs = _varying(recs)
    rows = [{
        "load": _load_label(r, knobs),
        "client median TTFT ms": r.get("median_client_joined_ttft_ms"),
        "server median TTFT ms": r.get("median_server_ttft_ms"),
        "median client-server TTFT ms": r.get("median_ttft_client_minus_server_ms"),
        "server median ITL ms": r.get("median_server_itl_ms"),
        "median client-server ITL ms": r.get("median_itl_client_minus_server_ms"),
        "server median queue ms": r.get("median_server_queue_ms"),
        "preemptions": r.get("total_server_preemption_count"),
    } for r in have]
    return Section("Client vs server timing", table_html(pd.DataFrame(rows)),
                   note="Server-side timestamps from the built-in engine's own request records; differences are network + HTTP + scheduling of the client.", anchor="client-server")


def steady_section(recs: list[dict[str, Any]]) -> Section:
    """Where the steady-state window formed, and why not where it did not."""
    import pandas as pd

    knobs = _varying(recs)
    rows = []
    for r in recs:
        formed = _isnum(r.get("steady_time_s"))
        rows.append({
            "load": _load_label(r, knobs),
            "max_num_seqs": r.get("max_num_seqs"),
            "peak concurrency": r.get("max_in_flight_count"),
            "steady s": r.get("steady_time_s"),
            "steady out tok": r.get("steady_output_tokens"),
            "steady tok/s": r.get("steady_output_throughput_tok_s"),
            "steady J": r.get("steady_energy_j"),
            "why none": "" if formed else _reason([r], "steady_time_s"),
        })
    return Section("Steady-state windows", table_html(pd.DataFrame(rows)),
                   note="The window opens when max_num_seqs requests decode at once and closes when fewer than max_num_seqs remain (ML.ENERGY benchmark's definition, applied live).",
                   anchor="steady")


def weights_section(recs: list[dict[str, Any]]) -> Section | None:
    """A warning first in the report when loads ran on random weights (their completions
    are meaningless text, which looks like a bug to a newcomer); None when none did."""
    from charbench.engine.labels import RANDOM, RANDOM_WEIGHTS_WARNING

    hit = [r for r in recs if r.get("engine_weights") == RANDOM]
    if not hit:
        return None
    models = sorted({str(r.get("engine_model") or r.get("served_model") or r.get("model") or "?") for r in hit})
    text = (f"{len(hit)} of {len(recs)} load(s) ran on random weights (model {', '.join(models)}): "
            f"{RANDOM_WEIGHTS_WARNING}. Latency, throughput and energy are those of the model's shape.")
    html = f'<div class="failure"><span class="badge not-measured">random weights</span> {escape(text)}</div>'
    return Section("Random weights", html, anchor="random-weights")


def report_sections(data: RunData) -> list[Section]:
    """Every serve-sweep section for the run's report (a random-weights warning first)."""
    recs = _records(data)
    if not recs:
        return [Section("Serving results", _note("No completed load in this run (see Failures)."), anchor="serving-summary")]
    warning = weights_section(recs)
    out = [] if warning is None else [warning]
    out += [summary_section(recs), cdf_section(data, recs), throughput_latency_section(recs), energy_knob_section(recs),
            pareto_section(data, recs), timeline_section(data, recs), best_config_section(data, recs)]
    for extra in (mode_section(recs), server_section(recs)):
        if extra is not None:
            out.append(extra)
    out.append(steady_section(recs))
    return out
