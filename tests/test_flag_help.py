"""On/off flags show no value type in --help (``--shuffle <bool>`` read as if ``--shuffle true`` worked)."""

from __future__ import annotations

import pytest

from charbench.cli import main


def test_shuffle_help_shows_no_bool_value(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["gemm-power", "--help"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "--shuffle" in ln or "--json" in ln]
    assert len(lines) == 2 and all("<bool>" not in ln for ln in lines)
