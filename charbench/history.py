"""A static index of every run under a results folder, with trends per study.

::

    charbench report --history charbench-runs                 # writes charbench-runs/index.html
    charbench report --history charbench-runs --out site/index.html

    render_history(Path("charbench-runs"), None)

The page has one row per run (study, date, label, run id, git sha, host, GPU, device,
status, points done/failed, link to the run's report) and, per study, trend charts of
its headline metrics over time: each marker is one run, its value the median over the
run's points of that metric (runs that did not complete are drawn as open markers).
Headline metrics are the study's gated metrics (declared in its ``StudySpec``, see :mod:`charbench.compare.gates`),
else ``energy_j``/``mean_power_w``, else the first few unit-suffixed metrics (those with a
better direction, such as times and throughputs, before clocks and fractions). Links are
relative, so the folder can be published as it is (CI artifact, static site); the page
is self-contained otherwise (plotly.js embedded).
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError, RunStoreError
from charbench.results import RunStore, list_runs
from charbench.runlock import run_status

#: most metrics charted per study
MAX_TREND_METRICS = 4


@dataclass
class RunSummary:
    """What the index shows of one run."""

    store: RunStore
    facts: dict[str, str]
    medians: dict[str, float]
    metrics: list[str]
    started: _dt.datetime | None


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
    for m in metrics:
        vals = [float(r[m]) for r in rows if is_number(r.get(m)) and float(r[m]) == float(r[m])]
        if vals:
            medians[m] = statistics.median(vals)
    return RunSummary(store, facts, medians, metrics, _parse_time(store.meta.get("started")))


def headline_metrics(study: str, runs: list[RunSummary]) -> list[str]:
    """Metrics charted for a study: its gates, else energy/power, else the first few present."""
    from charbench.compare import NEUTRAL, default_gates, metric_direction

    available: dict[str, None] = {}
    for r in runs:
        for m in r.metrics:
            if m in r.medians:
                available.setdefault(m, None)
    chosen = default_gates(study, available)
    if not chosen:  # costs and throughputs before neutral columns (clocks, fractions)
        chosen = sorted(available, key=lambda m: metric_direction(m) == NEUTRAL)
    return chosen[:MAX_TREND_METRICS]


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


def _trend_figure(study: str, runs: list[RunSummary]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from charbench.pages import figure_html, html_escape as _e

    metrics = headline_metrics(study, runs)
    if not metrics:
        return '<p class="muted">No run of this study has a unit-suffixed metric to chart.</p>'
    ordered = sorted(runs, key=lambda r: (r.facts["started"], r.facts["run"]))
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=[f"{m} (median over points)" for m in metrics])
    for i, m in enumerate(metrics, start=1):
        pts = [r for r in ordered if m in r.medians]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[r.started.isoformat() if r.started else r.facts["started"] for r in pts],
            y=[r.medians[m] for r in pts],
            mode="lines+markers", name=m,
            marker=dict(symbol=["circle" if r.facts["status"] == "completed" else "circle-open" for r in pts], size=9),
            text=[f"{r.facts['run']} {r.facts['label']} ({r.facts['status']})" for r in pts],
            hovertemplate="%{text}<br>%{x}<br>" + m + " %{y:.4g}<extra></extra>",
        ), row=i, col=1)
        fig.update_yaxes(title_text=m, row=i, col=1)
    fig.update_xaxes(title_text="run start", row=len(metrics), col=1)
    fig.update_layout(showlegend=False)
    return f'<p class="muted">Metrics: {_e(", ".join(metrics))}. Open markers: runs that did not complete.</p>' + figure_html(fig, height=230 * len(metrics) + 80)


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
