"""Sweep points: cartesian/zip expansion, seeded order, stable point keys."""

from __future__ import annotations

import pytest

from charbench.errors import ConfigError
from charbench.sweep import expand, order_points, point_key


def test_cartesian_expansion_keeps_scalars_fixed() -> None:
    pts = expand({"dtype": ["fp16", "bf16"], "p": (0.0, 0.5, 1.0), "n": 64})
    assert len(pts) == 6
    assert pts[0] == {"n": 64, "dtype": "fp16", "p": 0.0}
    assert pts[-1] == {"n": 64, "dtype": "bf16", "p": 1.0}
    assert {(p["dtype"], p["p"]) for p in pts} == {(d, v) for d in ("fp16", "bf16") for v in (0.0, 0.5, 1.0)}


def test_zip_expansion() -> None:
    pts = expand({"rate": [1, 2, 4], "conc": [4, 8, 16], "model": "tiny"}, mode="zip")
    assert pts == [
        {"model": "tiny", "rate": 1, "conc": 4},
        {"model": "tiny", "rate": 2, "conc": 8},
        {"model": "tiny", "rate": 4, "conc": 16},
    ]


def test_no_lists_gives_one_point() -> None:
    assert expand({"a": 1, "b": "x"}) == [{"a": 1, "b": "x"}]


def test_expansion_errors() -> None:
    with pytest.raises(ConfigError) as ei:
        expand({"batch_size": []})
    assert str(ei.value) == "--batch-size: empty list of values; give at least one value"
    with pytest.raises(ConfigError) as ei:
        expand({"a": [1, 2], "b": [1]}, mode="zip")
    assert str(ei.value) == "zipped knobs need lists of one length; got {'a': 2, 'b': 1}"
    with pytest.raises(ConfigError, match="sweep mode 'grid'; valid: cartesian, zip"):
        expand({"a": [1]}, mode="grid")  # type: ignore[arg-type]


def test_seeded_shuffle_is_reproducible_and_a_permutation() -> None:
    pts = expand({"i": list(range(20))})
    a = order_points(pts, shuffle=True, seed=7)
    b = order_points(pts, shuffle=True, seed=7)
    c = order_points(pts, shuffle=True, seed=8)
    assert a == b
    assert a != pts and a != c
    assert sorted(p["i"] for p in a) == list(range(20))
    assert order_points(pts) == pts and order_points(pts) is not pts
    assert pts == expand({"i": list(range(20))})  # the input list is untouched


def test_point_key_is_stable_and_file_safe() -> None:
    assert point_key({"p": 0.5, "dtype": "fp16", "n": 3}) == "dtype=fp16,n=3,p=0.5"
    assert point_key({"dtype": "fp16", "n": 3, "p": 0.5}) == point_key({"p": 0.5, "n": 3, "dtype": "fp16"})
    # 1.0 and 1 are different knob values and keep different keys
    assert point_key({"x": 1.0}) == "x=1.0" and point_key({"x": 1}) == "x=1"
    assert point_key({"x": float("nan")}) == "x=nan"
    assert point_key({"x": 1e-7}) == "x=1e-07"
    key = point_key({"path": "a/b c", "t": "<x>"})
    assert key == "path=a_b_c,t=_x_"
    assert "/" not in point_key({"x": "../../etc"})


def test_point_keys_unique_over_a_sweep() -> None:
    pts = expand({"dtype": ["fp32", "fp16"], "p": [0.0, 0.25, 0.5], "placement": ["row", "col"]})
    assert len({point_key(p) for p in pts}) == len(pts) == 12
