"""Report sections of ``charbench gemm-power`` (the run report's study part).

Hooked in through ``GemmPowerStudy.report_hook``; everything is rebuilt from the run folder::

    charbench report charbench-runs/gemm-power/<run>

Sections: a summary with provenance badges (NVML / RAPL / estimated / not measured), the
largest swing per dtype next to the paper's A100 numbers, one figure per experiment (swept
parameter vs power, energy per GEMM, SM clock, throughput or time per GEMM, toggle rate; one
line per dtype/backend, bars = spread over seeds and repeats), and power vs toggle rate with
the fitted model. Without power data every figure still shows time per GEMM and GFLOP/s,
and the text says plainly that power was not measured.
"""

from __future__ import annotations

import json
from typing import Any

from markupsafe import escape as _escape

from charbench.pages import SERIES, Section, display_unit, figure_html, table_html
from charbench.report import RunData

def escape(text: Any) -> str:
    """HTML-escaped text as a plain str (so concatenation never re-escapes markup)."""
    return str(_escape(text))


_COLORS = list(SERIES)  # the palette every study shares (charbench.pages)


def _badge(kind: str) -> str:
    cls = {"estimated": "estimated", "not measured": "not-measured", "sampled": "estimated"}.get(kind, "measured")
    return f'<span class="badge {cls}">{escape(kind)}</span>'


def power_provenance(df: Any) -> tuple[str, str]:
    """(badge label, explanation) of where this run's power numbers come from."""
    sources: set[str] = set()
    if "provenance" in df.columns:
        for text in df["provenance"].dropna():
            src = json.loads(text).get("energy_j")
            if src:
                sources.add(str(src))
    if sources:
        joined = ", ".join(sorted(sources))
        if any("nvml" in s for s in sources):
            return "NVML", f"energy counter delta per point ({joined})"
        if any("rapl" in s for s in sources):
            return "RAPL", f"RAPL energy counters per point ({joined})"
        return "measured", joined
    from charbench.workloads.gemm_power.analysis import power_column

    sampled = power_column(df)
    if sampled is not None and sampled != "mean_power_w":
        return "sampled", (f"no energy counter reading; power is the background sampler's mean ({sampled}), "
                           "a fallback that can miss short peaks")
    if "power_estimated_w" in df.columns and df["power_estimated_w"].notna().any():
        return "estimated", "no power meter here; power is estimated from the operands' switching activity with a calibration (--predict)"
    reason = "no energy meter usable on this machine"
    if "null_reasons" in df.columns:
        for text in df["null_reasons"].dropna():
            r = json.loads(text).get("energy_j")
            if r:
                reason = str(r)
                break
    return "not measured", reason


def _power_metric(df: Any) -> tuple[str | None, str]:
    """(column, axis label) of the power shown: measured first, else estimated."""
    from charbench.workloads.gemm_power.analysis import power_column

    col = power_column(df)
    if col == "mean_power_w":
        return col, "power (W)"
    if col is not None:  # the counter-based average is missing: the sampler's mean, labeled as such
        return col, "power, sampled mean (W)"
    if "power_estimated_w" in df.columns and df["power_estimated_w"].notna().any():
        return "power_estimated_w", "power, estimated (W)"
    return None, ""


def _power_kind(column: str | None) -> str:
    """How a power column was obtained, for legends: measured, sampled or estimated."""
    if column == "power_estimated_w":
        return "estimated"
    return "measured" if column == "mean_power_w" else "sampled"


def _series_key(row: Any) -> str:
    return f"{row['dtype']} / {row['backend']}"


def _agg(df: Any, metric: str) -> Any:
    """Mean, min, max of ``metric`` per (dtype, backend, value): the seed/repeat spread."""
    d = df[df[metric].notna()]
    if len(d) == 0:
        return None
    g = d.groupby(["dtype", "backend", "value"], sort=True)[metric]
    out = g.agg(["mean", "min", "max", "count"]).reset_index()
    return out


