"""A static index of every run under a results folder, with trends per study.

::

    charbench report --history charbench-runs                 # writes charbench-runs/index.html
    charbench report --history charbench-runs --out site/index.html

    render_history(Path("charbench-runs"), None)

The page has one row per run (study, date, label, run id, git sha, host, GPU, device,
status, points done/failed, link to the run's report) and, per study, trend charts of
its headline metrics over runs: one line per series (the values of the knobs in
:data:`SERIES_KNOBS`: model, dtype, backend, tp), each marker one run, its value the median
over that series' points (runs that did not complete are drawn as open markers). Headline
metrics matter and vary (:func:`headline_metrics`): the study's gates (or fallback gates) and
declared metrics whose values spread over the runs, never a fixed duration. Links are
relative, so the folder can be published as it is (CI artifact, static site); the page
is self-contained otherwise (plotly.js embedded).
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError, RunStoreError
from charbench.results import RunStore, list_runs
from charbench.runlock import run_status

#: most metrics charted per study
MAX_TREND_METRICS = 4


#: knobs whose values define separate series in a trend (a median over fp32 and bf16 points means neither)
SERIES_KNOBS: tuple[str, ...] = ("model", "dtype", "backend", "tp")
#: a metric is trended only if its values spread by more than this fraction of their median over the study's runs
VARY_FRAC = 0.01
#: the spine's own window length (seconds a point's measured window lasted): a setting's echo, not a result
WINDOW_LENGTH_METRICS = frozenset({"time_s", "steady_time_s"})


@dataclass
class RunSummary:
    """What the index shows of one run.

    Attributes:
        medians: metric -> median over all the run's points.
        series: series label (``dtype=fp32 backend=torch``; ``all points`` without series knobs) ->
            metric -> (median over the series' points, number of points).
        ranges: metric -> (min, max) over the run's points.
    """

    store: RunStore
    facts: dict[str, str]
    medians: dict[str, float]
    metrics: list[str]
    started: _dt.datetime | None
    series: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


def _parse_time(text: Any) -> _dt.datetime | None:
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


class _WithoutEnv(RunStore):
    """A run whose env.json (or run.json) is damaged: its facts come from what is readable."""

    def env(self) -> dict[str, Any]:
        """Nothing: the file is damaged."""
        return {}


def damaged_run(path: Path, error: Exception) -> RunSummary:
    """The row of a run whose run.json is damaged: listed as damaged, with the reason, and no metrics."""
    store = _WithoutEnv(path, {"study": path.parent.name, "run_id": path.name})
    return _mark_damaged(_summary(store, []), store, error)


def _mark_damaged(summary: RunSummary, store: RunStore, error: Exception) -> RunSummary:
    # the folder is in the table already: the reason need not repeat its path
    reason = str(error).replace(f"{store.path}{os.sep}", "")
    summary.facts["status"] = f"damaged: {reason}"
    return summary


def summarize_run(store: RunStore) -> RunSummary:
    """Facts and per-metric medians of one run (a run with unreadable results has none; one
    with an unreadable env.json is listed as damaged)."""
    try:
        store.env()
    except RunStoreError as exc:  # one damaged env.json must not break the page of every run
        store = _WithoutEnv(store.path, store.meta)
        return _mark_damaged(_summary(store, None), store, exc)
    return _summary(store, None)


def _summary(store: RunStore, rows: list[dict[str, Any]] | None) -> RunSummary:
    """Facts and medians of ``store`` (``rows`` None: read its records)."""
    from charbench.compare import is_number, metric_columns, knob_names, run_facts

    facts = run_facts(store)
    facts["status"] = run_status(store.meta)  # "stale" for a running run whose process is gone
    try:
        rows = store.records() if rows is None else rows
    except Exception as exc:  # a damaged results file must not hide the other runs
        rows = []
        facts["status"] = f"{facts['status']} (results unreadable: {type(exc).__name__})"
    knobs = knob_names(rows)
    metrics = metric_columns(rows, set(knobs)) if rows else []
    medians: dict[str, float] = {}
    ranges: dict[str, tuple[float, float]] = {}
    series_knobs = [k for k in SERIES_KNOBS if k in knobs]
    by_series: dict[str, list[dict[str, Any]]] = {}
    for r in rows or []:
        label = " ".join(f"{k}={r.get(k)}" for k in series_knobs) or "all points"
        by_series.setdefault(label, []).append(r)
    series: dict[str, dict[str, tuple[float, int]]] = {}
    for m in metrics:
        vals = _finite(rows, m)
        if vals:
            medians[m] = statistics.median(vals)
            ranges[m] = (min(vals), max(vals))
        for label, rs in by_series.items():
            v = _finite(rs, m)
            if v:
                series.setdefault(label, {})[m] = (statistics.median(v), len(v))
    return RunSummary(store, facts, medians, metrics, _parse_time(store.meta.get("started")), series, ranges)


def _finite(rows: list[dict[str, Any]], metric: str) -> list[float]:
    from charbench.compare.columns import is_finite_number

    return [float(r[metric]) for r in rows if is_finite_number(r.get(metric))]


def headline_metrics(study: str, runs: list[RunSummary]) -> list[str]:
    """Metrics charted for a study: those that matter and that vary.

    Matter: the study's gates (its fallback gates where the gates were not measured), then the
    other metrics it declares (``StudySpec.metrics``); a study that declares none: every metric
    with a better direction (costs and throughputs before neutral columns), except the spine's
    window length (``time_s``: the fixed duration a point was run for). Vary: the values over
    the runs' points spread by more than :data:`VARY_FRAC` of their median (a constant line says
    nothing; its value is in the run's report).
    """
    from charbench.compare import NEUTRAL, default_gates, metric_direction
    from charbench.compare.gates import study_fallback_gates
    from charbench.studies import find_study

    available: dict[str, None] = {}
    for r in runs:
        for m in r.metrics:
            if m in r.medians:
                available.setdefault(m, None)
    chosen = default_gates(study, available)
    if not chosen:
        chosen = [m for m in study_fallback_gates(study) if m in available]
    spec = find_study(study)
    declared = [m for m in (spec.metrics if spec is not None else ()) if m in available]
    chosen += [m for m in declared if m not in chosen]
    if not chosen and not declared:
        chosen = sorted((m for m in available if m not in WINDOW_LENGTH_METRICS and metric_direction(m) is not None),
                        key=lambda m: metric_direction(m) == NEUTRAL)
    return [m for m in chosen if _varies(m, runs)][:MAX_TREND_METRICS]


def _varies(metric: str, runs: list[RunSummary]) -> bool:
    """Over two or more runs: a series' median moved between runs; over one run: its points' values spread."""
    having = [r for r in runs if metric in r.medians]
    if len(having) >= 2:
        labels = {lab for r in having for lab in r.series}
        for lab in labels:
            meds = [r.series[lab][metric][0] for r in having if metric in r.series.get(lab, {})]
            if len(meds) >= 2 and _spread(meds):
                return True
        return False
    lows = [r.ranges[metric][0] for r in runs if metric in r.ranges]
    highs = [r.ranges[metric][1] for r in runs if metric in r.ranges]
    mids = [r.medians[metric] for r in runs if metric in r.medians]
    if not lows:
        return False
    scale = abs(statistics.median(mids)) or max(abs(min(lows)), abs(max(highs)))
    return (max(highs) - min(lows)) > VARY_FRAC * scale if scale else max(highs) != min(lows)


def _status_badge(status: str, failed: str) -> str:
    from charbench.pages import html_escape as _e

    cls = "measured" if status == "completed" else "not-measured"
    extra = f' <span class="badge not-measured">{_e(failed)} failed point(s)</span>' if failed not in ("0", "", "None") else ""
    return f'<span class="badge {cls}">{_e(status)}</span>{extra}'


def _runs_table(runs: list[RunSummary], out: Path) -> str:
    from charbench.pages import html_escape as _e, relative_link

    head = "".join(f"<th>{c}</th>" for c in ["started", "study", "label", "status", "points", "report", "git", "host", "gpu", "device", "run"])
    rows = []
    for r in sorted(runs, key=lambda r: (r.facts["started"], r.facts["run"]), reverse=True):
        f = r.facts
        rep = r.store.path / "report.html"
        link = f'<a href="{_e(relative_link(rep, out))}">report</a>' if rep.exists() else f'<span class="muted" title="charbench report {_e(r.store.path)}">not rendered</span>'
        when = r.started.strftime("%Y-%m-%d %H:%M") if r.started else f["started"]
        meta = r.store.meta.get("meta") or {}
        title = _e(", ".join(f"{k}={v}" for k, v in meta.items()))
        cells = [
            f'<td title="{_e(f["started"])}">{_e(when)}</td>', f"<td>{_e(f['study'])}</td>", f"<td>{_e(f['label'])}</td>",
            f"<td>{_status_badge(f['status'], f['failed'])}</td>", f"<td>{_e(f['points'])}</td>", f"<td>{link}</td>",
            *(f"<td>{_e(f[c])}</td>" for c in ("git", "host", "gpu", "device", "run")),
        ]
        rows.append(f'<tr title="{title}">{"".join(cells)}</tr>')
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _spread(vals: list[float]) -> bool:
    scale = abs(statistics.median(vals))
    return (max(vals) - min(vals)) > VARY_FRAC * scale if scale else max(vals) != min(vals)


def _series_names(labels: list[str]) -> dict[str, str]:
    """Series labels (``model=tiny dtype=fp32``) cut to the knobs that differ between series; one series: ``all points``."""
    from charbench.progress import naming_knobs

    pairs = {lab: dict(kv.split("=", 1) for kv in lab.split(" ") if "=" in kv) for lab in labels}
    if len(labels) <= 1:
        return {lab: "all points" for lab in labels}
    keep = naming_knobs(list(pairs.values()))
    return {lab: " ".join(f"{k}={v}" for k, v in pairs[lab].items() if k in keep) or lab for lab in labels}


def _run_labels(runs: list[RunSummary]) -> list[str]:
    """One x-axis label per run (``12-04 21:38 base``), unique, in run order: a run is a category, not an instant."""
    out: list[str] = []
    for r in runs:
        when = r.started.strftime("%m-%d %H:%M") if r.started else r.facts["started"][:16]
        label = f"{when} {r.facts['label'] or r.facts['run'][-6:]}".strip()
        if label in out:
            label = f"{label} ({r.facts['run']})"
        out.append(label)
    return out


def _trend_figure(study: str, runs: list[RunSummary]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from charbench.pages import display_unit, figure_html, html_escape as _e, metric_label

    metrics = headline_metrics(study, runs)
    if not any(r.medians for r in runs):
        return '<p class="muted">No run of this study has a unit-suffixed metric to chart.</p>'
    if not metrics:
        return ('<p class="muted">No metric of this study varies over its runs (or none is measured), so there is no trend to '
                "chart; each run's values are in its report.</p>")
    ordered = sorted(runs, key=lambda r: (r.facts["started"], r.facts["run"]))
    xs = _run_labels(ordered)
    units = {m: display_unit(m, [v for r in ordered if m in r.ranges for v in r.ranges[m]]) for m in metrics}
    titles = [f"{metric_label(m, [v for r in ordered if m in r.ranges for v in r.ranges[m]])}: median per series" for m in metrics]
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.12 if len(metrics) > 1 else 0.0)
    labels = list(dict.fromkeys(lab for r in ordered for lab in r.series))
    names = _series_names(labels)
    for i, m in enumerate(metrics, start=1):
        unit, scale = units[m]
        for lab in labels:
            pts = [(x, r) for x, r in zip(xs, ordered) if m in r.series.get(lab, {})]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[x for x, _ in pts], y=[r.series[lab][m][0] * scale for _, r in pts],
                mode="lines+markers", name=names[lab], legendgroup=lab, showlegend=i == 1,
                marker=dict(symbol=["circle" if r.facts["status"] == "completed" else "circle-open" for _, r in pts], size=9),
                customdata=[[f"{r.facts['run']} ({r.facts['status']})", r.series[lab][m][1]] for _, r in pts],
                hovertemplate=f"{_e(names[lab])}<br>%{{customdata[0]}}<br>median over %{{customdata[1]}} points: %{{y:.4g}} {unit}<extra></extra>",
            ), row=i, col=1)
        fig.update_yaxes(title_text=unit or m, row=i, col=1)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs)
    fig.update_xaxes(title_text="run (start time and label)", row=len(metrics), col=1)
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.12 if len(metrics) > 1 else -0.3))
    n_series = len(labels)
    return (f'<p class="muted">Metrics: {_e(", ".join(metrics))} (those that matter and vary over the runs). One line per series '
            f'({_e(", ".join(names[lab] for lab in labels)) if n_series <= 6 else f"{n_series} series"}); each marker is one run, the median over '
            "that series' points. Open markers: runs that did not complete.</p>"
            + figure_html(fig, height=260 * len(metrics) + 160))


def render_history(history_dir: Path, out: Path | None = None) -> Path:
    """Write the index page of every run under ``history_dir``; return its path.

    Args:
        history_dir: a results root (``<root>/<study>/<run>/run.json``).
        out: the page to write (default ``history_dir/index.html``).

    Raises:
        ConfigError: ``history_dir`` is not a folder.
    """
    from charbench.pages import Section, html_escape as _e, render_page
    from charbench.results import atomic_write_text

    history_dir = Path(history_dir)
    if not history_dir.is_dir():
        raise ConfigError(f"--history {history_dir}: not a folder; give a results folder (e.g. ./charbench-runs)")
    out = Path(out) if out is not None else history_dir / "index.html"
    damaged: list[tuple[Path, RunStoreError]] = []
    runs = [summarize_run(s) for s in list_runs(history_dir, damaged=damaged)] + [damaged_run(p, e) for p, e in damaged]
    sections: list[Section] = []
    if not runs:
        sections.append(Section("Runs", f'<p class="muted">No run folders under {_e(history_dir)} (expected &lt;root&gt;/&lt;study&gt;/&lt;run&gt;/run.json).</p>', anchor="runs"))
    else:
        sections.append(Section("Runs", _runs_table(runs, out), note="Newest first. Hover a row for its --meta values.", anchor="runs"))
        studies = sorted({r.facts["study"] for r in runs})
        for study in studies:
            mine = [r for r in runs if r.facts["study"] == study]
            n_bad = sum(1 for r in mine if r.facts["status"] != "completed" or r.facts["failed"] not in ("0", ""))
            sections.append(Section(
                f"{study}: trends ({len(mine)} run(s))", _trend_figure(study, mine),
                note=f"{n_bad} run(s) with failures or not completed." if n_bad else "", anchor=f"study-{len(sections)}",
            ))
    n_studies = len({r.facts["study"] for r in runs})
    subtitle = f"{len(runs)} run(s) of {n_studies} stud{'y' if n_studies == 1 else 'ies'} under {history_dir} · built {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
    atomic_write_text(out, render_page("charbench run history", sections, subtitle=subtitle))
    return out
