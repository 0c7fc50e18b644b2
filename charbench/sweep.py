"""Sweep points: expand list-valued knobs, order them, name them.

::

    pts = expand({"dtype": ["fp16", "bf16"], "p": [0.0, 0.5]})          # 4 points, cartesian
    pts = expand({"rate": [1, 2], "conc": [4, 8]}, mode="zip")            # 2 points
    pts = order_points(pts, shuffle=True, seed=0)                         # decorrelate thermal drift
    key = point_key(pts[0])                                               # "dtype=fp16,p=0.0"
"""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any, Literal

from charbench.errors import ConfigError

_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")


def expand(knobs: dict[str, Any], mode: Literal["cartesian", "zip"] = "cartesian") -> list[dict[str, Any]]:
    """Expand knobs whose values are lists into points; scalars are held fixed.

    Args:
        knobs: knob name -> value or list of values.
        mode: ``cartesian`` (every combination) or ``zip`` (i-th values together).

    Raises:
        ConfigError: an empty list, or zipped lists of different lengths.
    """
    listed = {k: list(v) for k, v in knobs.items() if isinstance(v, (list, tuple))}
    fixed = {k: v for k, v in knobs.items() if k not in listed}
    for k, v in listed.items():
        if not v:
            raise ConfigError(f"--{k.replace('_', '-')}: empty list of values; give at least one value")
    if not listed:
        return [dict(knobs)]
    names = list(listed)
    if mode == "zip":
        lengths = {k: len(v) for k, v in listed.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"zipped knobs need lists of one length; got {lengths}")
        combos = list(zip(*listed.values()))
    elif mode == "cartesian":
        combos = list(itertools.product(*listed.values()))
    else:
        raise ConfigError(f"sweep mode {mode!r}; valid: cartesian, zip")
    return [{**fixed, **dict(zip(names, c))} for c in combos]


def order_points(points: list[dict[str, Any]], shuffle: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Return the points in run order; shuffled deterministically by ``seed`` if asked."""
    pts = list(points)
    if shuffle:
        random.Random(seed).shuffle(pts)
    return pts


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return f"{v:.1f}"
        return repr(v)
    return str(v)


def point_key(params: dict[str, Any]) -> str:
    """Stable, file-name-safe id of a point: ``k1=v1,k2=v2`` over sorted knob names."""
    text = ",".join(f"{k}={_fmt(params[k])}" for k in sorted(params))
    return _SAFE.sub("_", text)
