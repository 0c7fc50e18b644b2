"""``charbench runs``: list the runs under a results folder.

::

    charbench runs
    charbench runs --out /data/charbench-runs --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from charbench.errors import ConfigError

app = typer.Typer(add_completion=False)


def run_rows(out: Path) -> list[dict[str, object]]:
    """One dict per run: study, label, date, status, points done/failed, the pid and host that ran it, path.

    The status is ``stale`` for a run left at ``running`` whose process is gone (killed,
    crashed, the machine rebooted); ``--resume`` continues it.
    """
    from charbench.results import list_runs
    from charbench.runlock import run_status

    rows = []
    for r in list_runs(out):
        m = r.meta
        rows.append({
            "study": m.get("study"), "run_id": m.get("run_id"), "label": m.get("label"), "started": m.get("started"),
            "status": run_status(m), "points_done": m.get("points_done"), "points_failed": m.get("points_failed"),
            "points_total": m.get("points_total"), "pid": m.get("pid"), "host": m.get("host"), "path": str(r.path),
        })
    return rows


@app.command()
def runs(
    out: Annotated[Optional[Path], typer.Option("--out", help="Results root (default ./charbench-runs or $CHARBENCH_HOME).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List runs (study, label, date, status, points done/failed)."""
    from charbench.config import default_out_dir

    root = out if out is not None else default_out_dir()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root}: is a file, not a results folder; give the folder runs are written to (e.g. ./charbench-runs)")
    rows = run_rows(root)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no runs under {root}" + ("" if root.is_dir() else " (the folder does not exist)"), err=True)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"runs under {root}")
    t.add_column("study")
    t.add_column("run_id (started)", no_wrap=True, min_width=15)  # the folder name is the start time: never cut it
    for c in ("label", "status", "done", "failed"):
        t.add_column(c)
    for r in rows:
        done = f"{r['points_done']}/{r['points_total']}" if r["points_total"] is not None else str(r["points_done"])
        t.add_row(str(r["study"]), str(r["run_id"]), str(r["label"] or ""), str(r["status"]), done, str(r["points_failed"]))
    Console().print(t)