def _summary_section(data: RunData) -> Section:
    df = data.results
    badge, why = power_provenance(df)
    cfg = data.config.get("study_config", {})
    settings = data.config.get("settings", {})  # the runner's (cooldown); old folders' are moved here on read
    dev = str(df["device_name"].iloc[0]) if "device_name" in df.columns and len(df) else str(data.meta.get("device", "?"))
    size = cfg.get("size")
    pairs = sorted({f"{r['dtype']}/{r['backend']}" for _, r in df[["dtype", "backend"]].iterrows()}) if len(df) else []
    parts = [
        f"<p>Power source: {_badge(badge)} {escape(why)}</p>",
        '<div class="kv">',
        f"<div>device</div><div>{escape(dev)}</div>",
        f"<div>GEMM size M,N,K</div><div>{escape(str(size))}</div>",
        f"<div>dtype / backend</div><div>{escape(', '.join(pairs) or 'none')}</div>",
        f"<div>time per point</div><div>{escape(str(cfg.get('duration_s')))} s (warm-up {escape(str(cfg.get('warmup_s')))} s, cooldown {escape(str(settings.get('cooldown_s')))} s)</div>",
        f"<div>seeds x repeats</div><div>{escape(str(cfg.get('seeds')))} x {escape(str(cfg.get('repeats')))}</div>",
        f"<div>points</div><div>{len(df)} measured, {len(data.failures)} failed</div>",
        "</div>",
    ]
    if badge == "not measured":
        parts.append(
            '<p class="note"><b>Power was not measured on this machine</b> (' + escape(why) + "). The figures show time per "
            "GEMM and GFLOP/s against each swept parameter: input-dependent CPU effects (e.g. subnormals, zero-skipping) "
            "are measured, not assumed. Power values are null in the data, never 0.</p>"
        )
    elif badge == "estimated":
        parts.append('<p class="note"><b>Power is estimated</b> from a calibration (labeled estimated everywhere it appears); it was not measured here.</p>')
    checks = data.store.path / "correctness.json"
    if checks.is_file():
        rows = json.loads(checks.read_text())
        import pandas as pd

        tab = pd.DataFrame([{"dtype/backend": k, "ok": v.get("ok"), "relative error": v.get("rel_error"), "bound": v.get("bound"),
                             "detail": v.get("message") or v.get("error")} for k, v in rows.items()])
        parts.append("<h3>Correctness against float64 (fresh random inputs)</h3>" + table_html(tab))
    return Section("GEMM power: summary", "\n".join(parts), anchor="gemm-summary")


def _swing_section(data: RunData) -> Section:
    import pandas as pd

    from charbench.workloads.gemm_power.analysis import headline, paper_a100

    df = data.results
    metric, label = _power_metric(df)
    unit, what = "W", "power"
    if metric is None:
        metric, label, unit, what = "time_per_gemm_ms", "time per GEMM (ms)", "ms", "time per GEMM on this machine (no power meter)"
    hd = headline(df, metric)
    paper = paper_a100()
    rows = []
    for _, r in hd.iterrows():
        p = paper["dtypes"].get(r["dtype"])
        comparable = bool(r["beyond_noise"]) and p is not None and unit == "W"
        rows.append({
            "dtype": r["dtype"], "backend": r["backend"],
            f"baseline ({unit})": r["baseline"], f"lowest ({unit})": r["lowest"], "at lowest": r["at_lowest"],
            "swing % (baseline - lowest) / baseline": r["swing_paper_pct"],
            "paper A100 swing %, same definition": p["swing_paper_pct"] if comparable else None,
            "(max - min) / max %": r["swing_maxmin_pct"],
            "paper A100 (max - min) / max %": p["swing_maxmin_pct"] if comparable else None,
            f"noise ({unit}, min-max over seeds/repeats)": r["noise"],
            "paper label": p["paper_label"] if p else "not in the paper",
            "why no paper comparison": ("" if comparable else
                                        ("the paper measured power; this run measured time" if p is not None and unit != "W" else
                                         r["why"] or ("not in the paper" if p is None else ""))),
        })
    note = (f"What this measures: {what}. Headline = the paper's definition, (baseline - lowest) / baseline of the mean {label} "
            "over seeds and repeats, computed the same way for this run and for the paper's traces; (max - min) / max is the second, "
            "labeled column. The paper's number is shown only where this run's swing exceeds its own noise (the larger min-max "
            "spread over seeds/repeats of the baseline and the lowest point) and power was measured. Non-GEMM experiments "
            f"(16-18, idle) are left out. Paper numbers: {paper['device']}; {paper['source']} Citation: {paper['citation']}")
    body = table_html(pd.DataFrame(rows)) if rows else '<p class="muted">No completed points.</p>'
    if unit == "ms":
        body = '<p class="note">Power was not measured here: the swing is in time per GEMM on a CPU, which is not comparable with the paper\'s power.</p>' + body
    elif metric == "power_estimated_w":
        body = f'<p class="note">{_badge("estimated")} The swing is in estimated power.</p>' + body
    return Section("Headline: swing per dtype vs the paper's A100", body, note=note, anchor="gemm-swing")


