"""HTML reports: one self-contained, offline file per run.

::

    charbench report charbench-runs/gemm-power/20261129-101500-a100
    charbench report RUN_A RUN_B --out compare.html     # side by side, with deltas

A report has the run's metadata, environment, measurement provenance (what was measured
and by which meter, what is estimated, what is missing and why), the study's own sections
(figures and tables, from the hook named in run.json), the sampler timeline, the points
table and the failures. plotly.js is embedded once; every user-provided string is escaped
(jinja2 autoescape; figure JSON is embedded with ``<``, ``>`` and ``&`` escaped).

A study adds sections with a hook ``module:function`` (its ``StudySpec.report_hook``)
taking a :class:`RunData` and returning a list of :class:`charbench.pages.Section`; build
figure and table HTML with :func:`charbench.pages.figure_html` and
:func:`charbench.pages.table_html`.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charbench.errors import CharbenchError
from charbench.pages import Section, figure_html, html_escape, jinja_env, plotly_js, table_html
from charbench.record import BOOKKEEPING, KNOB, MACHINE, METRIC, column_role, run_knobs
from charbench.results import RunStore, atomic_write_text

ESTIMATED = "estimated"


@dataclass
class RunData:
    """Everything in a run folder, loaded once for rendering."""

    store: RunStore
    results: Any  # pandas.DataFrame
    samples: Any  # pandas.DataFrame | None
    failures: list[dict[str, Any]]
    config: dict[str, Any]
    env: dict[str, Any]
    meta: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> RunData:
        """Read a run folder."""
        store = RunStore.open(run_dir)
        return cls(store, store.results_frame(), store.samples_frame(), store.failures(), store.config(), store.env(), dict(store.meta))


def run_knob_names(data: RunData) -> frozenset[str]:
    """The run's knobs (swept and fixed), from the record schema (:func:`charbench.record.run_knobs`)."""
    df = data.results
    keys = df["point_key"].tolist() if df is not None and "point_key" in getattr(df, "columns", ()) else []
    return run_knobs(keys, ((data.config or {}).get("study_config") or {}).keys())


def provenance_rows(data: RunData) -> list[dict[str, str]]:
    """What was measured and by which meter, what is estimated, what is missing and why: one row per (metric, status).

    Only metrics are listed: knobs are set, not measured (a knob the user left unset is not a
    missing measurement), and descriptors (``gpu``, ``node``) describe; a metric measured at some points and missing at others has one row
    of each status, the distinct sources or reasons joined.
    """
    knobs = run_knob_names(data)
    rows: dict[tuple[str, str], dict[str, int]] = {}

    def add(metric: str, kind: str, source: str, n: int = 1) -> None:
        # knobs are set and descriptors (gpu, node) describe: neither is measured (an ``_estimated`` column is a model's value)
        if column_role(metric, knobs) != METRIC and not metric.endswith("_estimated"):
            return
        sources = rows.setdefault((metric, kind), {})
        sources[source] = sources.get(source, 0) + n

    df = data.results
    if df is not None and len(df):
        if "provenance" in df:
            for text in df["provenance"].dropna():
                for metric, source in json.loads(text).items():
                    source = str(source)
                    if source in ("not-measured", "not measured"):
                        continue  # its reason is in null_reasons
                    add(metric, ESTIMATED if ESTIMATED in source else "measured", source)
        if "null_reasons" in df:
            for text in df["null_reasons"].dropna():
                for metric, reason in json.loads(text).items():
                    add(metric, "not measured", str(reason))
        for c in df.columns:
            if c.endswith("_estimated"):
                add(c, ESTIMATED, "model (see the study's section)", int(df[c].notna().sum()))
    return [{"metric": m, "status": k, "source": "; ".join(src), "points": str(sum(src.values()))} for (m, k), src in sorted(rows.items())]


def busy_html(data: RunData) -> str:
    """The warning a run page shows when the machine was busy during the run ('' when it was quiet)."""
    from charbench.noise import busy_summary

    busy = busy_summary(data.results, data.env)
    if busy is None:
        return ""
    return f'<div class="busy" id="busy-warning"><b>Busy machine.</b> {html_escape(busy["text"])}</div>'


def machine_text(env: dict[str, Any]) -> str:
    """One line of the machine's state when the run started (load, CPU clock, threads), from env.json."""
    m = env.get("machine") or {}
    if not m:
        return "not recorded (run made before charbench recorded the machine's load)"
    loads = "/".join("?" if m.get(k) is None else f"{m[k]:.2f}" for k in ("load1", "load5", "load15"))
    parts = [f"load average {loads} (1/5/15 min) on {m.get('cpu_cores') or '?'} CPUs"]
    parts.append(f"CPU {m['cpu_mhz']:.0f} MHz" if m.get("cpu_mhz") is not None else "CPU clock not readable")
    if m.get("process_threads") is not None:
        parts.append(f"{m['process_threads']} thread(s) in charbench")
    if m.get("omp_num_threads"):
        parts.append(f"OMP_NUM_THREADS={m['omp_num_threads']}")
    return " · ".join(parts)


