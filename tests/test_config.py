"""Config: presets, TOML overrides (unknown key / wrong type), --meta, list options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from charbench.config import (
    CommonOptions,
    apply_overrides,
    default_out_dir,
    load_toml,
    parse_csv_list,
    parse_meta,
    select_preset,
    to_jsonable,
)
from charbench.errors import CharbenchError, ConfigError


@dataclass
class Cfg:
    n: int = 4
    scale: float = 1.0
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    sizes: tuple[int, ...] = (128,)
    mode: Literal["fast", "full"] = "fast"
    limit_w: Optional[float] = None
    cap: int | None = None
    path: Path | None = None
    verbose: bool = False


PRESETS = {"quick": Cfg(), "paper": Cfg(n=64, dtypes=["fp16", "bf16"])}


def test_select_preset_returns_independent_copy() -> None:
    cfg = select_preset(PRESETS, "paper")
    assert cfg == PRESETS["paper"] and cfg is not PRESETS["paper"]
    cfg.dtypes.append("fp8")  # mutating the copy must not change the preset table
    assert PRESETS["paper"].dtypes == ["fp16", "bf16"]


def test_select_preset_unknown_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as ei:
        select_preset(PRESETS, "huge", option="--preset")
    assert str(ei.value) == "--preset: unknown preset 'huge'; valid: quick, paper"


def test_apply_overrides_types_and_conversions() -> None:
    cfg = apply_overrides(
        Cfg(),
        {"n": 8, "scale": 3, "dtypes": ["fp16"], "sizes": [1, 2], "mode": "full", "limit-w": 250, "cap": None, "path": "x/y", "verbose": True},
        source="--config a.toml",
    )
    assert cfg.n == 8
    assert cfg.scale == 3.0 and isinstance(cfg.scale, float)
    assert cfg.limit_w == 250.0 and isinstance(cfg.limit_w, float)
    assert cfg.dtypes == ["fp16"]
    assert cfg.sizes == (1, 2) and isinstance(cfg.sizes, tuple)
    assert cfg.mode == "full"
    assert cfg.path == Path("x/y")
    assert cfg.verbose is True
    assert Cfg().n == 4  # the input is not mutated


def test_apply_overrides_unknown_key_message() -> None:
    with pytest.raises(ConfigError) as ei:
        apply_overrides(Cfg(), {"nn": 1}, source="--config a.toml")
    assert str(ei.value) == "--config a.toml: unknown key 'nn'; valid: n, scale, dtypes, sizes, mode, limit_w, cap, path, verbose"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("n", "8", "--config a.toml: n = '8' has the wrong type; expected int"),
        ("n", 1.5, "--config a.toml: n = 1.5 has the wrong type; expected int"),
        ("n", True, "--config a.toml: n = True has the wrong type; expected int"),
        ("scale", "x", "--config a.toml: scale = 'x' has the wrong type; expected float"),
        ("dtypes", "fp16", "--config a.toml: dtypes = 'fp16' has the wrong type; expected list[str]"),
        ("dtypes", [1], "--config a.toml: dtypes = [1] has the wrong type; expected list[str]"),
        ("mode", "slow", "--config a.toml: mode = 'slow' has the wrong type; expected Literal['fast', 'full']"),
        ("limit_w", "x", "--config a.toml: limit_w = 'x' has the wrong type; expected float | NoneType"),
        ("cap", 1.5, "--config a.toml: cap = 1.5 has the wrong type; expected int | NoneType"),
        ("verbose", 1, "--config a.toml: verbose = 1 has the wrong type; expected bool"),
    ],
)
def test_apply_overrides_wrong_type_messages(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        apply_overrides(Cfg(), {key: value}, source="--config a.toml")
    assert str(ei.value) == expected


def test_load_toml_roundtrip_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('n = 16\ndtypes = ["fp16", "bf16"]\nmode = "full"\n')
    cfg = apply_overrides(select_preset(PRESETS, "quick"), load_toml(good), source=f"--config {good}")
    assert (cfg.n, cfg.dtypes, cfg.mode) == (16, ["fp16", "bf16"], "full")

    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        load_toml(missing)
    assert str(ei.value) == f"--config: file not found: {missing}"

    bad = tmp_path / "bad.toml"
    bad.write_text("n = = 3\n")
    with pytest.raises(ConfigError, match=r"^--config .*bad\.toml: not valid TOML \("):
        load_toml(bad)

    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00n = 1")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_toml(binary)


def test_parse_meta() -> None:
    assert parse_meta(None) == {}
    assert parse_meta(["driver=550.54", " gpu =a100", "note=a=b", "empty="]) == {"driver": "550.54", "gpu": "a100", "note": "a=b", "empty": ""}
    with pytest.raises(ConfigError) as ei:
        parse_meta(["novalue"])
    assert str(ei.value) == "--meta: expected KEY=VALUE, got 'novalue'; e.g. --meta driver=550.54"
    with pytest.raises(ConfigError, match="expected KEY=VALUE, got '=x'"):
        parse_meta(["=x"])


def test_parse_csv_list() -> None:
    valid = ["fp32", "fp16", "bf16"]
    assert parse_csv_list("fp16, bf16", "--dtypes", valid) == ["fp16", "bf16"]
    assert parse_csv_list("all", "--dtypes", valid) == valid
    with pytest.raises(ConfigError) as ei:
        parse_csv_list("fp16,fp64", "--dtypes", valid)
    assert str(ei.value) == "--dtypes: unknown name 'fp64'; valid: fp32, fp16, bf16 or all"
    with pytest.raises(ConfigError) as ei:
        parse_csv_list("a,b", "--dtypes", valid, allow_all=False)
    assert str(ei.value) == "--dtypes: unknown names 'a', 'b'; valid: fp32, fp16, bf16"
    with pytest.raises(ConfigError, match="--dtypes: empty list"):
        parse_csv_list(" , ", "--dtypes", valid)


def test_default_out_dir_follows_charbench_home(charbench_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_out_dir() == charbench_home
    assert CommonOptions().out == charbench_home
    monkeypatch.delenv("CHARBENCH_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_out_dir() == tmp_path / "charbench-runs"


def test_to_jsonable() -> None:
    out = to_jsonable(CommonOptions(out=Path("/r"), meta={"a": "b"}, resume=None))
    assert out["out"] == "/r" and out["meta"] == {"a": "b"} and out["resume"] is None
    assert to_jsonable({1: (Path("p"), [1])}) == {"1": ["p", [1]]}


def test_config_error_is_a_charbench_error_exit_1() -> None:
    assert issubclass(ConfigError, CharbenchError) and ConfigError("x").exit_code == 1