def _switching_model_section(data: RunData) -> Section | None:
    import pandas as pd

    from charbench.workloads.gemm_power.analysis import fit_switching_models

    df = data.results
    if df is None or len(df) == 0 or not any(c.startswith("tog_") for c in df.columns):
        return None
    models, notes = fit_switching_models(df)
    if not models:
        return Section("Switching model (per operand, per bit field)", '<p class="muted">' + escape("; ".join(notes)) + "</p>",
                       anchor="gemm-switching")
    rows = [{"dtype": m.dtype, "backend": m.backend, "points": m.n_points, "R^2": m.r2, "LOEO MAE (W)": m.loeo_mae_w,
             "throttled points (power cap W)": f"{m.n_throttled} ({m.power_cap_w:.0f})" if m.power_cap_w is not None else "0",
             "R^2 Hamming weight alone (paper's metric)": m.baseline_r2.get("hamming_frac"),
             "R^2 toggle+hamming+zero": m.baseline_r2.get("three_feature"),
             "model": ("min(" if m.power_cap_w is not None else "") + f"{m.coef[0]:.1f} W"
             + "".join(f" {c:+.1f} W x {f}" for c, f in zip(m.coef[1:], m.features))
             + (f", {m.power_cap_w:.0f} W)" if m.power_cap_w is not None else "")} for m in models]
    note = ("Features per operand (a = A, b = B) and bit field (sign, exp, man; int8: sign, hi, lo): hw = set bits per field bit, "
            "tog_x_k = flipped bits between neighbours along K, tog_x_mn = along M (A) / N (B), zero = zero elements. Forward "
            "selection adds the feature that lowers the leave-one-experiment-out MAE most, while it drops by >= 0.1 W (at most 6); "
            "that MAE is optimistic (it chose the features). pp_k/pp_mn = the partial products' expected toggle rate. Points whose "
            "SM clock was throttled (below 99% of the highest) ran at the power limit: the fit treats them as censored and "
            "predicts min(cap, linear). Points are means over seeds.")
    return Section("Switching model (per operand, per bit field)", table_html(pd.DataFrame(rows)), note=note, anchor="gemm-switching")


def _other_section(data: RunData) -> Section | None:
    """Experiments 16-18 and idle: memory contents, the bit-flip kernel, the idle GPU, beside the paper's A100."""
    import pandas as pd
    import plotly.graph_objects as go

    from charbench.workloads.gemm_power.analysis import NON_GEMM, paper_a100

    df = data.results
    d = df[df["experiment"].isin(NON_GEMM)]
    if len(d) == 0:
        return None
    pmetric, plabel = _power_metric(d)
    other = paper_a100().get("other_experiments_int8", {})
    parts: list[str] = []
    flips = d[d["experiment"] == "bit-flips"]
    if len(flips):
        metric, label = (pmetric, plabel) if pmetric else ("time_per_launch_ms", "time per launch (ms)")
        if metric in flips.columns and flips[metric].notna().any():
            g = flips.groupby("value", sort=True)[metric].agg(["mean", "min", "max"]).reset_index()
            fig = go.Figure(go.Scatter(x=g["value"], y=g["mean"], mode="lines+markers", name=f"this run ({label})",
                                       error_y=dict(type="data", symmetric=False, array=g["max"] - g["mean"], arrayminus=g["mean"] - g["min"])))
            if pmetric and other.get("bit_flips_w"):
                fig.add_trace(go.Scatter(x=[p[0] for p in other["bit_flips_w"]], y=[p[1] for p in other["bit_flips_w"]],
                                         mode="lines+markers", name="paper A100 (DCGM, W)"))
            fig.update_layout(xaxis_title="bits in the XOR mask (the paper's n; >= 8 flips the whole int8)", yaxis_title=label)
            parts.append(figure_html(fig, height=380))
    rest = d[d["experiment"] != "bit-flips"]
    if len(rest):
        rows = []
        paper_w = {"memory-ones": other.get("memory_ones_w"), "memory-zeros": other.get("memory_zeros_w"), "idle": other.get("idle_w")}
        for name, grp in rest.groupby("experiment", sort=True):
            rows.append({"experiment": name, f"mean {plabel}" if pmetric else "power": grp[pmetric].mean() if pmetric else None,
                         "fill time (ms)": grp["fill_ms"].mean() if "fill_ms" in grp.columns else None,
                         "paper A100 (W)": paper_w.get(str(name))})
        parts.append(table_html(pd.DataFrame(rows)))
    note = ("IDP other_expt.cu: 16/17 keep a 65536^2 int8 matrix of ones/zeros resident for 300 s with nothing running; 18 launches "
            "A ^= mask over a 16384^2 int8 matrix 10,000 times (mask of n ones, truncated to the byte); idle: 300 s with nothing. "
            "On a GPU with the paper sweep charbench uses those sizes; otherwise the run's M x N. Without a power meter only "
            "time is measured (time per launch; the memory fill time).")
    return Section("Experiments 16-18 and idle (no GEMM)", "\n".join(parts), note=note, anchor="gemm-other")


