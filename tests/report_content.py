"""What a study's report sections show, as data: the plotly figures and the tables they were built from.

Report tests assert on these, not on section titles or markup (the page layout changes;
what a figure plots and what a table lists must not)::

    content = report_content(run_dir)                     # the study's hook, from run.json
    fig = content.figure_with_trace("fp16 / torch")       # a plotly Figure, as figure_html got it
    x, y = trace_xy(fig, "fp16 / torch")
    table = content.table_with_column("coefficient")      # a pandas DataFrame, as table_html got it

The section builders' ``figure_html``/``table_html`` are wrapped while the hook runs; each
figure and table is tied to the section whose HTML embeds it.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: meter domains the measured branch gives on a CPU run (a fake RAPL package and DRAM)
MEASURED_POWER_W = {"cpu_package0": 40.0, "cpu_dram0": 5.0}


@dataclass
class SectionContent:
    """One section's figures and tables (``title`` is kept for messages only)."""

    title: str
    figures: list[Any] = field(default_factory=list)
    tables: list[Any] = field(default_factory=list)
    note: str = ""


@dataclass
class ReportContent:
    """Every section a study hook returned, with its data."""

    sections: list[SectionContent]

    @property
    def figures(self) -> list[Any]:
        """Every figure of every section, in order."""
        return [f for s in self.sections for f in s.figures]

    @property
    def tables(self) -> list[Any]:
        """Every table of every section, in order."""
        return [t for s in self.sections for t in s.tables]

    def figure_with_trace(self, name: str) -> Any:
        """The first figure that has a trace called ``name``.

        Raises:
            AssertionError: no figure has it (the message lists the traces there are).
        """
        for fig in self.figures:
            if any(t.name == name for t in fig.data):
                return fig
        raise AssertionError(f"no figure has a trace {name!r}; traces: {sorted({t.name for f in self.figures for t in f.data if t.name})}")

    def table_with_column(self, column: str) -> Any:
        """The first table with a column called ``column``.

        Raises:
            AssertionError: no table has it (the message lists the tables' columns).
        """
        for df in self.tables:
            if column in df.columns:
                return df
        raise AssertionError(f"no table has a column {column!r}; tables: {[list(df.columns) for df in self.tables]}")


def trace_xy(fig: Any, name: str, axis: str | None = None) -> tuple[list[Any], list[Any]]:
    """(x, y) of the trace called ``name`` (on y axis ``axis``: ``"y"`` first subplot, ``"y2"`` ...)."""
    for t in fig.data:
        if t.name == name and (axis is None or (t.yaxis or "y") == axis):
            return _plain(t.x), _plain(t.y)
    raise AssertionError(f"no trace {name!r}" + (f" on {axis}" if axis else "") + f"; traces: {[(t.name, t.yaxis) for t in fig.data]}")


def _plain(values: Any) -> list[Any]:
    return [] if values is None else [v.item() if hasattr(v, "item") else v for v in values]


def close(a: list[Any], b: list[Any], rel: float = 1e-9) -> bool:
    """Two lists of numbers equal within ``rel`` (None/NaN equal only to None/NaN)."""
    def num(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return len(a) == len(b) and all(
        (num(x) is None and num(y) is None) or (num(x) is not None and num(y) is not None and math.isclose(num(x), num(y), rel_tol=rel, abs_tol=1e-12))
        for x, y in zip(a, b))


def capture_sections(hook: Callable[[Any], list[Any]], module: Any, data: Any) -> ReportContent:
    """Run ``hook(data)`` with ``module``'s ``figure_html``/``table_html`` recording what they draw.

    Args:
        hook: the study's ``report_sections``.
        module: the module whose names ``figure_html``/``table_html`` the hook calls.
        data: a :class:`charbench.report.RunData`.
    """
    drawn: list[tuple[str, str, Any]] = []  # (html, kind, object)
    saved = {name: getattr(module, name) for name in ("figure_html", "table_html") if hasattr(module, name)}

    def recorder(name: str, real: Callable[..., str]) -> Callable[..., str]:
        def record(obj: Any, *args: Any, **kwargs: Any) -> str:
            html = real(obj, *args, **kwargs)
            copy = obj.copy() if name == "table_html" else obj
            drawn.append((html, name, copy))
            return html

        return record

    try:
        for name, real in saved.items():
            setattr(module, name, recorder(name, real))
        sections = hook(data)
    finally:
        for name, real in saved.items():
            setattr(module, name, real)
    out = []
    placed: set[int] = set()
    for sec in sections:
        content = SectionContent(sec.title, note=sec.note)
        for i, (html, kind, obj) in enumerate(drawn):
            if html and html in str(sec.html):
                (content.figures if kind == "figure_html" else content.tables).append(obj)
                placed.add(i)
        out.append(content)
    # a figure or table drawn but in no section's HTML was lost or escaped on the way (str + Markup escapes the str)
    lost = [kind for i, (_, kind, _) in enumerate(drawn) if i not in placed]
    assert not lost, f"{len(lost)} drawn block(s) ({', '.join(lost)}) are in no section's HTML: dropped, or escaped into text"
    return ReportContent(out)


def report_content(run_dir: Path) -> ReportContent:
    """The content of a run folder's study sections (its hook from run.json, as the report renders it)."""
    from charbench.report import RunData

    data = RunData.load(Path(run_dir))
    hook_name = data.meta.get("report_hook")
    assert hook_name, f"{run_dir}: run.json names no report hook"
    mod_name, fn = hook_name.split(":")
    module = importlib.import_module(mod_name)
    return capture_sections(getattr(module, fn), module, data)


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's records as stored (null reasons and provenance decoded)."""
    from charbench.results import RunStore

    out = []
    for r in RunStore.open(Path(run_dir)).records():
        r = dict(r)
        for col in ("null_reasons", "provenance"):
            r[col] = json.loads(r[col]) if isinstance(r.get(col), str) and r[col] else {}
        out.append(r)
    return out


def use_meter(monkeypatch: Any, branch: str, tmp_path: Path) -> None:
    """Make the runner's meter measured (a fake constant-power meter) or not measured (no RAPL tree), on any machine.

    Args:
        branch: ``"measured"`` (:class:`charbench.measure.testing.FakeMeter` with :data:`MEASURED_POWER_W`)
            or ``"not-measured"`` (the real meter factory pointed at an empty powercap folder).
    """
    from charbench import measure
    from charbench.measure.meters import make_meters as real  # the real factory, even when a test switches branches
    from charbench.measure.testing import FakeMeter

    if branch == "measured":
        monkeypatch.setattr(measure, "make_meters", lambda device, gpus=None: (FakeMeter(dict(MEASURED_POWER_W)), []))
    elif branch == "not-measured":
        monkeypatch.setattr(measure, "make_meters", lambda device, gpus=None: real(device, gpus, rapl_root=tmp_path / "no-powercap"))
    else:
        raise ValueError(f"branch {branch!r}: measured or not-measured")
