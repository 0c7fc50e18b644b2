"""HTML reports: one self-contained, offline file per run.

::

    charbench report charbench-runs/gemm-power/20261129-101500-a100
    charbench report RUN_A RUN_B --out compare.html     # side by side, with deltas

A report has the run's metadata, environment, measurement provenance (what was measured
and by which meter, what is estimated, what is missing and why), the study's own sections
(figures and tables, from the hook named in run.json), the sampler timeline, the points
table and the failures. plotly.js is embedded once; every user-provided string is escaped
(jinja2 autoescape; figure JSON is embedded with ``<``, ``>`` and ``&`` escaped).

A study adds sections with a hook ``module:function`` taking a :class:`RunData` and
returning a list of :class:`Section`; build figure HTML with :func:`figure_html`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charbench.errors import CharbenchError
from charbench.results import RunStore, atomic_write_text

ESTIMATED = "estimated"


@dataclass
class Section:
    """One block of a report: a title, trusted HTML (figures, tables) and a note."""

    title: str
    html: str
    note: str = ""
    anchor: str = ""


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


class _FigureIds:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"fig{self.n}"


_IDS = _FigureIds()


def _safe_json(obj_json: str) -> str:
    # JSON stays valid while nothing in it can close the <script> element.
    return obj_json.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def figure_html(fig: Any, height: int | None = None) -> str:
    """HTML for one plotly figure: a div plus a script that draws it (plotly.js comes once per page).

    Args:
        fig: a ``plotly.graph_objects.Figure``.
        height: optional pixel height.
    """
    div_id = _IDS.next()
    if height is not None:
        fig.update_layout(height=height)
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))
    payload = _safe_json(fig.to_json())
    return (
        f'<div class="plot" id="{div_id}"></div>\n'
        f'<script>(function(){{var f={payload};Plotly.newPlot("{div_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>'
    )


def table_html(df: Any, max_rows: int = 500, float_fmt: str = "{:.4g}") -> str:
    """An escaped HTML table of a DataFrame (None/NaN shown as 'null')."""
    from markupsafe import escape

    cols = list(df.columns)
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    rows = []
    for _, row in df.head(max_rows).iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if v is None or (isinstance(v, float) and v != v):
                cells.append('<td class="null">null</td>')
            elif isinstance(v, float):
                cells.append(f"<td>{escape(float_fmt.format(v))}</td>")
            else:
                cells.append(f"<td>{escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="muted">{len(df) - max_rows} more rows in results.csv</p>' if len(df) > max_rows else ""
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}'


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle, embedded once per page so reports work offline."""
    from plotly.offline import get_plotlyjs

    # The bundle goes inside <script>...</script>: no "</script" may appear in it.
    return get_plotlyjs().replace("</script", "<\\/script")


def _env():  # -> jinja2.Environment
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("charbench.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
    )


def provenance_rows(data: RunData) -> list[dict[str, str]]:
    """What was measured and by which meter, what is estimated, what is missing and why."""
    rows: dict[tuple[str, str, str], int] = {}
    df = data.results
    if df is not None and len(df):
        for col in ("provenance",):
            if col in df:
                for text in df[col].dropna():
                    for metric, source in json.loads(text).items():
                        source = str(source)
                        if source in ("not-measured", "not measured"):
                            continue  # its reason is in null_reasons
                        kind = ESTIMATED if ESTIMATED in source else "measured"
                        rows[(metric, kind, source)] = rows.get((metric, kind, source), 0) + 1
        if "null_reasons" in df:
            for text in df["null_reasons"].dropna():
                for metric, reason in json.loads(text).items():
                    rows[(metric, "not measured", reason)] = rows.get((metric, "not measured", reason), 0) + 1
        for c in df.columns:
            if c.endswith("_estimated"):
                rows[(c, ESTIMATED, "model (see the study's section)")] = int(df[c].notna().sum())
    return [{"metric": m, "status": k, "source": s, "points": str(n)} for (m, k, s), n in sorted(rows.items())]


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
    fig.update_xaxes(title_text="time since first sample (s)", row=len(present), col=1)
    return Section("Sampler timeline", figure_html(fig, height=260 * len(present)), note="Background sampler, one row per interval; energy figures come from counters, not from these samples.", anchor="timeline")


def _study_sections(data: RunData) -> list[Section]:
    hook = data.meta.get("report_hook")
    if not hook:
        return []
    module, _, func = hook.partition(":")
    from markupsafe import escape

    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        return [Section("Study sections unavailable", f"<p>Cannot load report hook {escape(hook)}: {escape(type(exc).__name__)}: {escape(str(exc))}</p>")]
    try:
        return list(fn(data))
    except Exception as exc:  # the rest of the report (points, provenance, env) is still worth having
        if os.environ.get("CHARBENCH_DEBUG") == "1":
            raise
        return [Section("Study sections failed", f"<p>The report hook {escape(hook)} raised {escape(type(exc).__name__)}: {escape(str(exc))}. The data below is complete; rerun <code>charbench --debug report RUN_DIR</code> after fixing it.</p>")]


def render_run(run_dir: Path, out: Path | None = None) -> Path:
    """Render ``report.html`` (or ``out``) for one run folder and return its path."""
    data = RunData.load(run_dir)
    sections = _study_sections(data)
    tl = timeline_section(data)
    if tl is not None:
        sections.append(tl)
    # Old or hand-made run folders may lack fields: the template sees every key it uses.
    env = {k: None for k in ("charbench_version", "git_sha", "hostname", "cpu_model", "cpu_cores", "os", "python", "torch", "torch_cuda", "gpus_reason")}
    env |= {"command_line": [], "meters": [], "gpus": []} | data.env
    meta = {k: None for k in ("run_id", "status", "points_done", "points_failed", "started", "label", "device")} | {"meta": {}} | data.meta
    html = _env().get_template("run.html.j2").render(
        title=f"charbench {meta['study']}: {meta['run_id']}",
        meta=meta,
        env=env,
        env_json=json.dumps(data.env, indent=2, default=str),
        config_json=json.dumps(data.config, indent=2, default=str),
        provenance=provenance_rows(data),
        sections=sections,
        points_table=table_html(_display_frame(data.results)) if len(data.results) else "",
        failures=data.failures,
        plotly_js=plotly_js(),
    )
    target = Path(out) if out is not None else data.store.path / "report.html"
    atomic_write_text(target, html)
    return target


def render_page(title: str, sections: list[Section], subtitle: str = "") -> str:
    """A generic page (comparisons, history) in the same look as run reports."""
    return _env().get_template("page.html.j2").render(title=title, subtitle=subtitle, sections=sections, plotly_js=plotly_js())


def _display_frame(df: Any) -> Any:
    hidden = {"null_reasons", "provenance", "completed_at"}
    return df[[c for c in df.columns if c not in hidden]]


def render_many(run_dirs: list[Path], out: Path) -> Path:
    """Render a side-by-side comparison of several runs (see :mod:`charbench.compare`)."""
    if len(run_dirs) < 2:
        raise CharbenchError("report: give two or more RUN_DIRs to compare, or one to render")
    from charbench.compare import render_comparison

    return render_comparison(run_dirs, out)
