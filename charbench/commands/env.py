"""``charbench env``: the machine, GPUs, backends and meters, with fixes for what is missing.

::

    charbench env
    charbench env --json > env.json
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False)


def _fmt(v: Any) -> str:
    return "—" if v is None else str(v)


def print_env(env: dict[str, Any]) -> None:
    """Print the inventory as rich tables."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="Machine", show_header=False)
    for k in ("charbench_version", "git_sha", "os", "cpu_model", "cpu_cores", "memory_gib", "python", "torch", "torch_cuda", "cuda_visible_devices"):
        t.add_row(k, _fmt(env.get(k)))
    con.print(t)
    if env.get("gpus"):
        g = Table(title="GPUs")
        cols = ["index", "name", "driver", "memory_total_mib", "sm_clock_mhz", "mem_clock_mhz", "power_limit_w", "power_limit_min_w", "power_limit_max_w", "energy_counter", "mig_mode", "persistence_mode"]
        for c in cols:
            g.add_column(c)
        for gpu in env["gpus"]:
            g.add_row(*[_fmt(gpu.get(c)) for c in cols])
        con.print(g)
    else:
        con.print(f"[bold]GPUs:[/bold] none ({env.get('gpus_reason') or 'no GPU found'})")
    b = Table(title="Backends")
    for c in ("backend", "usable", "version", "detail / why not"):
        b.add_column(c)
    for name, p in env.get("backends", {}).items():
        b.add_row(name, "yes" if p["ok"] else "no", _fmt(p.get("version")), p.get("detail") or p.get("reason") or "")
    con.print(b)
    m = Table(title="Meters")
    for c in ("meter", "usable", "measures", "why not / fix"):
        m.add_column(c)
    for row in env.get("meters", []):
        m.add_row(row["meter"], "yes" if row["usable"] else "no", row["what"], row.get("reason") or "")
    con.print(m)


@app.command()
def env(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """Show the machine, GPUs, backends and usable meters (and how to fix missing ones)."""
    from charbench.envinfo import collect_env

    inventory = collect_env()
    if json_out:
        typer.echo(json.dumps(inventory, indent=2, default=str))
    else:
        print_env(inventory)
