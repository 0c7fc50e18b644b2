"""The comparison page: a candidate run against a baseline, as HTML (figures, tables, differences).

::

    cmp = compare_runs(base, cand)                                   # charbench.compare (pure)
    render_comparison([base, cand], Path("compare.html"), comparisons=[cmp])
    charbench report RUN_A RUN_B RUN_C --out compare.html            # one baseline, two candidates

The comparison itself (matching, noise rule, gates) is :mod:`charbench.compare`; this
module only lays it out with the shared page blocks of :mod:`charbench.pages`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from charbench.compare import (
    DEFAULT_THRESHOLD_PCT,
    EXIT_REGRESSION,
    HIGHER,
    LOWER,
    NEUTRAL,
    VERDICTS,
    Comparison,
    compare_runs,
    noise_rule_text,
    run_facts,
)
from charbench.compare.text import fmt_value
from charbench.errors import ConfigError
from charbench.pages import PALETTE, Section, display_unit, figure_html, html_escape, metric_label, relative_link, render_page, table_html
from charbench.results import atomic_write_text

_e = html_escape


def _runs_section(cmp: Comparison, out: Path) -> Section:
    keys = ["run", "label", "started", "status", "points", "failed", "git", "host", "device", "gpu"]
    rows = []
    for role, pts in (("baseline", cmp.baseline), ("candidate", cmp.candidate)):
        f = run_facts(pts.store)
        rep = pts.store.path / "report.html"
        link = f'<a href="{_e(relative_link(rep, out))}">report</a>' if rep.exists() else f'<span class="muted">no report (charbench report {_e(pts.store.path)})</span>'
        rows.append("<tr><td>" + role + "</td>" + "".join(f"<td>{_e(f[k])}</td>" for k in keys) + f"<td>{link}</td></tr>")
        meta = pts.store.meta.get("meta") or {}
        if meta:
            rows.append(f'<tr><td></td><td colspan="{len(keys) + 1}" class="muted">' + _e(", ".join(f"{k}={v}" for k, v in meta.items())) + "</td></tr>")
    head = "".join(f"<th>{k}</th>" for k in ["", *keys, ""])
    return Section("Runs", f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>', anchor="runs")



def _verdict_section(cmp: Comparison) -> Section:
    # the same verdict line the terminal prints
    badge = '<span class="badge not-measured">regression</span>' if cmp.regressions else '<span class="badge measured">ok</span>'
    head = f"<p>{badge} {_e(cmp.verdict())}</p>"
    gated = ", ".join(f"{m.name} ({m.direction} is better)" for m in cmp.gated) or "none"
    items = [f"<li>gated metrics: {_e(gated)}</li>", f"<li>{len(cmp.matched)} matched point(s)</li>"] + [f"<li>{_e(n)}</li>" for n in cmp.notes]
    return Section("Verdict", head + "<ul>" + "".join(items) + "</ul>", note=noise_rule_text(cmp.threshold_pct), anchor="verdict")


def _aggregate_section(cmp: Comparison) -> Section:
    rows = []
    for s in cmp.summaries:
        n = s.counts
        rows.append(
            f'<tr><td>{"&#9733; " if s.gated else ""}{_e(s.metric)}</td><td>{_e(s.direction)}</td><td>{s.points}</td>'
            f"<td>{_e(fmt_value(s.aggregate_pct, pct=True))}</td><td>{_e(s.aggregate_kind)}</td>"
            + "".join(f"<td>{n[v]}</td>" for v in VERDICTS)
            + "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ["metric (&#9733; gated)", "better", "points", "aggregate", "kind", *VERDICTS])
    return Section("Aggregate deltas", f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>',
                   note="Per metric over the matched points; counts are points per verdict.", anchor="aggregate")


#: bar color of each verdict
VERDICT_COLORS: dict[str, str] = {
    "regression": PALETTE["bad"], "improvement": PALETTE["good"], "changed": PALETTE["warn"],
    "noise": PALETTE["quiet"], "unchanged": PALETTE["neutral"], "missing": PALETTE["faint"],
}


#: verdicts in the order a reader wants them: what got worse first
VERDICT_RANK: dict[str, int] = {"regression": 0, "changed": 1, "improvement": 2, "noise": 3, "unchanged": 4, "missing": 5}
#: most bars one per-point chart shows (the worst; every point is in the Points table)
MAX_BARS = 20

_LABEL_PAIR = re.compile(r"(?:^|, )([A-Za-z_][A-Za-z0-9_.\-]*)=")


def _label_pairs(label: str) -> list[tuple[str, str]]:
    found = list(_LABEL_PAIR.finditer(label))
    return [(m.group(1), label[m.end(): found[i + 1].start() if i + 1 < len(found) else len(label)]) for i, m in enumerate(found)]


def short_point_labels(labels: list[str]) -> dict[str, str]:
    """Each point label (``k=v, k=v``) cut to the knobs that differ between the points (all of them for one point)."""
    from charbench.progress import naming_knobs

    pairs = {lab: _label_pairs(lab) for lab in labels}
    vary = set(naming_knobs([dict(ps) for ps in pairs.values()])) if len(pairs) > 1 else set()
    return {lab: (" ".join(f"{k}={v}" for k, v in ps if k in vary) or lab) for lab, ps in pairs.items()}


def badness(d: Any, direction: str) -> float:
    """How much worse the candidate is at one point (% of the baseline; negative: better), by the metric's direction."""
    if d.delta_pct is None:
        return float("-inf")
    return d.delta_pct if direction == LOWER else -d.delta_pct if direction == HIGHER else abs(d.delta_pct)


