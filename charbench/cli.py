"""The ``charbench`` command line: a root group whose commands load lazily.

::

    charbench --help            # fast: imports no torch, no plotly
    charbench env --json
    charbench gemm-power --preset quick
    charbench --debug report RUN_DIR       # tracebacks on errors

Each command lives in its own module exposing a one-command ``typer.Typer`` named ``app``;
the module is imported only when the command runs. Errors derived from
:class:`charbench.errors.CharbenchError` print ``Error: ...`` and exit 1 (usage errors 2),
with a traceback only under ``--debug``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from charbench import __version__
from charbench.errors import CharbenchError

#: command name -> (module defining ``app``, one-line help shown by ``charbench --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "gemm-power": ("charbench.workloads.gemm_power.cli", "Input-dependent GEMM power: values, bits, placement, sparsity, across dtypes and kernels."),
    "serve-sweep": ("charbench.workloads.serving.cli", "LLM serving latency, throughput, power and energy across knobs."),
    "serve": ("charbench.commands.serve", "Run the built-in LLM engine behind an OpenAI-compatible API (loopback by default)."),
    "env": ("charbench.commands.env", "Show the machine, GPUs, backends and usable meters (and how to fix missing ones)."),
    "report": ("charbench.commands.report", "Render a run's HTML report, compare several runs, or build a run history."),
    "runs": ("charbench.commands.runs", "List runs under the results folder."),
    "compare": ("charbench.commands.compare", "Compare a candidate run with a baseline; exit non-zero on regressions."),
}

DEBUG_ENV = "CHARBENCH_DEBUG"


def debug_enabled() -> bool:
    """True under ``--debug`` (or ``CHARBENCH_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV) == "1"


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Command names in a stable order (registered modules that exist)."""
        return [name for name in COMMANDS if importlib.util.find_spec(COMMANDS[name][0].rsplit(".", 1)[0]) is not None and _module_exists(COMMANDS[name][0])]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command's module and turn its Typer app into a click command."""
        if cmd_name not in COMMANDS or not _module_exists(COMMANDS[cmd_name][0]):
            return None
        import typer.main

        module = importlib.import_module(COMMANDS[cmd_name][0])
        cmd = typer.main.get_command(module.app)
        cmd.name = cmd_name
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the static table so ``--help`` imports nothing heavy."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _version(ctx: click.Context, _param: Any, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"charbench {__version__}")
        ctx.exit(0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version, help="Show the version and exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def root(debug: bool) -> None:
    """charbench: what a GPU workload really costs in time, power and energy.

    Every study writes a self-contained run folder with an HTML report
    (default ./charbench-runs, or $CHARBENCH_HOME).
    """
    if debug:
        os.environ[DEBUG_ENV] = "1"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``charbench`` console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args[: max(1, args.index("--") if "--" in args else len(args))]:
        os.environ[DEBUG_ENV] = "1"
    try:
        root.main(args=args, prog_name="charbench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except CharbenchError as exc:
        if debug_enabled():
            import traceback

            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted; completed points are kept (continue with --resume RUN_DIR).", err=True)
        return 130
    except Exception as exc:  # an internal bug: say so plainly
        if debug_enabled():
            raise
        click.echo(f"Error: internal error {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        return 1
    return 0


def run() -> None:
    """``python -m charbench`` and console-script wrapper that exits with main()'s code."""
    sys.exit(main())
