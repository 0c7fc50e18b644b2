"""The HTML building blocks every charbench page shares: sections, escaping, links, figures, tables.

::

    from charbench.pages import Section, figure_html, html_escape, render_page, table_html
    html = render_page("title", [Section("Runs", table_html(df)), Section("Plot", figure_html(fig))])

Run reports (:mod:`charbench.report`), comparison pages (:mod:`charbench.compare_page`),
the run history (:mod:`charbench.history`) and the studies' report hooks build on these.
Pages are self-contained: plotly.js is embedded once per page; every user-provided string
is escaped (jinja2 autoescape, :func:`html_escape`; figure JSON has ``<``, ``>`` and ``&``
escaped).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: semantic colors of the pages (the same hues as the ``badge`` classes of the templates)
PALETTE: dict[str, str] = {
    "bad": "#d92d20",
    "good": "#039855",
    "warn": "#b54708",
    "quiet": "#98a2b3",
    "neutral": "#667085",
    "faint": "#d0d5dd",
}


#: series colours, in legend order: distinct hues (Tableau 10) that every study's figures share
SERIES: tuple[str, ...] = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)

#: pixels a figure without an explicit height gets per row of subplots, and for title/legend/axes
ROW_PX, FRAME_PX, MIN_FIGURE_PX = 260, 120, 320

_COLOURED = frozenset({"scatter", "scattergl", "bar", "histogram", "box", "violin"})


def series_colour(i: int) -> str:
    """The ``i``-th series colour (cycles over :data:`SERIES`)."""
    return SERIES[i % len(SERIES)]


def _scalar_colour(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _explicit_colour(trace: Any) -> str | None:
    for part in ("line", "marker"):
        obj = getattr(trace, part, None)
        c = _scalar_colour(getattr(obj, "color", None)) if obj is not None else None
        if c:
            return c
    return None


def assign_colours(fig: Any) -> dict[str, str]:
    """Give every series of ``fig`` one explicit colour, the same in every panel and in the legend.

    A series is a trace's ``legendgroup`` (else its ``name``): traces of one series drawn in
    several subplots (with the legend entry shown once) share its colour, so every colour on
    the page is one the legend names. Colours a figure set itself are kept (and claim their
    series); the rest come from :data:`SERIES` in order. Plotly's own cycling would instead
    colour each of 24 traces differently, most of them in no legend entry.

    Returns:
        series name -> colour.
    """
    by_series: dict[str, str] = {}
    traces = [t for t in fig.data if t.type in _COLOURED]
    for t in traces:  # colours chosen by the figure first, so the palette does not reuse them
        c = _explicit_colour(t)
        key = t.legendgroup or t.name
        if c and key and key not in by_series:
            by_series[key] = c
    used = set(by_series.values())
    free = (c for c in SERIES * 4 if c not in used)
    for t in traces:
        if _explicit_colour(t):
            continue
        key = t.legendgroup or t.name or f"trace{id(t)}"
        if key not in by_series:
            by_series[key] = next(free, SERIES[len(by_series) % len(SERIES)])
        colour = by_series[key]
        if t.type in ("scatter", "scattergl"):
            t.update(line_color=colour, marker_color=colour)
        else:
            t.update(marker_color=colour)
    return by_series


def figure_height(fig: Any) -> int:
    """A figure's pixel height from its content: its own ``layout.height``, else rows of subplots."""
    if fig.layout.height:
        return int(fig.layout.height)
    starts = {tuple(ax.domain) for name in dir(fig.layout) if name.startswith("yaxis")
              for ax in (getattr(fig.layout, name),) if ax is not None and getattr(ax, "domain", None) is not None}
    rows = max(1, len(starts))
    return max(MIN_FIGURE_PX, FRAME_PX + ROW_PX * rows)


#: how a unit of the naming rule (:data:`charbench.record.UNITS`) reads on a page
UNIT_TEXT: dict[str, str] = {
    "s": "s", "ms": "ms", "us": "µs", "j": "J", "pj": "pJ", "w": "W", "mhz": "MHz", "c": "°C", "pct": "%", "frac": "fraction",
    "rps": "req/s", "tok_s": "tok/s", "tok_j": "tok/J", "count": "count", "tokens": "tokens", "bits": "bits", "flop": "FLOP",
    "flop_s": "FLOP/s", "tflop_s": "TFLOP/s", "bytes": "bytes", "mib": "MiB", "h": "h", "wh": "Wh", "kwh": "kWh",
    "kgco2e": "kg CO2e", "usd": "USD",
}
#: (unit, smaller unit, factor): shown in the smaller unit when every value is below 1 of the unit
#: (a CPU's 0.005 TFLOP/s reads 5 GFLOP/s on every page: run, compare and history alike)
_SMALLER: dict[str, tuple[str, float]] = {"tflop_s": ("GFLOP/s", 1e3), "j": ("mJ", 1e3), "s": ("ms", 1e3)}