def _experiment_section(data: RunData, name: str) -> Section | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from charbench.workloads.gemm_power.analysis import NON_GEMM, paper_a100
    from charbench.workloads.gemm_power.experiments import EXPERIMENTS

    df = data.results
    d = df[df["experiment"] == name]
    if len(d) == 0 or name in NON_GEMM:
        return None
    exp = EXPERIMENTS.get(name)
    gpu = "throughput_tflop_s" in d.columns and str(data.meta.get("device", "")).startswith("cuda")
    pmetric, plabel = _power_metric(d)
    rows: list[tuple[str, str, float]] = []  # (column, title, scale)
    if pmetric:
        rows.append((pmetric, plabel, 1.0))
    if "energy_per_gemm_j" in d.columns and d["energy_per_gemm_j"].notna().any():
        rows.append(("energy_per_gemm_j", "energy per GEMM (mJ)", 1e3))
    clock = next((c for c in d.columns if c.startswith("mean_gpu") and c.endswith("_sm_clock_mhz") and d[c].notna().any()), None)
    if clock:
        rows.append((clock, "SM clock (MHz)", 1.0))
    # the unit every page (run, compare, history) shows this quantity in: GFLOP/s for a CPU's small values
    unit, tscale = display_unit("throughput_tflop_s", d["throughput_tflop_s"] if "throughput_tflop_s" in d.columns else ())
    if not gpu:
        rows.append(("time_per_gemm_ms", "time per GEMM (ms)", 1.0))
    rows.append(("throughput_tflop_s", f"throughput ({unit})", tscale))
    rows.append(("toggle_k_frac", "toggle rate along K (flipped bits per bit)", 1.0))
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=[r[1] for r in rows], vertical_spacing=0.06)
    series = sorted({_series_key(r) for _, r in d[["dtype", "backend"]].iterrows()})
    for r_i, (col, _title, scale) in enumerate(rows, start=1):
        if col not in d.columns:
            continue
        agg = _agg(d, col)
        if agg is None:
            continue
        for s_i, key in enumerate(series):
            dt, be = key.split(" / ")
            a = agg[(agg["dtype"] == dt) & (agg["backend"] == be)]
            if len(a) == 0:
                continue
            color = _COLORS[s_i % len(_COLORS)]
            fig.add_trace(go.Scatter(
                x=a["value"], y=a["mean"] * scale, mode="lines+markers", name=key, legendgroup=key, showlegend=r_i == 1,
                line=dict(color=color),
                error_y=dict(type="data", symmetric=False, array=(a["max"] - a["mean"]) * scale, arrayminus=(a["mean"] - a["min"]) * scale, visible=True),
                hovertemplate=f"{key}<br>%{{x}}<br>%{{y:.4g}}<extra></extra>",
            ), row=r_i, col=1)
    trend = paper_a100().get("trends", {}).get(name, {})
    if pmetric and trend:
        for dt, pts in trend.items():
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=f"paper A100 {dt}",
                                     line=dict(dash="dash", color="#999"), marker=dict(symbol="x")), row=1, col=1)
    xtitle = f"{exp.param}: {exp.title}" if exp else "value"
    for r_i, (_col, title, _scale) in enumerate(rows, start=1):
        fig.update_yaxes(title_text=title, title_font={"size": 11}, row=r_i, col=1)
    fig.update_xaxes(title_text=xtitle, row=len(rows), col=1)
    if exp and exp.log_x:
        fig.update_xaxes(type="log")
    title = f"{exp.number}. {name}: {exp.title}" if exp and exp.number else f"{name}: {exp.title if exp else ''}"
    note = "Lines: mean over seeds and repeats; bars: min to max over them (the spread of repeated points: their noise)."
    if not pmetric:
        note += " Power was not measured on this machine; time per GEMM and GFLOP/s are measured."
    elif pmetric == "power_estimated_w":
        note += " Power is estimated (calibration), not measured."
    return Section(title, figure_html(fig, height=230 * len(rows) + 80), note=note, anchor=f"exp-{name}")


