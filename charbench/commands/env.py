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

#: Machine facts shown first, in this order (the rest of env.json is in --json).
MACHINE_KEYS = (
    "charbench_version", "git_sha", "hostname", "os", "arch", "cpu_model", "cpu_cores", "memory_gib",
    "python", "torch", "torch_cuda", "cuda_visible_devices",
)


def _fmt(v: Any) -> str:
    return "—" if v is None else str(v)


def machine_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, value) rows of the Machine table; torch's missing CUDA or import problem is spelled out."""
    rows = []
    for k in MACHINE_KEYS:
        v = env.get(k)
        if k == "torch" and v is None:
            v = f"not usable ({env.get('torch_reason') or 'not installed'})"
        elif k == "torch_cuda" and v is None and env.get("torch"):
            v = "none (CPU-only build of torch)"
        rows.append((k, _fmt(v)))
    return rows


def gpu_rows(gpu: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) rows of one GPU; an unknown value shows its ``<field>_reason``."""
    rows = []
    for k, v in gpu.items():
        if k.endswith("_reason"):
            continue
        reason = gpu.get(f"{k}_reason")
        rows.append((k, f"— ({reason})" if v is None and reason else _fmt(v)))
    return rows


def print_env(env: dict[str, Any]) -> None:
    """Print the inventory as rich tables (every value escaped: no rich markup from data)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    t = Table(title="Machine", show_header=False)
    for k, v in machine_rows(env):
        t.add_row(k, escape(v))
    con.print(t)
    gpus = env.get("gpus") or []
    if gpus:
        for gpu in gpus:
            g = Table(title=f"GPU {escape(_fmt(gpu.get('index')))}: {escape(_fmt(gpu.get('name')))}", show_header=False)
            for k, v in gpu_rows(gpu):
                g.add_row(k, escape(v))
            con.print(g)
    else:
        con.print(f"[bold]GPUs:[/bold] none ({escape(env.get('gpus_reason') or 'no GPU found')})")
    b = Table(title="Backends")
    for c in ("backend", "usable", "version", "detail / why not"):
        b.add_column(c, overflow="fold")
    for name, p in (env.get("backends") or {}).items():
        b.add_row(escape(name), "yes" if p.get("ok") else "no", escape(_fmt(p.get("version"))), escape(p.get("detail") or p.get("reason") or ""))
    con.print(b)
    m = Table(title="Meters")
    for c in ("meter", "usable", "measures", "why not / fix"):
        m.add_column(c, overflow="fold")
    for row in env.get("meters") or []:
        m.add_row(escape(str(row.get("meter"))), "yes" if row.get("usable") else "no", escape(str(row.get("what") or "")), escape(row.get("reason") or ""))
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