def _moved(cmp: Comparison) -> dict[str, int]:
    return {s.metric: s.counts["regression"] + s.counts["improvement"] + s.counts["changed"] for s in cmp.summaries}


def _delta_figures(cmp: Comparison, max_metrics: int = 6) -> str:
    import plotly.graph_objects as go

    moved = _moved(cmp)
    total = len(cmp.matched)
    # gated metrics first, then the most moved; a metric no point moved gets a sentence, not an empty chart
    from charbench.studies import find_study

    spec_ = find_study(cmp.study)
    declared = set(spec_.metrics) if spec_ is not None else set()
    ordered = sorted(cmp.metrics, key=lambda m: (not m.gated, m.direction == NEUTRAL, -moved.get(m.name, 0), m.name))
    # charts for what matters (gated and the study's declared metrics; every metric of a study that declares
    # none), tables for the rest: a window length or an iteration count moving says nothing by itself
    matters = [m for m in ordered if m.gated or m.name in declared] if declared or any(m.gated for m in ordered) else ordered
    charted = [m for m in matters if moved.get(m.name, 0) > 0][:max_metrics]
    others = [m.name for m in ordered if moved.get(m.name, 0) > 0 and m not in charted]
    still = [m.name for m in ordered if moved.get(m.name, 0) == 0 and any(d.metric == m.name and d.delta_pct is not None for d in cmp.deltas)]
    empty = [m.name for m in ordered if not any(d.metric == m.name and d.delta_pct is not None for d in cmp.deltas)]
    parts = []
    if not charted:
        parts.append(f'<p>No metric moved beyond the {cmp.threshold_pct:g}% threshold at any of the {total} matched point(s).</p>')
    short = short_point_labels(list(cmp.matched))
    for spec in charted:
        ds = [d for d in cmp.deltas if d.metric == spec.name and d.delta_pct is not None]
        ds.sort(key=lambda d: (-badness(d, spec.direction), d.point))  # worst first
        shown = ds[:MAX_BARS]
        fig = go.Figure()
        for verdict in VERDICTS:
            sel = [d for d in shown if d.verdict == verdict]
            # Points without a noise band (fewer than two samples a side) get no error bar at
            # all: a zero-length bar would claim a measured band of 0.
            for banded in (True, False):
                part = [d for d in sel if (d.noise_band_pct is not None) == banded]
                if not part:
                    continue
                # horizontal bars: the point names read as text, the worst on top
                fig.add_trace(go.Bar(
                    y=[short.get(d.point, d.point) for d in part], x=[d.delta_pct for d in part], orientation="h", name=verdict,
                    marker_color=VERDICT_COLORS[verdict],
                    legendgroup=verdict, showlegend=banded or not any(d.noise_band_pct is not None for d in sel),
                    error_x=dict(type="data", array=[d.noise_band_pct for d in part], visible=True) if banded else None,
                    text=[f"{d.delta_pct:+.1f}%" for d in part], cliponaxis=False,
                    # a label outside a bar to the left would run into the point names: inside it instead
                    textposition=["outside" if d.delta_pct >= 0 else "inside" for d in part], insidetextanchor="start",
                    customdata=[[d.point, fmt_value(d.mean_b), fmt_value(d.mean_c), "-" if d.noise_band_pct is None else f"±{d.noise_band_pct:.2f}%"] for d in part],
                    hovertemplate="%{customdata[0]}<br>delta %{x:.2f}%<br>baseline %{customdata[1]} → candidate %{customdata[2]}<br>noise band %{customdata[3]}<extra>" + verdict + "</extra>",
                ))
        for x in (cmp.threshold_pct, -cmp.threshold_pct):
            fig.add_vline(x=x, line_dash="dot", line_color=PALETTE["neutral"])
        better = "lower" if spec.direction == LOWER else "higher" if spec.direction == HIGHER else "neutral"
        which = (f"the {len(shown)} worst of {total} matched points, worst first" if len(ds) > len(shown)
                 else f"all {len(ds)} of {total} matched points with values in both runs, worst first" if len(ds) < total
                 else f"all {total} matched points, worst first")
        values = [v for d in ds for v in (d.mean_b, d.mean_c)]
        fig.update_layout(title=f"{metric_label(spec.name, values)}: candidate vs baseline ({better} is better{', gated' if spec.gated else ''})",
                          xaxis_title="candidate vs baseline (%)", yaxis_title=which, barmode="overlay", yaxis_type="category")
        # category order bottom-up: the worst bar on top
        fig.update_yaxes(categoryorder="array", categoryarray=[short.get(d.point, d.point) for d in reversed(shown)], automargin=True)
        parts.append(figure_html(fig, height=160 + 24 * len(shown)))
    if others:
        parts.append(f'<p class="muted">Also moved (in the tables below, not charted: not gated and not one of the study\'s declared metrics): '
                     f'{_e(", ".join(others))}.</p>')
    if still:
        parts.append(f'<p class="muted">Unchanged within the {cmp.threshold_pct:g}% threshold (or within noise) at every matched point, so not charted: '
                     f'{_e(", ".join(still))}.</p>')
    if empty:
        parts.append(f'<p class="muted">No point has a value in both runs (not measured): {_e(", ".join(empty))}.</p>')
    return "\n".join(parts)


