"""Tests of ``charbench serve``: option validation, option -> EngineConfig, and a real
server process answering /health then exiting cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from charbench.commands import serve as serve_cmd
from charbench.engine.api import EngineConfig
from charbench.errors import ConfigError, DeviceError

runner = CliRunner()


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace run_server so the command returns after building the config."""
    calls: dict[str, Any] = {}

    def fake_run_server(cfg: EngineConfig, host: str, port: int, log_level: str, **kw: Any) -> None:
        calls.update(cfg=cfg, host=host, port=port, log_level=log_level, **kw)

    import charbench.engine.server as server

    monkeypatch.setattr(server, "run_server", fake_run_server)
    return calls


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--dtype", "fp64"], "--dtype"),
        (["--device", "gpu"], "--device"),
        (["--max-num-seqs", "0"], "--max-num-seqs"),
        (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens"),
        (["--tp", "0"], "--tp"),
        (["--max-queue", "0"], "--max-queue"),
        (["--kv-cache-gb", "0"], "--kv-cache-gb"),
        (["--attention-backend", "flash"], "--attention-backend"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_options_raise_config_error(captured: dict[str, Any], args: list[str], flag: str) -> None:
    result = runner.invoke(serve_cmd.app, ["--device", "cpu", *args] if "--device" not in args else args)
    # ConfigError for option values; DeviceError (also a CharbenchError: "Error: ...", exit 1) for --device
    assert isinstance(result.exception, (ConfigError, DeviceError)), result.output
    assert str(result.exception).startswith(flag)
    assert not captured  # the server never started


def test_options_map_to_engine_config(captured: dict[str, Any]) -> None:
    result = runner.invoke(
        serve_cmd.app,
        [
            "--model", "small", "--port", "8123", "--dtype", "bf16", "--device", "cpu",
            "--max-num-seqs", "16", "--max-num-batched-tokens", "256", "--kv-cache-gb", "0.5",
            "--tp", "1", "--attention-backend", "triton", "--max-queue", "7", "--log-level", "WARNING",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = captured["cfg"]
    assert cfg == EngineConfig(
        model="small", dtype="bf16", device="cpu", max_num_seqs=16, max_num_batched_tokens=256,
        kv_cache_gb=0.5, tp=1, attention_backend="triton", max_queue=7,
    )
    assert (captured["host"], captured["port"], captured["log_level"]) == ("127.0.0.1", 8123, "warning")
    assert "Warning" not in result.output


def test_non_loopback_host_warns(captured: dict[str, Any]) -> None:
    result = runner.invoke(serve_cmd.app, ["--host", "0.0.0.0", "--device", "cpu"])
    assert result.exit_code == 0
    assert captured["host"] == "0.0.0.0"
    assert "Warning: binding to 0.0.0.0" in result.output


def test_busy_port_fails_before_loading_the_model() -> None:
    from charbench.engine.server import bind_socket, run_server

    with bind_socket("127.0.0.1", 0) as busy:
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port: cannot listen on 127.0.0.1:{port}"):
            # the model name would fail to load; the port check must come first
            run_server(EngineConfig(model="no-such-model"), host="127.0.0.1", port=port)


def test_root_cli_reports_config_error(captured: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("charbench.cli")
    assert cli.main(["serve", "--port", "99999"]) == 1
    assert "Error: --port: must be in 0-65535" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_subprocess_health_then_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    exe = shutil.which("charbench", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "charbench.commands.serve"]
    cmd += ["serve"] if exe else []
    cmd += ["--model", "tiny", "--device", "cpu", "--port", str(port), "--log-level", "warning"]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code
                break
            except httpx.TransportError:
                time.sleep(0.2)
        log.seek(0)
        assert status == 200, log.read()
        log.seek(0)
        from charbench.engine.labels import RANDOM_WEIGHTS_WARNING

        assert f"charbench serve: {RANDOM_WEIGHTS_WARNING}" in log.read()  # the start-up log says so
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"prompt": "hi", "max_tokens": 3, "ignore_eos": True},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_limit_options_reach_run_server(captured: dict[str, Any]) -> None:
    result = runner.invoke(serve_cmd.app, ["--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (captured["max_body_mb"], captured["header_timeout_s"]) == (16.0, 10.0)
    result = runner.invoke(serve_cmd.app, ["--device", "cpu", "--max-body-mb", "2.5", "--header-timeout-s", "3"])
    assert result.exit_code == 0, result.output
    assert (captured["max_body_mb"], captured["header_timeout_s"]) == (2.5, 3.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-body-mb", "0"], "--max-body-mb: must be a finite number > 0 (MiB), got 0.0; the default is 16"),
        (["--max-body-mb", "inf"], "--max-body-mb: must be a finite number > 0 (MiB), got inf; the default is 16"),
        (["--header-timeout-s", "-1"], "--header-timeout-s: must be a finite number > 0 (seconds), got -1.0; the default is 10"),
    ],
)
def test_bad_limit_options(captured: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    cli = pytest.importorskip("charbench.cli")
    assert cli.main(["serve", "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err
    assert f"Error: {message}\n" in err and "Traceback" not in err
    assert not captured  # refused before the model loads
