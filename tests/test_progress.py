"""Progress: plain log lines when not a TTY or under CI, a rich bar on a terminal."""

from __future__ import annotations

import io
import re

import pytest

from charbench.progress import Progress, in_ci, is_interactive


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO, keys: list[str]) -> Progress:
    with Progress(len(keys), stream=stream) as bar:
        for k in keys:
            bar.describe(k)
            bar.advance()
    return bar


def test_plain_lines_when_not_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out = io.StringIO()
    bar = _run(out, ["dtype=fp16", "dtype=bf16", "dtype=fp32"])
    assert bar.plain and bar.done == 3
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0] == "[charbench] 1/3 started: dtype=fp16"  # an early line: the first point may be long
    for i, (line, key) in enumerate(zip(lines[1:], ["dtype=fp16", "dtype=bf16", "dtype=fp32"]), start=1):
        assert re.fullmatch(rf"\[charbench\] {i}/3 {key} \(elapsed \d+\.\d s, ETA \d+\.\d s\)", line), line


def test_plain_lines_on_a_tty_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    out = _Tty()
    bar = _run(out, ["a", "b"])
    assert bar.plain
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == ["[charbench] 1/2 started: a", "[charbench] 1/2 a", "[charbench] 2/2 b"]


def test_rich_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out = _Tty()
    bar = _run(out, ["a", "point-b"])
    assert not bar.plain
    text = out.getvalue()
    assert "[charbench]" not in text and "point-b" in text and "2/2" in text


def test_disabled_or_empty_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out = io.StringIO()
    with Progress(2, enabled=False, stream=out) as bar:
        bar.advance()
    with Progress(0, stream=out):
        pass
    assert out.getvalue() == ""


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("", False), ("0", False), ("false", False), ("true", True), ("1", True)])
def test_in_ci(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_is_interactive_odd_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    closed = io.StringIO()
    closed.close()
    assert not is_interactive(closed)
    assert not is_interactive(object())
    assert is_interactive(_Tty())