def timeline_section(data: RunData) -> Section | None:
    """Power, clock and temperature over time from samples.parquet."""
    s = data.samples
    if s is None or len(s) == 0 or "t_s" not in s.columns:
        return None
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = s["t_s"] - s["t_s"].min()
    groups = [("power (W)", "_power_w"), ("SM clock (MHz)", "_sm_clock_mhz"), ("temperature (°C)", "_temp_c")]
    present = [(title, suf, [c for c in s.columns if c.endswith(suf) and s[c].notna().any()]) for title, suf in groups]
    present = [p for p in present if p[2]]
    if not present:
        return Section("Sampler timeline", '<p class="muted">The sampler ran but no power, clock or temperature source was readable here (see Environment: meters).</p>', anchor="timeline")
    fig = make_subplots(rows=len(present), cols=1, shared_xaxes=True, subplot_titles=[p[0] for p in present])
    for r, (_, _, cols) in enumerate(present, start=1):
        for c in cols:
            fig.add_trace(go.Scattergl(x=t, y=s[c], mode="lines", name=c), row=r, col=1)
    for r, (title, _, _) in enumerate(present, start=1):
        fig.update_yaxes(title_text=title, row=r, col=1)
    fig.update_xaxes(title_text="time since first sample (s)", row=len(present), col=1)
    return Section("Sampler timeline", figure_html(fig, height=260 * len(present)), note="Background sampler, one row per interval; energy figures come from counters, not from these samples.", anchor="timeline")


def tables_section(data: RunData) -> Section | None:
    """The run's named tables (per-request, per-step, ... data): name, rows, columns, file; None when it has none."""
    import pandas as pd

    tables = data.store.tables()
    if not tables:
        return None
    rows = [{"table": name, "rows": t.get("rows"), "columns": ", ".join(t.get("columns") or []), "file": t.get("file")} for name, t in sorted(tables.items())]
    return Section("Tables", table_html(pd.DataFrame(rows)), note="Read one with RunStore.open(RUN_DIR).read_table(NAME), or the file with any parquet reader.")


def _study_sections(data: RunData) -> list[Section]:
    hook = data.meta.get("report_hook")
    if not hook:
        return []
    module, _, func = hook.partition(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        return [Section("Study sections unavailable", f"<p>Cannot load report hook {html_escape(hook)}: {html_escape(type(exc).__name__)}: {html_escape(str(exc))}</p>")]
    try:
        return list(fn(data))
    except Exception as exc:  # the rest of the report (points, provenance, env) is still worth having
        if os.environ.get("CHARBENCH_DEBUG") == "1":
            raise
        return [Section("Study sections failed", f"<p>The report hook {html_escape(hook)} raised {html_escape(type(exc).__name__)}: {html_escape(str(exc))}. The data below is complete; rerun <code>charbench --debug report RUN_DIR</code> after fixing it.</p>")]


def render_run(run_dir: Path, out: Path | None = None) -> Path:
    """Render ``report.html`` (or ``out``) for one run folder and return its path."""
    data = RunData.load(run_dir)
    from charbench.executors.report_section import node_sections  # nodes, split by GPU/node, which node ran what

    sections = node_sections(data) + _study_sections(data)
    sections += [sec for sec in (timeline_section(data), tables_section(data)) if sec is not None]
    # env.json of old or hand-made run folders may lack fields: the template sees every key it uses
    # (run.json's fields are filled by charbench.migrations when the folder is opened).
    env = {k: None for k in ("charbench_version", "git_sha", "hostname", "cpu_model", "cpu_cores", "os", "python", "torch", "torch_cuda", "gpus_reason")}
    env |= {"command_line": [], "meters": [], "gpus": []} | data.env
    meta = data.meta
    html = jinja_env().get_template("run.html.j2").render(
        title=f"charbench {meta['study']}: {meta['run_id']}",
        meta=meta,
        env=env,
        env_json=json.dumps(data.env, indent=2, default=str),
        config_json=json.dumps(data.config, indent=2, default=str),
        provenance=provenance_rows(data),
        sections=sections,
        points_table=table_html(_display_frame(data.results, run_knob_names(data))) if len(data.results) else "",
        busy_html=busy_html(data),
        machine=machine_text(env),
        failures=data.failures,
        plotly_js=plotly_js(),
    )
    target = Path(out) if out is not None else data.store.path / "report.html"
    atomic_write_text(target, html)
    return target


def _display_frame(df: Any, knobs: frozenset[str] = frozenset()) -> Any:
    """The points table: knobs first, then descriptors, metrics and the machine's state; no bookkeeping."""
    roles = {c: column_role(c, knobs) for c in df.columns}
    order = {KNOB: 0, "descriptor": 1, METRIC: 2, MACHINE: 3}
    cols = [c for c in df.columns if roles[c] != BOOKKEEPING]
    cols.sort(key=lambda c: order.get(roles[c], 2))  # stable: the record's own order within a role
    cols = [c for c in ("point_key",) if c in df.columns] + cols + [c for c in ("warnings",) if c in df.columns]
    return df[cols]


def render_many(run_dirs: list[Path], out: Path) -> Path:
    """Render a side-by-side comparison of several runs (see :mod:`charbench.compare_page`)."""
    if len(run_dirs) < 2:
        raise CharbenchError("report: give two or more RUN_DIRs to compare, or one to render")
    from charbench.compare_page import render_comparison

    return render_comparison(run_dirs, out)
