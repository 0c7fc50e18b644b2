"""The root CLI: version, help, lazy commands, error messages and exit codes, report/runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from charbench import __version__, cli
from charbench.cli import SPINE_COMMANDS, command_table, main
from charbench.results import RunStore

BIN = Path(sys.executable).parent / "charbench"


def _fake_command_module() -> types.ModuleType:
    """A Typer command that fails in a chosen way (internal, interrupt, exit code, ...)."""
    import typer

    from charbench.errors import ConfigError, UsageError

    app = typer.Typer(add_completion=False)

    @app.command()
    def boom(kind: str = typer.Option("ok", "--kind")) -> None:
        if kind == "internal":
            raise RuntimeError("bad index 7")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "exit3":
            raise typer.Exit(3)
        if kind == "abort":
            raise typer.Abort()
        if kind == "config":
            raise ConfigError("--kind: bad; use ok")
        if kind == "usage":
            raise UsageError("--kind: conflicts with --other; drop one")
        if kind == "badparam":
            raise typer.BadParameter("must be ok", param_hint="'--kind'")
        typer.echo("fine")

    mod = types.ModuleType("cb_test_cmds")
    mod.app = app  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def boom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cb_test_cmds", _fake_command_module())
    monkeypatch.setitem(SPINE_COMMANDS, "boom", ("cb_test_cmds", "Test command."))


def _run(tmp: Path, label: str = "") -> RunStore:
    store = RunStore.create(tmp, "gemm-power", label=label, config={}, env={})
    store.append_record({"point_key": "a", "energy_j": None, "time_s": 1.0})
    store.finish("completed")
    return store


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"charbench {__version__}\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_commands(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: charbench [OPTIONS] COMMAND [ARGS]...")
    for name in ("env", "report", "runs", "--version", "--debug"):
        assert name in out
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.startswith("  ") and not line.startswith("    ")]
    table = command_table()
    assert listed == [n for n in table if cli._module_exists(table[n][0])]
    from charbench.studies import discover

    studies_found = [s.command for s in discover()]
    assert {"gemm-power", "serve-sweep"} <= set(studies_found)
    assert listed[: len(studies_found)] == studies_found  # the built-in studies, found by the registry, come first


def test_help_hides_commands_whose_module_is_missing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SPINE_COMMANDS, "ghost", ("charbench.workloads.no_such_study.cli", "Not installed."))
    monkeypatch.setitem(SPINE_COMMANDS, "ghost2", ("no_such_pkg_xyz.cli", "Not installed."))
    assert main(["--help"]) == 0
    assert "ghost" not in capsys.readouterr().out
    assert main(["ghost"]) == 2
    assert "Error: No such command 'ghost'." in capsys.readouterr().err


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("Error: No such command 'nosuch'.\n") and "Traceback" not in err


def test_unknown_option_of_a_typer_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "Usage: charbench runs [OPTIONS]" in err and "Error: No such option: --bogus" in err and "internal error" not in err


def test_charbench_error_message_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "Error: report: give a RUN_DIR (or several to compare), or --history DIR\n"
    assert captured.out == ""


def test_debug_shows_traceback_and_does_not_leak(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "report"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "charbench.errors.ConfigError" in err
    assert err.endswith("Error: report: give a RUN_DIR (or several to compare), or --history DIR\n")
    assert "CHARBENCH_DEBUG" not in os.environ
    assert main(["report"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_root_debug_flag_only_before_the_command() -> None:
    assert cli._root_debug_flag(["--debug", "report"])
    assert not cli._root_debug_flag(["report", "--debug"])
    assert not cli._root_debug_flag(["--", "--debug"])
    assert cli._root_debug_flag(["--version", "--debug"])


@pytest.mark.usefixtures("boom")
@pytest.mark.parametrize(
    ("kind", "code", "err"),
    [
        ("ok", 0, ""),
        ("internal", 1, "Error: internal error RuntimeError: bad index 7 (rerun with --debug for the traceback)\n"),
        ("interrupt", 130, "Interrupted; completed points are kept (continue with --resume RUN_DIR).\n"),
        ("exit3", 3, ""),
        ("abort", 130, "Aborted.\n"),
        ("config", 1, "Error: --kind: bad; use ok\n"),
        ("usage", 2, "Error: --kind: conflicts with --other; drop one\n"),
    ],
)
def test_exit_codes(capsys: pytest.CaptureFixture[str], kind: str, code: int, err: str) -> None:
    assert main(["boom", "--kind", kind]) == code
    assert capsys.readouterr().err == err


@pytest.mark.usefixtures("boom")
def test_bad_parameter_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boom", "--kind", "badparam"]) == 2
    assert "Error: Invalid value for '--kind': must be ok" in capsys.readouterr().err


@pytest.mark.usefixtures("boom")
def test_internal_error_under_debug_raises() -> None:
    with pytest.raises(RuntimeError, match="bad index 7"):
        main(["--debug", "boom", "--kind", "internal"])
    assert "CHARBENCH_DEBUG" not in os.environ


def test_broken_command_module(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "cb_broken_cmd.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SPINE_COMMANDS, "broken", ("cb_broken_cmd", "Broken."))
    assert main(["broken"]) == 1
    assert capsys.readouterr().err == (
        "Error: broken: the command failed to load (ModuleNotFoundError: No module named 'no_such_dependency_xyz'); "
        "check the installation (pip install -e .) or rerun with --debug for the traceback\n"
    )


def test_report_one_run_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _run(tmp_path)
    assert main(["report", str(store.path)]) == 0
    assert capsys.readouterr().out == f"{store.path / 'report.html'}\n"
    assert (store.path / "report.html").read_text().startswith("<!DOCTYPE html>")
    out = tmp_path / "x.html"
    assert main(["report", str(store.path), "--out", str(out)]) == 0
    assert out.exists() and capsys.readouterr().out == f"{out}\n"


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"Error: report: {tmp_path / 'nope'} is not a charbench run folder (no run.json); pass a folder made by a charbench study (see `charbench runs`)\n"
    store = _run(tmp_path)
    assert main(["report", str(store.path), "--history", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "Error: report: give either RUN_DIR... or --history DIR, not both\n"


def test_report_many_delegates_to_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import charbench.compare_page

    calls: list[tuple[list[Path], Path]] = []

    def fake(run_dirs: list[Path], out: Path) -> Path:
        calls.append((list(run_dirs), Path(out)))
        return Path(out)

    monkeypatch.setattr(charbench.compare_page, "render_comparison", fake)
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(a.path), str(b.path)]) == 0
    assert calls == [([a.path, b.path], Path("compare.html"))]
    assert capsys.readouterr().out == "compare.html\n"


def test_report_many_real_comparison_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    out = tmp_path / "cmp.html"
    assert main(["report", str(a.path), str(b.path), "--out", str(out)]) == 0
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and a.path.name in html and b.path.name in html


def test_runs_table_json_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str], charbench_home: Path) -> None:
    assert main(["runs"]) == 0
    assert capsys.readouterr().err == f"no runs under {charbench_home} (the folder does not exist)\n"
    store = _run(charbench_home, "first")
    assert main(["runs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{
        "study": "gemm-power", "run_id": store.path.name, "label": "first", "started": store.meta["started"], "status": "completed",
        "points_done": 1, "points_failed": 0, "points_total": None, "pid": os.getpid(), "host": socket.gethostname(), "path": str(store.path),
    }]
    other = _run(tmp_path / "elsewhere", "second")
    assert main(["runs", "--out", str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert other.path.name in out and "completed" in out and store.path.name not in out


def test_runs_shows_a_running_run_whose_process_is_gone_as_stale(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)  # exited: no process has this pid now (pids are not reused this soon)
    here = RunStore.create(charbench_home, "gemm-power", label="here", config={}, env={})
    here.update_meta(pid=dead_pid)
    elsewhere = RunStore.create(charbench_home, "gemm-power", label="elsewhere", config={}, env={})
    elsewhere.update_meta(pid=dead_pid, host=socket.gethostname() + "-other")
    alive = RunStore.create(charbench_home, "gemm-power", label="alive", config={}, env={})  # this process
    assert main(["runs", "--json"]) == 0
    rows = {r["label"]: r for r in json.loads(capsys.readouterr().out)}
    assert {k: (r["status"], r["pid"], r["host"]) for k, r in rows.items()} == {
        "here": ("stale", dead_pid, socket.gethostname()),
        "elsewhere": ("running", dead_pid, socket.gethostname() + "-other"),  # another host's pid cannot be checked
        "alive": ("running", os.getpid(), socket.gethostname()),
    }
    assert alive.meta["status"] == "running"
    assert main(["runs"]) == 0
    assert "stale" in capsys.readouterr().out


def test_console_script_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "CHARBENCH_HOME": str(tmp_path), "COLUMNS": "120"}
    ok = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert (ok.returncode, ok.stdout) == (0, f"charbench {__version__}\n")
    bad = subprocess.run([str(BIN), "report", str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == f"Error: report: {tmp_path / 'nope'} is not a charbench run folder (no run.json); pass a folder made by a charbench study (see `charbench runs`)\n"
    usage = subprocess.run([sys.executable, "-m", "charbench", "nosuch"], capture_output=True, text=True, env=env, timeout=60)
    assert usage.returncode == 2 and "Error: No such command 'nosuch'." in usage.stderr


def test_help_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys, io, contextlib
        from charbench.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["--help"])
        heavy = sorted(m for m in ("torch", "plotly", "pandas", "numpy", "pyarrow", "typer", "rich") if m in sys.modules)
        print(rc, ",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_command_help_imports_nothing_heavy() -> None:
    """Every command's --help stays fast: no torch, plotly, pandas or numpy."""
    code = textwrap.dedent(
        """
        import sys, io, contextlib
        from charbench.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main([sys.argv[1], "--help"])
        heavy = sorted(m for m in ("torch", "plotly", "pandas", "numpy", "pyarrow", "fastapi", "uvicorn") if m in sys.modules)
        print(rc, ",".join(heavy))
        """
    )
    for command in command_table():
        out = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0", (command, out.stdout)


