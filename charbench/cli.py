"""The ``charbench`` command line: a root group whose commands load lazily.

::

    charbench --help            # fast: imports no torch, no plotly
    charbench env --json
    charbench gemm-power --preset quick
    charbench --debug report RUN_DIR       # tracebacks on errors

Each command lives in its own module exposing a one-command ``typer.Typer`` named ``app``;
the module is imported only when the command runs. The spine's commands are listed in
:data:`SPINE_COMMANDS`; study commands come from the registry (:mod:`charbench.studies`).
Errors derived from :class:`charbench.errors.CharbenchError` print ``Error: ...`` and exit
1 (usage errors 2), with a traceback only under ``--debug``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from typing import Any

import click

from charbench import __version__
from charbench.errors import CharbenchError

#: the spine's own commands: name -> (module defining ``app``, one-line help shown by ``charbench --help``)
SPINE_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("charbench.commands.serve", "Run the built-in LLM engine behind an OpenAI-compatible API (loopback by default)."),
    "env": ("charbench.commands.env", "Show the machine, GPUs, backends and usable meters (and how to fix missing ones)."),
    "report": ("charbench.commands.report", "Render a run's HTML report, compare several runs, or build a run history."),
    "runs": ("charbench.commands.runs", "List runs under the results folder."),
    "compare": ("charbench.commands.compare", "Compare a candidate run with a baseline; exit non-zero on regressions."),
}


_CLASHES_WARNED: set[str] = set()


def command_table() -> dict[str, tuple[str, str]]:
    """Every command: the studies the registry discovers (:mod:`charbench.studies`), then the spine's.

    A study cannot take a spine command's name; :func:`charbench.studies.discover` warns
    about other clashes.
    """
    from charbench.studies import discover

    table: dict[str, tuple[str, str]] = {}
    for spec in discover():
        if spec.command in SPINE_COMMANDS:
            if spec.command not in _CLASHES_WARNED:  # the table is rebuilt per lookup: say it once
                _CLASHES_WARNED.add(spec.command)
                print(f"[charbench] warning: study command {spec.command!r} from {spec.cli_module} is a charbench command; skipped", file=sys.stderr)
            continue
        table[spec.command] = (spec.cli_module, spec.help)
    return table | SPINE_COMMANDS


DEBUG_ENV = "CHARBENCH_DEBUG"


def debug_enabled() -> bool:
    """True under ``--debug`` (or ``CHARBENCH_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV) == "1"


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Command names in a stable order (registered modules that exist)."""
        table = command_table()
        return [name for name in table if _module_exists(table[name][0])]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command's module and turn its Typer app into a click command."""
        table = command_table()
        if cmd_name not in table or not _module_exists(table[cmd_name][0]):
            return None
        import typer.main

        try:
            module = importlib.import_module(table[cmd_name][0])
        except Exception as exc:  # a broken study module must not look like a charbench crash
            if debug_enabled():
                raise
            raise CharbenchError(
                f"{cmd_name}: the command failed to load ({type(exc).__name__}: {exc}); "
                "check the installation (pip install -e .) or rerun with --debug for the traceback"
            ) from exc
        cmd = typer.main.get_command(module.app)
        cmd.name = cmd_name
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the static table so ``--help`` imports nothing heavy."""
        table = command_table()
        rows = [(name, table[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (nor an unimported parent's ``__init__``).

    A study's command module imports the study (and with it torch); ``charbench --help``
    only looks it up in its package's folder, so listing commands stays fast.
    """
    if module in sys.modules:
        return True
    parent, _, leaf = module.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent) if parent else None
    except (ImportError, ValueError):
        return False
    if parent and (spec is None or not spec.submodule_search_locations):
        return False
    if parent and parent in sys.modules:
        return importlib.util.find_spec(module) is not None
    locations = list(spec.submodule_search_locations) if spec is not None and spec.submodule_search_locations else None
    return importlib.machinery.PathFinder.find_spec(leaf, locations) is not None


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


def _root_debug_flag(args: list[str]) -> bool:
    """``--debug`` among the root options (before the command name)."""
    for a in args:
        if a == "--debug":
            return True
        if a == "--" or not a.startswith("-"):
            return False
    return False


def _framework_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) classes of click and, when a command loaded it, Typer.

    Typer commands raise ``typer.Exit``/``typer.Abort`` and Typer's vendored click
    exceptions, which are not subclasses of click's own.
    """
    exits: list[type] = [click.exceptions.Exit]
    aborts: list[type] = [click.exceptions.Abort]
    usage: list[type] = [click.ClickException]
    if "typer" in sys.modules:
        typer = sys.modules["typer"]
        exits += [c for c in (getattr(typer, "Exit", None),) if isinstance(c, type)]
        aborts += [c for c in (getattr(typer, "Abort", None),) if isinstance(c, type)]
        vendored = sys.modules.get("typer._click.exceptions")
        if vendored is not None and isinstance(getattr(vendored, "ClickException", None), type):
            usage.append(vendored.ClickException)
    return tuple(exits), tuple(aborts), tuple(usage)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``charbench`` console script; returns the exit code.

    Args:
        argv: arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success, 1 for a :class:`CharbenchError` (``Error: ...`` on stderr) or an
        internal error, 2 for usage errors, 130 after Ctrl-C, 143 after SIGTERM during a run.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    previous_debug = os.environ.get(DEBUG_ENV)
    if _root_debug_flag(args):
        os.environ[DEBUG_ENV] = "1"
    try:
        return _main(args)
    finally:
        # In-process callers (tests, notebooks) must not inherit --debug from an earlier call.
        if previous_debug is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous_debug


def _main(args: list[str]) -> int:
    try:
        try:
            with root.make_context("charbench", list(args)) as ctx:
                root.invoke(ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a run (charbench.signals.Terminated)
            click.echo("Interrupted; completed points are kept (continue with --resume RUN_DIR).", err=True)
            return int(getattr(exc, "exit_code", 130))
        except CharbenchError as exc:
            if debug_enabled():
                import traceback

                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            return exc.exit_code
        except Exception as exc:
            exits, aborts, usage = _framework_errors()
            if isinstance(exc, exits):
                return int(getattr(exc, "exit_code", 0) or 0)
            if isinstance(exc, aborts):
                click.echo("Aborted.", err=True)
                return 130
            if isinstance(exc, usage):
                exc.show()  # type: ignore[attr-defined]
                return int(getattr(exc, "exit_code", 1))
            if isinstance(exc, BrokenPipeError):
                raise
            if debug_enabled():
                raise
            # an internal bug: say so plainly
            click.echo(f"Error: internal error {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
            return 1
    except BrokenPipeError:
        # `charbench runs | head`: the reader went away; exit quietly like other CLI tools.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown from flushing into the closed pipe
        except OSError:
            pass
        return 1
    return 0


def run() -> None:
    """``python -m charbench`` and console-script wrapper that exits with main()'s code."""
    sys.exit(main())
