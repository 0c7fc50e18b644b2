"""The report's executor sections: per-node facts, figures split by node and GPU, and which node ran which point when.

Rendered by ``charbench report RUN_DIR`` (and at the end of every run) from the run folder
alone: ``nodes.json`` (each node's environment, written once per node by the driver, see
:class:`charbench.executors.staging.Replayer`) and the records' ``node``, ``gpu``,
``point_started_at`` and ``point_ended_at`` columns::

    from charbench.executors.report_section import node_sections
    sections = node_sections(RunData.load(run_dir))   # [] for a folder without node facts
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from charbench.pages import Section, figure_html, html_escape, table_html

#: at most this many metrics get a split figure (the table lists more)
MAX_SPLIT_FIGURES = 4
#: and this many get a column in the per-node table
MAX_SPLIT_COLUMNS = 8


def read_nodes(run_dir: Path) -> dict[str, Any]:
    """``nodes.json`` of a run folder ({} when there is none or it cannot be read)."""
    p = Path(run_dir) / "nodes.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def _or_reason(value: Any, reason: Any, fallback: str = "not reported") -> str:
    """A fact, or why it is missing (never an empty cell that reads as zero)."""
    if value is None or value == "":
        return f"n/a: {reason or fallback}"
    return str(value)


def node_rows(nodes: dict[str, Any], results: Any) -> list[dict[str, str]]:
    """One row per node: its GPU(s), driver, clocks, library versions and how many points it ran.

    GPU facts come from the node's NVML inventory in ``env.gpus``; a node without one says
    why (``env.gpus_reason``).
    """
    counts: dict[str, int] = {}
    if results is not None and len(results) and "node" in results:
        counts = {str(k): int(v) for k, v in results["node"].value_counts().items()}
    rows = []
    for name, info in sorted(nodes.items()):
        env = info.get("env") or {}
        gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
        reason = env.get("gpus_reason") or "no GPU listed"
        backends = env.get("backends") or {}
        libs = [f"torch {env['torch']}" if env.get("torch") else None]
        libs += [f"{k} {v.get('version')}" for k, v in sorted(backends.items()) if isinstance(v, dict) and v.get("ok") and k != "torch_cuda"]
        rows.append({
            "node": name,
            "used": _or_reason(info.get("gpu"), f"the points ran on {info.get('device') or 'cpu'}"),
            "GPU models": _or_reason(", ".join(sorted({str(g.get("name")) for g in gpus if g.get("name")})), reason),
            "driver": _or_reason(", ".join(sorted({str(g.get("driver")) for g in gpus if g.get("driver")})), reason),
            "SM clock at start (MHz)": _or_reason(", ".join(str(g.get("sm_clock_mhz")) for g in gpus if g.get("sm_clock_mhz") is not None), reason),
            "CPU": f"{env.get('cpu_model') or 'n/a'} ({env.get('cpu_cores') or '?'} cores)",
            "python": str(env.get("python") or "n/a"),
            "libraries": ", ".join(x for x in libs if x) or "n/a",
            "charbench": " ".join(str(x) for x in (env.get("charbench_version"), (env.get("git_sha") or "")[:10]) if x) or "n/a",
            "idle baseline": "measured" if info.get("baseline") else "none",
            "points": str(counts.get(name, 0)),
        })
    return rows


def metric_columns(results: Any, config: dict[str, Any] | None = None) -> list[str]:
    """Numeric metric columns of the records (:func:`charbench.record.column_role`: not knobs, machine state or bookkeeping), in record order."""
    import pandas as pd

    from charbench.record import METRIC, column_role, run_knobs

    study_config = (config or {}).get("study_config") or {}
    keys = results["point_key"].dropna().astype(str).tolist() if "point_key" in results else []
    knobs = run_knobs(keys, study_config.keys() if isinstance(study_config, dict) else ())
    return [c for c in results.columns
            if column_role(c, knobs) == METRIC and pd.api.types.is_numeric_dtype(results[c]) and not pd.api.types.is_bool_dtype(results[c])
            and results[c].notna().any()]


def _split_key(results: Any) -> str | None:
    """What to split by: the GPU model where several ran, else the node where several ran, else None."""
    for col in ("gpu", "node"):
        if col in results and results[col].dropna().nunique() > 1:
            return col
    return None


def split_section(results: Any, config: dict[str, Any] | None = None) -> Section | None:
    """Each metric per GPU model (or per node when one model ran everywhere); None when one ran everything."""
    if results is None or not len(results):
        return None
    by = _split_key(results)
    if by is None:
        return None
    metrics = metric_columns(results, config)
    if not metrics:
        return None
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    groups = results.groupby(results[by].fillna("(none)"), sort=True)
    table = pd.DataFrame([{by: name, "points": len(g), **{f"median {m}": g[m].median() for m in metrics[:MAX_SPLIT_COLUMNS]}}
                          for name, g in groups])
    shown = metrics[:MAX_SPLIT_FIGURES]
    fig = make_subplots(rows=len(shown), cols=1, subplot_titles=shown)
    for r, m in enumerate(shown, start=1):
        for name, g in groups:
            fig.add_trace(go.Box(y=g[m], name=str(name), boxpoints="all", legendgroup=str(name), showlegend=r == 1), row=r, col=1)
    label = "GPU model" if by == "gpu" else "node"
    note = (f"Split by {label}: each point measured on its own node's meters. Estimated values stay labelled estimated in the "
            f"points table and provenance; medians here are of the values as recorded.")
    return Section(f"By {label}", figure_html(fig, height=260 * len(shown)) + table_html(table), note=note, anchor=f"by-{by}")


def _parse_times(col: Any) -> Any:
    import pandas as pd

    return pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")


def timeline_frame(results: Any) -> tuple[Any, int] | None:
    """One row per point with its ``node``, ``point_key``, ``start_s`` (since the first start) and ``duration_s``, and how many had no times.

    None when no record has both time stamps. Times are parsed with their UTC offsets, so
    nodes in different time zones line up.
    """
    import pandas as pd

    if results is None or not len(results) or not {"point_started_at", "point_ended_at", "node"} <= set(results.columns):
        return None
    per_point = results.drop_duplicates("point_key") if "point_key" in results else results
    start, end = _parse_times(per_point["point_started_at"]), _parse_times(per_point["point_ended_at"])
    ok = start.notna() & end.notna()
    if not ok.any():
        return None
    t0 = start[ok].min()
    frame = pd.DataFrame({
        "node": per_point["node"][ok].fillna("(unknown)").astype(str).to_numpy(),
        "point_key": (per_point["point_key"][ok] if "point_key" in per_point else per_point["node"][ok]).astype(str).to_numpy(),
        "start_s": (start[ok] - t0).dt.total_seconds().to_numpy(),
        "duration_s": (end[ok] - start[ok]).dt.total_seconds().clip(lower=0).to_numpy(),
    })
    return frame, int((~ok).sum())


def timeline_figure_section(results: Any) -> Section | None:
    """Which node ran which point, from start to end (one bar per point); None without time stamps."""
    found = timeline_frame(results)
    if found is None:
        return None
    frame, missing = found
    import plotly.graph_objects as go

    fig = go.Figure()
    for node in sorted(frame["node"].unique()):
        m = frame[frame["node"] == node]
        fig.add_trace(go.Bar(y=m["node"], x=m["duration_s"], base=m["start_s"], orientation="h", name=node, text=m["point_key"],
                             textposition="inside",
                             hovertemplate="%{text}<br>start %{base:.2f} s, %{x:.2f} s long<extra>" + html_escape(node) + "</extra>"))
    fig.update_layout(barmode="overlay", xaxis_title="seconds since the first point started", yaxis_title="node")
    note = ("Each node's own wall clock (clocks of different machines may disagree by their skew). "
            + (f"{missing} point(s) without time stamps (written by an older charbench) are left out." if missing else ""))
    height = max(220, 120 + 60 * frame["node"].nunique())
    return Section("Which node ran which point", figure_html(fig, height=height), note=note.strip(), anchor="node-timeline")


def node_sections(data: Any) -> list[Section]:
    """The executor sections for a :class:`charbench.report.RunData`: nodes, split figures, timeline ([] without node facts).

    A failure here becomes a section saying so: the rest of the report is still worth having.
    """
    import os

    try:
        return _node_sections(data)
    except Exception as exc:
        if os.environ.get("CHARBENCH_DEBUG") == "1":
            raise
        return [Section("Nodes unavailable", f"<p>The node sections failed: {html_escape(type(exc).__name__)}: {html_escape(str(exc))}. "
                                             "The data below is complete; rerun <code>charbench --debug report RUN_DIR</code>.</p>")]


def _node_sections(data: Any) -> list[Section]:
    import pandas as pd

    nodes = read_nodes(data.store.path)
    results = data.results
    if not nodes and (results is None or "node" not in getattr(results, "columns", [])):
        return []
    out: list[Section] = []
    if nodes:
        rows = node_rows(nodes, results)
        executor = (data.config.get("common") or {}).get("executor") if isinstance(data.config, dict) else None
        note = (f"One row per node that ran points ({len(rows)}), recorded once per node when it first reported"
                + (f"; executor: {executor}" if executor else "") + ". Full environments are in nodes.json.")
        out.append(Section("Nodes", table_html(pd.DataFrame(rows)), note=note, anchor="nodes"))
    for sec in (split_section(results, data.config), timeline_figure_section(results)):
        if sec is not None:
            out.append(sec)
    return out
