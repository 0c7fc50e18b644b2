"""What the columns of a run's records are: knobs, metrics and which way a metric is better.

::

    parse_point_key("dtype=fp16,size=2048")        # {"dtype": "fp16", "size": "2048"}
    metric_direction("p99_ttft_ms")                # "lower" (a time)
    metric_columns(rows, exclude=set(knob_names(rows)))

Metrics are the numeric columns whose name ends with a unit suffix (:data:`UNIT_SUFFIXES`,
optionally followed by a statistic such as ``_p99`` or ``_mean``) and that are not knobs.
"""

from __future__ import annotations

import math
import re
from typing import Any

from charbench.record import BOOKKEEPING_COLUMNS, MACHINE_COLUMNS

LOWER = "lower"
HIGHER = "higher"
NEUTRAL = "neutral"

#: unit suffix -> default direction ("which way is better"). The longest matching suffix wins.
#: Every unit of the naming rule (:data:`charbench.record.UNITS`) is here (tests/test_record.py checks).
UNIT_SUFFIXES: dict[str, str] = {
    "_j": LOWER, "_kj": LOWER, "_mj": LOWER, "_uj": LOWER, "_nj": LOWER, "_pj": LOWER, "_wh": LOWER,
    "_w": LOWER, "_mw": LOWER, "_kw": LOWER,
    "_s": LOWER, "_ms": LOWER, "_us": LOWER, "_ns": LOWER,
    "_c": LOWER,
    "_per_token": LOWER, "_per_request": LOWER, "_per_iter": LOWER,
    "_tflops": HIGHER, "_gflops": HIGHER, "_flops": HIGHER,
    "_flop_s": HIGHER, "_tflop_s": HIGHER, "_tok_j": HIGHER, "_flop": NEUTRAL, "_count": NEUTRAL,
    "_per_s": HIGHER, "_tok_s": HIGHER, "_per_j": HIGHER, "_per_net_j": HIGHER, "_per_w": HIGHER, "_per_joule": HIGHER, "_rps": HIGHER, "_qps": HIGHER,
    "_mhz": NEUTRAL, "_ghz": NEUTRAL, "_hz": NEUTRAL,
    "_pct": NEUTRAL, "_frac": NEUTRAL, "_ratio": NEUTRAL, "_x": NEUTRAL,
    "_bytes": NEUTRAL, "_kib": NEUTRAL, "_mib": NEUTRAL, "_gib": NEUTRAL, "_kb": NEUTRAL, "_mb": NEUTRAL, "_gb": NEUTRAL,
    "_tokens": NEUTRAL, "_bits": NEUTRAL, "_v": NEUTRAL, "_a": NEUTRAL,
    "_h": LOWER, "_kwh": LOWER, "_kgco2e": LOWER, "_usd": LOWER,
}
#: timestamps (``t_s``, ``point_t0_s``, ``trace_start_s``): unit-suffixed but not a cost to compare
_TIMESTAMP = re.compile(r"(^|_)(t\d*|start|end)_s$")
#: statistic tokens allowed after the unit (``ttft_ms_p99``, ``power_w_mean``)
_STAT_SUFFIX = re.compile(r"(_(p\d+(\.\d+)?|mean|median|avg|min|max|std|stdev|sum|total))+$")

#: knob names whose values are noise samples of one setting, not distinct points
NOISE_KNOBS = frozenset({"seed", "seeds", "repeat", "rep", "repeat_index", "repetition", "trial", "run_index", "sample_index"})

#: columns every record carries that are neither knobs nor metrics (the record schema's
#: bookkeeping and the runner's per-point machine state, :data:`charbench.record.MACHINE_COLUMNS`)
BOOKKEEPING = BOOKKEEPING_COLUMNS | MACHINE_COLUMNS


def is_noise_knob(name: str) -> bool:
    """True for knobs whose values are repeats/seeds of one setting (``seed``, ``repeat``, ``data_seed``)."""
    n = name.lower()
    return n in NOISE_KNOBS or n.endswith("_seed") or n.endswith("_repeat")


def metric_direction(name: str) -> str | None:
    """Default direction from the unit suffix (``lower``/``higher``/``neutral``), None when no unit or a timestamp."""
    if _TIMESTAMP.search(name.lower()):
        return None
    base = _STAT_SUFFIX.sub("", name.lower())
    for cand in (name.lower(), base):
        best = max((s for s in UNIT_SUFFIXES if cand.endswith(s) and len(cand) > len(s)), key=len, default=None)
        if best is not None:
            return UNIT_SUFFIXES[best]
    return None


def is_number(v: Any) -> bool:
    """True for int/float values (not bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """True for a finite int/float (not bool, NaN or inf)."""
    return is_number(v) and math.isfinite(float(v))


_KEY_NAME = re.compile(r"(?:^|,)([A-Za-z_][A-Za-z0-9_.\-]*)=")
_NUMERIC_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_point_key(key: str) -> dict[str, str]:
    """Split ``k1=v1,k2=v2`` into names and value text (the text is file-name-safe, lossy)."""
    matches = list(_KEY_NAME.finditer(key))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(key)
        out[m.group(1)] = key[m.end():end]
    return out


def canonical_value(v: Any) -> str:
    """Text of a knob value that is equal across runs for equal values (1 == 1.0, True == 'True')."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if is_number(v):
        f = float(v)
        return repr(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)
    s = str(v).strip()
    if s in ("True", "False"):
        return s.lower()
    if _NUMERIC_TEXT.match(s):
        return canonical_value(float(s))
    return s



def knob_names(rows: list[dict[str, Any]]) -> list[str]:
    """Knob names of a run: every name in its rows' ``point_key``, sorted."""
    names: dict[str, None] = {}
    for r in rows:
        for k in parse_point_key(str(r.get("point_key", ""))):
            names.setdefault(k, None)
    return sorted(names)


def metric_columns(rows: list[dict[str, Any]], exclude: set[str]) -> list[str]:
    """Numeric, unit-suffixed columns of the rows, except bookkeeping and ``exclude`` (the knobs)."""
    cols: dict[str, None] = {}
    for r in rows:
        for c in r:
            cols.setdefault(c, None)
    out = []
    for c in cols:
        if c in exclude or c in BOOKKEEPING or c.startswith("_") or metric_direction(c) is None:
            continue
        vals = [r.get(c) for r in rows if r.get(c) is not None]
        if vals and all(is_number(v) for v in vals):
            out.append(c)
    return out

