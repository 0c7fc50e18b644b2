"""``charbench report``: render one run, compare several, or build a history index.

::

    charbench report RUN_DIR                       # writes RUN_DIR/report.html
    charbench report RUN_A RUN_B --out cmp.html    # side by side with deltas
    charbench report --history charbench-runs      # index of every run, trends per study
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charbench.errors import ConfigError

app = typer.Typer(add_completion=False)


@app.command()
def report(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="Run folder(s); two or more make a comparison page.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output HTML file (default RUN_DIR/report.html, or ./compare.html / DIR/index.html).")] = None,
    history: Annotated[Optional[Path], typer.Option("--history", help="Build an index page of every run under this results folder.")] = None,
) -> None:
    """Render a run's HTML report, compare several runs, or build a run history."""
    from charbench import report as rep
    from charbench.config import check_writable_file

    if out is not None:
        check_writable_file(out, "--out")
    if history is not None:
        if run_dirs:
            raise ConfigError("report: give either RUN_DIR... or --history DIR, not both")
    elif not run_dirs:
        raise ConfigError("report: give a RUN_DIR (or several to compare), or --history DIR")
    else:
        for d in run_dirs:
            if not (d / "run.json").is_file():
                raise ConfigError(f"report: {d} is not a charbench run folder (no run.json); pass a folder made by a charbench study (see `charbench runs`)")
    try:
        if history is not None:
            from charbench.history import render_history

            path = render_history(history, out)
        elif len(run_dirs or []) == 1:
            path = rep.render_run(run_dirs[0], out)  # type: ignore[index]
        else:
            path = rep.render_many(list(run_dirs or []), out or Path("compare.html"))
    except OSError as exc:  # e.g. a read-only run folder for the default RUN_DIR/report.html
        where = exc.filename or out or "the report"
        raise ConfigError(f"report: cannot write {where} ({exc.strerror or exc}); pass --out FILE in a writable folder") from None
    typer.echo(str(path))