def test_report_history(tmp_path: Path, capsys: pytest.CaptureFixture[str], charbench_home: Path) -> None:
    store = _run(charbench_home, "hist")
    assert main(["report", "--history", str(charbench_home)]) == 0
    index = charbench_home / "index.html"
    assert capsys.readouterr().out == f"{index}\n"
    assert store.path.name in index.read_text()
    assert main(["report", "--history", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith(f"Error: --history {tmp_path / 'missing'}: not a folder")


def test_unwritable_outputs_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    store = _run(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = str(blocker / "page.html")
    for args in (["report", str(store.path), "--out", bad], ["report", str(store.path), str(store.path), "--out", bad],
                 ["report", "--history", str(tmp_path), "--out", bad], ["compare", str(store.path), str(store.path), "--out", bad],
                 ["report", str(store.path), "--out", str(tmp_path)]):
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert err.startswith(f"Error: --out {args[-1]}: ") and "internal error" not in err, err
    # the default page lands in a folder that turns out to be unwritable (e.g. read-only run folders)
    import charbench.report

    def denied(run_dir: Path, out: Path | None = None) -> Path:
        raise PermissionError(13, "Permission denied", str(Path(run_dir) / "report.html"))

    monkeypatch.setattr(charbench.report, "render_run", denied)
    assert main(["report", str(store.path)]) == 1
    assert capsys.readouterr().err == (f"Error: report: cannot write {store.path / 'report.html'} (Permission denied); "
                                       "pass --out FILE in a writable folder\n")


def test_runs_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "results.csv"
    f.write_text("x")
    assert main(["runs", "--out", str(f)]) == 1
    assert capsys.readouterr().err.startswith(f"Error: --out {f}: is a file, not a results folder")
    assert main(["runs", "--out", str(tmp_path / "typo")]) == 0
    assert capsys.readouterr().err == f"no runs under {tmp_path / 'typo'} (the folder does not exist)\n"