def _points_table(cmp: Comparison, gated_only: bool) -> str:
    import pandas as pd

    direction = {m.name: m.direction for m in cmp.metrics}
    ds = [d for d in cmp.deltas if d.gated or not gated_only]
    # worst regressions first: gated metrics, then by verdict, then by how much worse
    ds.sort(key=lambda d: (not d.gated, VERDICT_RANK.get(d.verdict, 9), -badness(d, direction.get(d.metric, NEUTRAL)), d.metric, d.point))
    if not ds:
        return '<p class="muted">No rows.</p>'
    units: dict[str, tuple[str, float]] = {}
    for m in {d.metric for d in ds}:
        units[m] = display_unit(m, [v for d in ds if d.metric == m for v in (d.mean_b, d.mean_c)])
    rows = []
    for d in ds:
        unit, scale = units[d.metric]
        rows.append({"metric": d.metric, "verdict": d.verdict, "delta_pct": d.delta_pct, "point": d.point, "unit": unit,
                     "baseline": None if d.mean_b is None else d.mean_b * scale, "candidate": None if d.mean_c is None else d.mean_c * scale,
                     "noise_band_pct": d.noise_band_pct, "n_b": d.n_b, "n_c": d.n_c})
    return table_html(pd.DataFrame(rows), max_rows=2000)


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, default=str, sort_keys=True)}


def _differences(cmp: Comparison) -> str:
    bs, cs = cmp.baseline.store, cmp.candidate.store
    skip = ("common.out", "common.label", "common.resume", "common.meta", "common.json")
    try:
        fb, fc = _flatten(bs.config()), _flatten(cs.config())
    except (OSError, ValueError):
        fb, fc = {}, {}
    env_keys = ("charbench_version", "git_sha", "hostname", "cpu_model", "python", "torch", "torch_cuda", "device", "gpus")
    eb, ec = bs.env(), cs.env()
    for k in env_keys:
        fb[f"env.{k}"] = json.dumps(eb.get(k), default=str, sort_keys=True)
        fc[f"env.{k}"] = json.dumps(ec.get(k), default=str, sort_keys=True)
    keys = sorted(k for k in set(fb) | set(fc) if fb.get(k) != fc.get(k) and not k.startswith(skip))
    loaded = _load_text(cmp)
    if not keys:
        if loaded:  # the same settings, but not the same conditions: a loaded machine is part of the environment
            return f'<p>Same configuration, software and host. <b>Not the same conditions</b>: {_e(loaded)}</p>'
        return '<p class="muted">Same configuration and environment (and neither machine was busy).</p>'
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(fb.get(k, '(absent)'))}</td><td>{_e(fc.get(k, '(absent)'))}</td></tr>" for k in keys[:300])
    table = f'<div class="table-wrap"><table><thead><tr><th>key</th><th>baseline</th><th>candidate</th></tr></thead><tbody>{rows}</tbody></table></div>'
    return (f"<p><b>Machine load</b>: {_e(loaded)}</p>" if loaded else "") + table


