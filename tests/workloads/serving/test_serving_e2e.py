"""End to end on the tiny built-in engine: the CLI in process, and against `charbench serve` in another process."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from charbench.cli import main
from charbench.results import RunStore

pytestmark = pytest.mark.slow

def _run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_cli_quick_on_the_tiny_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = _run_json(["serve-sweep", "--device", "cpu", "--out", str(tmp_path), "--num-requests", "8", "--request-rate", "40,inf",
                         "--max-num-seqs", "4", "--input-len", "16", "--output-len", "8", "--idle-baseline", "0",
                         "--export-profile", str(tmp_path / "profile.json"), "--json"], capsys)
    assert payload["status"] == "completed" and payload["points_done"] == 2
    run = Path(payload["run_dir"])
    from charbench.profiles import load_profile

    prof = load_profile(tmp_path / "profile.json")
    assert sorted(e["request_rate_rps"] for e in prof) == [40.0, math.inf] and payload["summary"]["profile"].endswith("profile.json")
    recs = RunStore.open(run).records()
    for r in recs:
        assert r["completed_count"] == 8 and r["output_len_mismatch_count"] == 0 and r["prompt_tokens_exact"]
        assert r["total_output_tokens"] == 64 and r["total_input_tokens"] == 128  # forced lengths, exact prompts
        assert r["engine_model"] == "tiny" and r["median_server_ttft_ms"] is not None  # engine-side records joined
    # the report's tables hold the records' values: the summary per load, the engine-side timing joined per load
    from report_content import close, report_content

    assert (run / "report.html").is_file()
    content = report_content(run)
    summary = content.table_with_column("median TTFT ms")
    assert close(list(summary["median TTFT ms"]), [r["median_ttft_ms"] for r in recs])
    server = content.table_with_column("server median TTFT ms")
    assert close(list(server["server median TTFT ms"]), [r["median_server_ttft_ms"] for r in recs])
    assert len(content.figures[0].data) == 4 * len(recs)  # a TTFT, TPOT, ITL and E2EL CDF per load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "charbench", "serve", "--model", "tiny", "--device", "cpu", "--port", str(port),
                             "--max-num-seqs", "4", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"charbench serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("charbench serve did not become healthy")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_against_charbench_serve_in_another_process(tmp_path: Path, serve_process: str, capsys: pytest.CaptureFixture[str]) -> None:
    payload = _run_json(["serve-sweep", "--target", serve_process, "--device", "cpu", "--out", str(tmp_path), "--num-requests", "8",
                         "--request-rate", "40,inf", "--max-num-seqs", "4", "--input-len", "16", "--output-len", "8",
                         "--idle-baseline", "0", "--json"], capsys)
    assert payload["status"] == "completed" and payload["points_done"] == 2
    recs = RunStore.open(Path(payload["run_dir"])).records()
    for r in recs:
        assert r["target_kind"] == "url" and r["served_model"] == "tiny" and r["completed_count"] == 8
        assert r["total_output_tokens"] == 64 and r["output_len_mismatch_count"] == 0
        assert r["total_input_tokens"] == 128 and r["prompt_format"] == "ids"  # exact prompts with the preset's tokenizer
        # the server's own records were joined; the client's TTFT includes HTTP, so it is not smaller
        assert r["median_server_ttft_ms"] is not None and r["median_ttft_client_minus_server_ms"] > -1.0
        assert r["median_itl_client_minus_server_ms"] is not None
    burst = next(r for r in recs if r["request_rate_rps"] == math.inf)
    assert burst["steady_time_s"] is not None  # --max-num-seqs 4 describes the server: steady window found
