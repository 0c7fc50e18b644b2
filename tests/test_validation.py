"""One validation mechanism for numbers (issue 16 item 7): declared ranges, NaN/inf refused, options named.

Every case runs the real command through ``charbench.cli.main`` (exit 1, the exact ``Error:``
line, no traceback) and checks that no run folder was left behind.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from charbench.cli import main
from charbench.config import MAX_WAIT_S, Range, apply_overrides, check, check_value, check_writable_file, validate_fields
from charbench.errors import ConfigError

# -- the mechanism -----------------------------------------------------------------------


@dataclass
class Knobs:
    duration_s: float = field(default=5.0, metadata=check("--duration", gt=0, le=MAX_WAIT_S))
    rates: list[float] = field(default_factory=lambda: [1.0], metadata=check("--rate", gt=0, allow_inf=True))
    repeats: int = field(default=1, metadata=check("--repeats", ge=1))
    scale: float = 1.0  # no declaration: still finite
    limit_w: float | None = field(default=None, metadata=check(gt=0))  # no option: named by the field


def test_range_describes_itself() -> None:
    assert Range(gt=0, le=86400).describe() == "a finite number > 0 and <= 86400"
    assert Range(gt=0, allow_inf=True).describe() == "a number > 0 or inf"
    assert Range(ge=1).describe(integer=True) == "an integer >= 1"
    assert Range().describe() == "a finite number"
    assert Range(gt=0, lt=0.5).describe() == "a finite number > 0 and < 0.5"


@pytest.mark.parametrize(
    ("rule", "value", "ok"),
    [
        (Range(), math.nan, False), (Range(), math.inf, False), (Range(), -math.inf, False), (Range(), -3.5, True),
        (Range(gt=0, allow_inf=True), math.inf, True), (Range(gt=0, allow_inf=True), -math.inf, False),
        (Range(gt=0, allow_inf=True), math.nan, False), (Range(gt=0, allow_inf=True), 0.0, False),
        (Range(gt=0), 1e-300, True), (Range(ge=0), 0, True), (Range(le=1), 1.0, True), (Range(lt=1), 1.0, False),
        (Range(), True, False), (Range(), "1", False),
    ],
)
def test_range_accepts(rule: Range, value: Any, ok: bool) -> None:
    assert rule.accepts(value) is ok


def test_check_value_messages() -> None:
    with pytest.raises(ConfigError, match=r"^--kv-cache-gb must be a finite number > 0 \(got inf\)$"):
        check_value(math.inf, Range(gt=0), "--kv-cache-gb")
    with pytest.raises(ConfigError, match=r"^--tp: every value must be an integer >= 1 \(got 0\)$"):
        check_value([1, 0], Range(ge=1), "--tp", integer=True)
    check_value(None, Range(gt=0), "--kv-cache-gb")  # unset passes


def test_validate_fields_names_options_or_fields() -> None:
    validate_fields(Knobs())
    with pytest.raises(ConfigError, match=r"^--duration must be a finite number > 0 and <= 86400 \(got nan\)$"):
        validate_fields(Knobs(duration_s=math.nan))
    with pytest.raises(ConfigError, match=r"^--rate: every value must be a number > 0 or inf \(got -inf\)$"):
        validate_fields(Knobs(rates=[math.inf, -math.inf]))
    with pytest.raises(ConfigError, match=r"^--repeats must be an integer >= 1 \(got 0\)$"):
        validate_fields(Knobs(repeats=0))
    with pytest.raises(ConfigError, match=r"^scale must be a finite number \(got inf\)$"):
        validate_fields(Knobs(scale=math.inf))
    with pytest.raises(ConfigError, match=r"^limit_w must be a finite number > 0 \(got 0.0\)$"):
        validate_fields(Knobs(limit_w=0.0))
    validate_fields(Knobs(scale=math.inf), names=["duration_s"])  # only the named fields


def test_apply_overrides_checks_ranges_from_a_file_and_from_options() -> None:
    with pytest.raises(ConfigError, match=r"^--config a.toml: duration_s must be a finite number > 0 and <= 86400 \(got inf\)$"):
        apply_overrides(Knobs(), {"duration_s": math.inf}, source="--config a.toml")
    with pytest.raises(ConfigError, match=r"^--duration must be a finite number > 0 and <= 86400 \(got 1e\+300\)$"):
        apply_overrides(Knobs(), {"duration_s": 1e300}, source=None)
    with pytest.raises(ConfigError, match=r"^--repeats: 'x' has the wrong type; expected int$"):
        apply_overrides(Knobs(), {"repeats": "x"}, source=None)
    assert apply_overrides(Knobs(), {"rates": [math.inf, 2]}, source=None).rates == [math.inf, 2]


def test_run_settings_refuse_waits_that_cannot_end() -> None:
    from charbench.study import RunSettings

    with pytest.raises(ConfigError, match=r"^--cooldown must be a finite number >= 0 and <= 86400 \(got inf\)$"):
        RunSettings(cooldown_s=math.inf)
    with pytest.raises(ConfigError, match=r"^--idle-baseline must be a finite number >= 0 and <= 86400 \(got nan\)$"):
        RunSettings(idle_baseline_s=math.nan)
    assert RunSettings(idle_baseline_s=30.0, cooldown_s=2.0).cooldown_s == 2.0


# -- writable output files -----------------------------------------------------------------


def test_check_writable_file_creates_a_probe(tmp_path: Path) -> None:
    a_file = tmp_path / "f.txt"
    a_file.write_text("keep")
    with pytest.raises(ConfigError, match=rf"^--export-profile {a_file}/p.json: cannot write there \({a_file} is not a writable folder\); pick another path$"):
        check_writable_file(a_file / "p.json", "--export-profile")
    with pytest.raises(ConfigError, match=rf"^--export-profile {tmp_path}: is a folder; give a file path \(a name inside it\)$"):
        check_writable_file(tmp_path, "--export-profile")
    check_writable_file(tmp_path / "new" / "p.json", "--export-profile")
    check_writable_file(a_file, "--export-profile")
    assert a_file.read_text() == "keep"  # an existing file is opened for appending, not truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # the probe is gone; no folder made


def test_check_writable_file_refuses_what_root_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root ignores permission bits; a read-only mount answers EROFS to the probe
    import tempfile

    def read_only(*_a: Any, **_k: Any) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(ConfigError, match=rf"^--out {tmp_path}/x.html: cannot write there \({tmp_path} is not a writable folder: Read-only file system\); pick another path$"):
        check_writable_file(tmp_path / "x.html", "--out")


# -- the CLI cases ---------------------------------------------------------------------------


def _refused(args: list[str], message: str, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == message, err
    assert "Traceback" not in err
    assert not home.exists() or not any(home.iterdir()), "a run folder was left behind"


GEMM = ["gemm-power", "--device", "cpu"]
SERVE = ["serve-sweep", "--device", "cpu"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*GEMM, "--duration", "inf"], "Error: --duration must be a finite number > 0 and <= 86400 (got inf)"),
        ([*GEMM, "--duration", "nan"], "Error: --duration must be a finite number > 0 and <= 86400 (got nan)"),
        ([*GEMM, "--cooldown", "inf"], "Error: --cooldown must be a finite number >= 0 and <= 86400 (got inf)"),
        ([*GEMM, "--idle-baseline", "inf"], "Error: --idle-baseline must be a finite number >= 0 and <= 86400 (got inf)"),
        ([*GEMM, "--idle-baseline", "nan"], "Error: --idle-baseline must be a finite number >= 0 and <= 86400 (got nan)"),
        ([*SERVE, "--cooldown", "inf"], "Error: --cooldown must be a finite number >= 0 and <= 86400 (got inf)"),
        ([*SERVE, "--idle-baseline", "inf"], "Error: --idle-baseline must be a finite number >= 0 and <= 86400 (got inf)"),
        ([*SERVE, "--idle-baseline", "nan"], "Error: --idle-baseline must be a finite number >= 0 and <= 86400 (got nan)"),
        ([*SERVE, "--ramp-up-s", "nan"], "Error: --ramp-up-s must be a finite number >= 0 and <= 86400 (got nan)"),
        ([*SERVE, "--request-rate", "4,nan"], "Error: --request-rate: every value must be a number > 0 or inf (got nan)"),
        ([*SERVE, "--max-duration", "inf"], "Error: --max-duration must be a finite number > 0 and <= 86400 (got inf)"),
        ([*SERVE, "--kv-cache-gb", "inf"], "Error: --kv-cache-gb must be a finite number > 0 (got inf)"),
        ([*SERVE, "--request-rate", "1e-9"],
         "Error: --request-rate 1e-09: sending 48 requests per point at these rates takes about 9.6e+10 s (1.11e+06 days) "
         "over 2 point(s), more than 7 days; raise --request-rate, lower --num-requests, or cap each point with --max-duration SECONDS"),
    ],
)
def test_bad_numbers_are_refused_before_the_run(args: list[str], message: str, charbench_home: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _refused(args, message, charbench_home, capsys)


def test_duration_inf_from_a_config_file(tmp_path: Path, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "gemm.toml"
    toml.write_text("duration_s = inf\n")
    _refused([*GEMM, "--config", str(toml)], f"Error: --config {toml}: duration_s must be a finite number > 0 and <= 86400 (got inf)",
             charbench_home, capsys)
    toml.write_text("ramp_up_s = nan\n")
    _refused([*SERVE, "--config", str(toml)], f"Error: --config {toml}: ramp_up_s must be a finite number >= 0 and <= 86400 (got nan)",
             charbench_home, capsys)


def test_export_profile_that_cannot_be_written(tmp_path: Path, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "f.txt"
    a_file.write_text("")
    _refused([*SERVE, "--export-profile", str(a_file / "p.json")],
             f"Error: --export-profile {a_file}/p.json: cannot write there ({a_file} is not a writable folder); pick another path",
             charbench_home, capsys)
    _refused([*SERVE, "--export-profile", str(tmp_path)],
             f"Error: --export-profile {tmp_path}: is a folder; give a file path (a name inside it)", charbench_home, capsys)


def _ram(monkeypatch: pytest.MonkeyPatch, total_gib: float) -> None:
    import charbench.device as device

    monkeypatch.setattr(device, "memory_bytes", lambda dev: (int(total_gib * 2**29), int(total_gib * 2**30)))


def test_kv_cache_larger_than_ram(monkeypatch: pytest.MonkeyPatch, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ram(monkeypatch, 16.0)
    started: list[Any] = []
    # the server module is never reached: a stand-in records a start if the check were missing
    fake_server = types.SimpleNamespace(LOOPBACK_HOSTS=("127.0.0.1",), run_server=lambda *a, **k: started.append(a))
    monkeypatch.setitem(sys.modules, "charbench.engine.server", fake_server)
    msg = ("Error: --kv-cache-gb 1e+09: more than the 16.0 GiB of RAM on this machine (cpu); "
           "give a smaller --kv-cache-gb, or omit it for the engine's default")
    _refused(["serve", "--device", "cpu", "--kv-cache-gb", "1e9"], msg, charbench_home, capsys)
    _refused([*SERVE, "--kv-cache-gb", "1e9"], msg, charbench_home, capsys)
    assert not started


def test_memory_bytes_reads_this_machine() -> None:
    from charbench.device import memory_bytes

    mem = memory_bytes("cpu")
    if mem is None:  # no /proc/meminfo (not Linux)
        return
    free, total = mem
    assert 0 < free <= total