def _load_text(cmp: Comparison) -> str:
    """What the machine's load was in each run when one of them ran busy ('' when both were quiet)."""
    from charbench.noise import busy_summary

    parts = []
    for role, pts in (("baseline", cmp.baseline), ("candidate", cmp.candidate)):
        try:
            busy = busy_summary(pts.store.results_frame(), pts.store.env())
        except Exception:  # noqa: BLE001 - an unreadable folder was reported elsewhere; no load claim either way
            busy = None
        if busy is not None:
            where = f"{busy['busy_points']} of {busy['points']} point(s)" if busy["points"] else "at its start"
            peak = "?" if busy["max_load1"] is None else f"{busy['max_load1']:.2f}"
            parts.append(f"the {role} ran on a busy machine ({where}; load up to {peak} on {busy['cores']} CPUs)")
    if not parts:
        return ""
    return "; ".join(parts) + ". Differences within the noise of a busy machine are not the code's doing."


def comparison_sections(cmp: Comparison, out: Path, prefix: str = "") -> list[Section]:
    """The sections of a comparison page (runs, verdict, aggregates, figures, points, differences)."""
    sections = [_runs_section(cmp, out), _verdict_section(cmp), _aggregate_section(cmp)]
    sections.append(Section("Per-point deltas", _delta_figures(cmp), note="Bars: candidate minus baseline in % of the baseline mean, labeled, worst first; error bars: the noise band (none where a run has fewer than two samples of the point); dotted lines: the threshold. Points are named by the knobs that differ between them.", anchor="figures"))
    table = _points_table(cmp, gated_only=True) if cmp.gated else ""
    all_rows = _points_table(cmp, gated_only=False)
    html = (table + f"<details><summary>all metrics ({len(cmp.deltas)} rows)</summary>{all_rows}</details>") if cmp.gated else all_rows
    sections.append(Section("Points", html, note="Worst first: gated metrics, then regressions, changes, improvements, noise; within each, the largest change for the worse first. Values in the unit shown.", anchor="points"))
    if cmp.only_baseline or cmp.only_candidate:
        items = "".join(f"<li>baseline only: {_e(p)}</li>" for p in cmp.only_baseline[:200]) + "".join(f"<li>candidate only: {_e(p)}</li>" for p in cmp.only_candidate[:200])
        sections.append(Section("Unmatched points", f"<ul>{items}</ul>", anchor="unmatched"))
    sections.append(Section("Configuration and environment differences", _differences(cmp), anchor="differences"))
    if prefix:
        for i, s in enumerate(sections):
            s.title = f"{prefix}: {s.title}"
            s.anchor = f"{s.anchor}-{len(prefix)}-{i}" if s.anchor else ""
    return sections


def render_comparison(
    run_dirs: list[Path],
    out: Path,
    metrics: list[str] | None = None,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
    comparisons: list[Comparison] | None = None,
) -> Path:
    """Write an HTML page comparing ``run_dirs[1:]`` each with the baseline ``run_dirs[0]``.

    Args:
        run_dirs: baseline first, then one or more candidates (all of one study).
        out: the HTML file to write.
        metrics: gated metrics (``NAME[:higher|lower]``), default the study's.
        threshold_pct: regression threshold (%).
        comparisons: already computed comparisons (skips recomputing).

    Raises:
        ConfigError: fewer than two runs, or see :func:`compare_runs`.
    """
    if len(run_dirs) < 2 and not comparisons:
        raise ConfigError("compare: give a baseline run and at least one candidate run")
    out = Path(out)
    cmps = comparisons or [compare_runs(run_dirs[0], c, metrics, threshold_pct) for c in run_dirs[1:]]
    sections = []
    for i, cmp in enumerate(cmps):
        prefix = "" if len(cmps) == 1 else f"vs {cmp.candidate.store.meta.get('run_id')} ({i + 1}/{len(cmps)})"
        sections.extend(comparison_sections(cmp, out, prefix))
    first = cmps[0]
    b = first.baseline.store.meta
    cands = ", ".join(str(c.candidate.store.meta.get("run_id")) for c in cmps)
    worst = max(c.exit_code for c in cmps)
    status = "REGRESSION" if worst == EXIT_REGRESSION else "ok"
    title = f"charbench compare {first.study}: {status}"
    subtitle = f"baseline {b.get('run_id')}{' (' + str(b.get('label')) + ')' if b.get('label') else ''} · candidate {cands} · threshold {first.threshold_pct:g}%"
    atomic_write_text(out, render_page(title, sections, subtitle=subtitle))
    return out
