"""The runner's log lines: ``--json`` silences progress and notes, never errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from charbench.config import CommonOptions
from charbench.study import Context, RunSettings, Study, run_study
from charbench.sweep import expand

SETTINGS = RunSettings(idle_baseline_s=0.01, sample_interval_s=0)


class Noisy(Study):
    """Logs a note from every point; point 1 fails."""

    name = "noisy"

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": [0, 1]})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        ctx.log(f"note from point {params['i']}")
        if params["i"] == 1:
            raise ValueError("bad input")
        with ctx.window("w") as w:
            pass
        return w.fields()


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[charbench]") and "elapsed" not in line]


@pytest.mark.parametrize("json_out", [True, False])
def test_json_runs_print_errors_only(tmp_path: Path, capsys: pytest.CaptureFixture[str], json_out: bool) -> None:
    common = CommonOptions(out=tmp_path, label="t", device="cpu", json=json_out, continue_on_error=True)
    res = run_study(Noisy(), common, SETTINGS)
    assert (res.points_done, res.points_failed) == (1, 1)
    lines = _lines(capsys.readouterr().err)
    failure = "[charbench] point i=1 failed: ValueError: bad input"
    if json_out:
        assert lines == [failure]
    else:
        assert "[charbench] measuring idle baseline for 0.01 s" in lines
        assert "[charbench] note from point 0" in lines and "[charbench] note from point 1" in lines
        assert lines[-1] == failure
