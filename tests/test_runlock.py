"""Run folders under concurrent use: the run lock, SIGTERM as an interrupt, stale runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from charbench.config import CommonOptions
from charbench.errors import RunStoreError
from charbench.results import RunStore
from charbench.runlock import LOCK_FILE, RunLock, pid_alive, run_status
from charbench.signals import Terminated, sigterm_as_interrupt
from charbench.study import Context, RunSettings, Study, run_study
from charbench.sweep import expand

SETTINGS = RunSettings(sample_interval_s=0)


@dataclass
class TinyConfig:
    n: int = 4


class Tiny(Study):
    """Points that do nothing; one can send this process SIGTERM."""

    name = "tiny"

    def __init__(self, cfg: TinyConfig | None = None, sigterm_on: int | None = None) -> None:
        self.cfg = cfg or TinyConfig()
        self.sigterm_on = sigterm_on
        self.calls: list[int] = []

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": list(range(self.cfg.n))})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        self.calls.append(params["i"])
        if params["i"] == self.sigterm_on:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this returns
        return {"value_s": float(params["i"])}


def _common(home: Path, **kw: Any) -> CommonOptions:
    return CommonOptions(out=home, device="cpu", json=True, **kw)


def _meta(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text())


def _holder_message(run: Path, pid: int) -> str:
    started = json.loads((run / LOCK_FILE).read_text())["started"]
    return (
        f"{run} is in use by pid {pid} on host {socket.gethostname()} (started {started}); "
        f"wait for it to finish or stop that process, then --resume {run} again"
    )


def test_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunStoreError) as ei:
            RunLock(tmp_path).acquire()  # another open file: flock refuses it even in this process
        assert str(ei.value) == _holder_message(tmp_path, os.getpid())
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no holder left behind
    with RunLock(tmp_path):
        pass


def test_run_study_holds_the_lock_and_a_second_resume_is_refused(charbench_home: Path) -> None:
    res = run_study(Tiny(), _common(charbench_home), SETTINGS)
    run = res.run_dir
    assert (run / LOCK_FILE).read_text() == ""  # released at the end of the run
    status_before = _meta(run)
    with RunLock(run):  # as if another --resume were running it
        again = Tiny()
        with pytest.raises(RunStoreError) as ei:
            run_study(again, _common(charbench_home, resume=run), SETTINGS)
        assert str(ei.value) == _holder_message(run, os.getpid())
        assert again.calls == [] and _meta(run) == status_before  # run.json untouched by the refused process
    assert run_study(Tiny(), _common(charbench_home, resume=run), SETTINGS).status == "completed"


def test_lock_held_by_another_process_and_released_when_it_dies(charbench_home: Path) -> None:
    run = run_study(Tiny(), _common(charbench_home), SETTINGS).run_dir
    code = textwrap.dedent(f"""
        import sys, time
        from charbench.runlock import RunLock
        RunLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(RunStoreError) as ei:
            run_study(Tiny(), _common(charbench_home, resume=run), SETTINGS)
        assert str(ei.value) == _holder_message(run, child.pid)
    finally:
        child.kill()  # SIGKILL: no cleanup runs, yet the kernel drops the flock
        child.wait(timeout=30)
    assert run_study(Tiny(), _common(charbench_home, resume=run), SETTINGS).status == "completed"


def test_sigterm_in_a_point_marks_the_run_interrupted_and_keeps_points(charbench_home: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    study = Tiny(sigterm_on=2)
    with pytest.raises(Terminated):
        run_study(study, _common(charbench_home), SETTINGS)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    run = next((charbench_home / "tiny").iterdir())
    meta = _meta(run)
    assert meta["status"] == "interrupted" and meta["points_done"] == 2 and meta["finished"]
    assert RunStore.open(run).completed_keys() == {"i=0", "i=1"}
    assert (run / LOCK_FILE).read_text() == ""
    rest = Tiny()
    assert run_study(rest, _common(charbench_home, resume=run), SETTINGS).points_done == 4
    assert rest.calls == [2, 3]


def test_sigterm_to_a_running_charbench_process(tmp_path: Path) -> None:
    """A real process, stopped the way a batch scheduler stops it."""
    code = textwrap.dedent(f"""
        import sys, time
        from charbench.cli import main
        from charbench.config import CommonOptions
        from charbench.study import RunSettings, Study, run_study
        from charbench.sweep import expand

        class Slow(Study):
            name = "slow"
            def points(self):
                return expand({{"i": list(range(50))}})
            def run_point(self, params, ctx):
                if params["i"] == 2:
                    print("two done", flush=True)
                    time.sleep(60)
                return {{"value_s": 0.0}}

        try:
            run_study(Slow(), CommonOptions(out={str(tmp_path)!r}, device="cpu", json=True), RunSettings(sample_interval_s=0))
        except KeyboardInterrupt as exc:
            print(type(exc).__name__, flush=True)
            sys.exit(getattr(exc, "exit_code", 130))
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "two done\n"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 143
    assert child.stdout.read() == "Terminated\n"
    run = next((tmp_path / "slow").iterdir())
    meta = _meta(run)
    # before: Python's default SIGTERM left run.json at "running" forever
    assert meta["status"] == "interrupted" and meta["points_done"] == 2 and meta["pid"] == child.pid
    assert RunStore.open(run).completed_keys() == {"i=0", "i=1"}


def test_main_exits_143_on_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from charbench import cli

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Terminated()

    monkeypatch.setattr(cli.root, "invoke", stop)
    assert cli.main(["runs"]) == 143
    assert capsys.readouterr().err == "Interrupted; completed points are kept (continue with --resume RUN_DIR).\n"


def test_second_sigterm_during_cleanup_is_ignored() -> None:
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # must not cut this finally short
                time.sleep(0.05)


def test_run_status_and_pid_alive(tmp_path: Path) -> None:
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    assert pid_alive(os.getpid()) and not pid_alive(dead)
    assert pid_alive(1)  # init: not ours to signal (PermissionError) when not root, alive either way
    assert run_status({"status": "running", "pid": dead, "host": host}) == "stale"
    assert run_status({"status": "running", "pid": os.getpid(), "host": host}) == "running"
    assert run_status({"status": "running", "pid": dead, "host": host + "-other"}) == "running"
    assert run_status({"status": "running"}) == "running"  # written before pids were recorded
    assert run_status({"status": "interrupted", "pid": dead, "host": host}) == "interrupted"
