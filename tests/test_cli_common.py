"""Common study options end to end: a toy study command built like a real one, driven by main()."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from charbench import cli_common as cc
from charbench.cli import SPINE_COMMANDS, main
from charbench.cli_common import common_options, emit_result
from charbench.config import apply_overrides, load_toml, select_preset
from charbench.errors import ConfigError
from charbench.results import RunStore
from charbench.study import Context, RunResult, RunSettings, Study, run_study
from charbench.sweep import expand

EVIL = "<script>alert(1)</script>"


@dataclass
class EchoConfig:
    n: int = 3
    fail_at: int = -1  # a point index that raises (tests the failure paths)


PRESETS = {"quick": EchoConfig(), "big": EchoConfig(n=6)}


class Echo(Study):
    name = "echo"

    def __init__(self, cfg: EchoConfig) -> None:
        self.cfg = cfg

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": list(range(self.cfg.n))})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if params["i"] == self.cfg.fail_at:
            raise RuntimeError("diverged")
        with ctx.window("w") as w:
            pass
        return w.fields()


def _module() -> types.ModuleType:
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def echo(
        preset: str = typer.Option("quick", "--preset"),
        out: cc.OutOpt = None, label: cc.LabelOpt = "", meta: cc.MetaOpt = None, device: cc.DeviceOpt = "auto",
        seed: cc.SeedOpt = 0, config: cc.ConfigOpt = None, resume: cc.ResumeOpt = None,
        continue_on_error: cc.ContinueOpt = False, json_out: cc.JsonOpt = False,
    ) -> None:
        common = common_options(out, label, meta, device, seed, config, resume, continue_on_error, json_out)
        cfg = select_preset(PRESETS, preset)
        if common.config_file is not None:
            cfg = apply_overrides(cfg, load_toml(common.config_file), source=f"--config {common.config_file}")
        emit_result(run_study(Echo(cfg), common, RunSettings(sample_interval_s=0)), json_out)

    mod = types.ModuleType("cb_test_echo")
    mod.app = app  # type: ignore[attr-defined]
    return mod


@pytest.fixture(autouse=True)
def echo_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cb_test_echo", _module())
    monkeypatch.setitem(SPINE_COMMANDS, "echo", ("cb_test_echo", "Toy study."))


def test_run_with_json_summary_label_and_meta(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "--device", "cpu", "--label", EVIL, "--meta", f"note={EVIL}", "--meta", "gpu=none", "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    run = Path(payload["run_dir"])
    assert payload["status"] == "completed" and payload["points_done"] == 3 and payload["points_failed"] == 0
    assert payload["report"] == str(run / "report.html") and payload["summary"] == {}
    assert run.parent == charbench_home / "echo" and run.name.endswith("-script-alert-1-script")
    meta = json.loads((run / "run.json").read_text())
    assert meta["label"] == EVIL and meta["meta"] == {"note": EVIL, "gpu": "none"}
    html = (run / "report.html").read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_human_summary_on_stderr(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "--device", "cpu", "--out", str(charbench_home / "x")]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    run = next((charbench_home / "x" / "echo").iterdir())
    assert f"completed: 3 point(s), 0 failed -> {run}\n" in captured.err and f"report: {run / 'report.html'}\n" in captured.err


def test_preset_and_config_file(charbench_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("n = 2\n")
    assert main(["echo", "--device", "cpu", "--preset", "big", "--config", str(toml), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points_done"] == 2
    toml.write_text("m = 2\n")
    assert main(["echo", "--device", "cpu", "--config", str(toml)]) == 1
    assert capsys.readouterr().err == f"Error: --config {toml}: unknown key 'm'; valid: n, fail_at\n"
    toml.write_text('n = "two"\n')
    assert main(["echo", "--device", "cpu", "--config", str(toml)]) == 1
    assert capsys.readouterr().err == f"Error: --config {toml}: n = 'two' has the wrong type; expected int\n"
    assert main(["echo", "--preset", "huge"]) == 1
    assert capsys.readouterr().err == "Error: --preset: unknown preset 'huge'; valid: quick, big\n"


def test_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "--meta", "novalue"]) == 1
    assert capsys.readouterr().err == "Error: --meta: expected KEY=VALUE, got 'novalue'; e.g. --meta driver=550.54\n"
    assert main(["echo", "--config", str(tmp_path / "none.toml")]) == 1
    assert capsys.readouterr().err == f"Error: --config: file not found: {tmp_path / 'none.toml'}\n"
    assert main(["echo", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: --resume: {tmp_path} is not a charbench run folder (no run.json); pass a folder under ")
    assert main(["echo", "--device", "tpu"]) == 1
    assert capsys.readouterr().err == "Error: --device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N\n"
    assert main(["echo", "--seed", "x"]) == 2
    assert "Invalid value for '--seed'" in capsys.readouterr().err


def test_failure_then_resume_through_the_cli(charbench_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "fail.toml"
    toml.write_text("fail_at = 1\n")
    assert main(["echo", "--device", "cpu", "--config", str(toml)]) == 1
    run = next((charbench_home / "echo").iterdir())
    err = capsys.readouterr().err
    assert err.endswith(
        f"Error: point i=1 failed (RuntimeError: diverged); completed points are kept in {run}. "
        f"Rerun with --continue-on-error to go on past failures, or --resume {run} after fixing it\n"
    )
    assert "Traceback" not in err
    # resuming with a different config is refused; with the same one (and --continue-on-error) it goes on
    assert main(["echo", "--device", "cpu", "--resume", str(run)]) == 1
    assert "the run was made with another echo config (differs in: fail_at)" in capsys.readouterr().err
    assert main(["echo", "--device", "cpu", "--config", str(toml), "--resume", str(run), "--continue-on-error", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["run_dir"] == str(run) and payload["points_done"] == 2 and payload["points_failed"] == 1
    assert RunStore.open(run).completed_keys() == {"i=0", "i=2"}


def test_emit_result_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = RunResult(tmp_path, "completed", 2, 1, {"fit_r2": 0.99}, None)
    emit_result(res, json_out=True)
    assert json.loads(capsys.readouterr().out) == {"run_dir": str(tmp_path), "status": "completed", "points_done": 2, "points_failed": 1, "report": None, "summary": {"fit_r2": 0.99}}
    emit_result(res, json_out=False)
    assert capsys.readouterr().err == f"completed: 2 point(s), 1 failed -> {tmp_path}\n"


def test_common_options_defaults(charbench_home: Path) -> None:
    c = common_options(None, "", None, "auto", 0, None, None, False, False)
    assert c.out == charbench_home and c.meta == {} and c.resume is None
    with pytest.raises(ConfigError):
        common_options(None, "", ["x"], "auto", 0, None, None, False, False)