def display_unit(metric: str, values: Any = ()) -> tuple[str, float]:
    """(unit text, scale) a page shows ``metric`` in: the unit its name ends in, or a smaller one for small values.

    Every page (run report, comparison, history) labels a metric through this function, so one
    quantity reads in one unit everywhere: ``throughput_tflop_s`` of a CPU run is GFLOP/s in the
    gemm-power figures, the comparison's tables and the history's trends.

    Args:
        metric: a metric name (``[statistic_]quantity_unit``).
        values: the values to be shown (decides whether the smaller unit applies).
    """
    from charbench.record import MetricNameError, parse_metric

    try:
        _, _, unit = parse_metric(metric)
    except MetricNameError:
        return "", 1.0
    finite = [abs(float(v)) for v in values if v is not None and isinstance(v, (int, float)) and float(v) == float(v) and abs(float(v)) != float("inf")]
    if unit in _SMALLER and finite and max(finite) < 1.0:
        text, scale = _SMALLER[unit]
        return text, scale
    return UNIT_TEXT.get(unit, unit), 1.0


def metric_label(metric: str, values: Any = ()) -> str:
    """A metric as an axis or column title with its unit: ``p99_ttft_ms`` -> ``p99 ttft (ms)``."""
    from charbench.record import MetricNameError, parse_metric

    try:
        statistic, quantity, _ = parse_metric(metric)
    except MetricNameError:
        return metric
    unit, _ = display_unit(metric, values)
    words = " ".join(p for p in (statistic, quantity.replace("_", " ")) if p)
    return f"{words} ({unit})" if unit else words


def fmt_number(v: Any) -> str:
    """The one number format of the pages: 4 significant digits, no thousands separator (``1148``, ``0.003142``)."""
    if v is None or (isinstance(v, float) and v != v):
        return "null"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and abs(v) == float("inf"):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


@dataclass
class Section:
    """One block of a report: a title, trusted HTML (figures, tables) and a note."""

    title: str
    html: str
    note: str = ""
    anchor: str = ""


def html_escape(v: Any) -> str:
    """Text made safe for HTML (``<``, ``>``, ``&`` and quotes escaped); None becomes empty."""
    from markupsafe import escape

    return str(escape("" if v is None else str(v)))


def relative_link(target: Path, page: Path) -> str:
    """URL of ``target`` relative to the folder of ``page`` (keeps a published folder's links working)."""
    from urllib.parse import quote

    rel = os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)
    return quote(Path(rel).as_posix())


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

    The div is given the figure's height (``height``, else :func:`figure_height`), so a resize
    changes only the width: a container shorter than its figure would let the SVG spill over
    the next section. Series get explicit colours tied to their legend entries
    (:func:`assign_colours`).

    Args:
        fig: a ``plotly.graph_objects.Figure``.
        height: pixel height (default: from the figure's rows of subplots).
    """
    div_id = _IDS.next()
    h = int(height) if height is not None else figure_height(fig)
    assign_colours(fig)
    fig.update_layout(template="plotly_white", height=h, autosize=True, margin=dict(l=70, r=20, t=50, b=60))
    payload = _safe_json(fig.to_json())
    return (
        f'<div class="plot" id="{div_id}" style="height:{h}px"></div>\n'
        f'<script>(function(){{var f={payload};Plotly.newPlot("{div_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>'
    )


def table_html(df: Any, max_rows: int = 500, float_fmt: str = "{:.4g}") -> str:
    """An escaped HTML table of a DataFrame (None/NaN shown as 'null')."""
    cols = list(df.columns)
    head = "".join(f"<th>{html_escape(c)}</th>" for c in cols)
    rows = []
    for _, row in df.head(max_rows).iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if v is None or (isinstance(v, float) and v != v):
                cells.append('<td class="null">null</td>')
            elif isinstance(v, float):
                cells.append(f"<td>{html_escape(float_fmt.format(v))}</td>")
            else:
                cells.append(f"<td>{html_escape(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="muted">{len(df) - max_rows} more rows in results.csv</p>' if len(df) > max_rows else ""
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}'


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle, embedded once per page so reports work offline."""
    from plotly.offline import get_plotlyjs

    # The bundle goes inside <script>...</script>: no "</script" may appear in it.
    return get_plotlyjs().replace("</script", "<\\/script")


def jinja_env():  # -> jinja2.Environment
    """The jinja2 environment of the templates in ``charbench.reports`` (autoescaped, strict)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("charbench.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
    )


def render_page(title: str, sections: list[Section], subtitle: str = "") -> str:
    """A generic page (comparisons, history) in the same look as run reports."""
    return jinja_env().get_template("page.html.j2").render(title=title, subtitle=subtitle, sections=sections, plotly_js=plotly_js())
