"""The end-of-run summary table: varying knobs, declared metrics, null (not 0) when unmeasured."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
from pathlib import Path

from charbench.record import Record
from charbench.run_summary import print_summary
from charbench.sweep import expand

_spec = importlib.util.spec_from_file_location("charbench_test_fakeruns", Path(__file__).parent / "browser" / "fakeruns.py")
fakeruns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakeruns)  # type: ignore[union-attr]


def test_plain_summary_lists_varying_knobs_and_declared_metrics(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    pts = expand({"request_rate_rps": [1.0, 2.0], "model": ["tiny"]})

    def measure(p):
        return Record({"p99_ttft_ms": 10.0 * p["request_rate_rps"], "output_throughput_tok_s": 5.0}).null("energy_per_output_token_j", "no meter")

    run = fakeruns.make_run(tmp_path, "serve-sweep", pts, measure, now=dt.datetime(2026, 1, 1, 12))
    out = io.StringIO()
    print_summary(run, out)
    assert out.getvalue().splitlines() == [
        "serve-sweep: 2 point(s)",
        "request_rate_rps  output_throughput_tok_s  p99_ttft_ms",
        "----------------  -----------------------  -----------",
        "1                 5                        10",
        "2                 5                        20",
    ]