def _model_section(data: RunData) -> Section:
    import pandas as pd
    import plotly.graph_objects as go

    from charbench.workloads.gemm_power.analysis import fit_power_models

    df = data.results
    models, notes = fit_power_models(df)
    parts: list[str] = []
    pmetric, plabel = _power_metric(df)
    if not models:
        if pmetric == "power_estimated_w":
            parts.append(f'<p>{_badge("estimated")} No measured power to fit here; the estimated power below comes from the calibration given with --predict.</p>')
        else:
            parts.append('<p><b>No power data to fit</b>: ' + escape("; ".join(notes) or "power was not measured") +
                         '. Run on a GPU (NVML) or a CPU with readable RAPL to fit the model, or pass --predict CALIBRATION for estimated power.</p>')
    if pmetric and "toggle_k_frac" in df.columns:
        fig = go.Figure()
        d = df[df[pmetric].notna()]
        for i, ((dt, be), grp) in enumerate(d.groupby(["dtype", "backend"], sort=True)):
            color = _COLORS[i % len(_COLORS)]
            fig.add_trace(go.Scatter(x=grp["toggle_k_frac"], y=grp[pmetric], mode="markers", name=f"{dt}/{be} {_power_kind(pmetric)}",
                                     marker=dict(color=color), text=grp["experiment"] + " " + grp["value"].astype(str),
                                     hovertemplate="%{text}<br>toggle %{x:.3f}<br>%{y:.1f} W<extra></extra>"))
            model = next((m for m in models if m.dtype == dt and m.backend == be), None)
            if model is not None:
                pred = [model.predict(r) for r in grp[list(model.features)].to_dict("records")]
                fig.add_trace(go.Scatter(x=grp["toggle_k_frac"], y=pred, mode="markers", name=f"{dt}/{be} model",
                                         marker=dict(color=color, symbol="x-thin", size=9, line=dict(width=2, color=color))))
        fig.update_layout(xaxis_title="operand toggle rate along K (flipped bits per bit)", yaxis_title=plabel)
        parts.append(figure_html(fig, height=480))
    if models:
        tab = pd.DataFrame([{
            "device": m.device_name, "dtype": m.dtype, "backend": m.backend, "points": m.n_points, "power column": m.power_metric,
            **m.coefficients(), "R^2": m.r2, "leave-one-experiment-out MAE (W)": m.loo_mae_w,
            "LOO MAPE %": (100 * m.loo_mape) if m.loo_mape is not None else None, "rank": m.rank,
        } for m in models])
        parts.append(table_html(tab))
        if (data.store.path / "power_calibration.json").is_file():
            parts.append(f'<p>Calibration saved: <code>{escape(str(data.store.path / "power_calibration.json"))}</code> '
                         "(use it with <code>charbench gemm-power --predict FILE</code> on a machine without a GPU).</p>")
        if notes:
            parts.append('<p class="muted">' + escape("; ".join(notes)) + "</p>")
    note = ("Model per (device, dtype, backend): power = intercept + toggle_w * toggle_k_frac + hamming_w * hamming_frac + zero_w * "
            "zero_operand_frac, least squares. Toggle rate = mean Hamming distance between consecutive operands along K (A by rows, "
            "B by columns) per format bit. Leave-one-experiment-out: each experiment predicted by a fit of the others.")
    return Section("Power vs operand toggle rate (fitted model)", "\n".join(parts), note=note, anchor="gemm-model")


def _features_section(data: RunData) -> Section | None:
    df = data.results
    cols = ["experiment", "value", "hamming_frac", "bit_alignment_frac", "toggle_k_frac", "toggle_mn_frac", "zero_operand_frac", "zero_product_frac"]
    if len(df) == 0 or not set(cols) <= set(df.columns):
        return None
    first = df["dtype"].iloc[0]
    d = df[df["dtype"] == first].groupby(["experiment", "value"], sort=False)[cols[2:]].mean().reset_index()
    return Section(f"Switching activity of the inputs ({first})", table_html(d),
                   note="Per-bit fractions, means over seeds. toggle_mn_frac: neighbours along M for A and along N for B (the axis that does not stream into a dot product).",
                   anchor="gemm-features")


def report_sections(data: RunData) -> list[Section]:
    """All gemm-power sections for one run folder."""
    df = data.results
    if df is None or len(df) == 0:
        return [Section("GEMM power", '<p class="muted">No completed points; see Failures.</p>')]
    from charbench.workloads.gemm_power.experiments import EXPERIMENTS

    sections = [_summary_section(data), _swing_section(data)]
    present = [n for n in EXPERIMENTS if n in set(df["experiment"])]
    for name in present:
        s = _experiment_section(data, name)
        if s is not None:
            sections.append(s)
    oth = _other_section(data)
    if oth is not None:
        sections.append(oth)
    sections.append(_model_section(data))
    sm = _switching_model_section(data)
    if sm is not None:
        sections.append(sm)
    f = _features_section(data)
    if f is not None:
        sections.append(f)
    return sections
