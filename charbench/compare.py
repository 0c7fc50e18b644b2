"""Compare a candidate run with a baseline run of the same study: deltas, noise, verdict.

::

    charbench compare BASELINE_RUN CANDIDATE_RUN                       # default gates of the study
    charbench compare BASE CAND --metric energy_j --metric tflops_per_s:higher --threshold 3

    cmp = compare_runs(Path("runs/gemm-power/base"), Path("runs/gemm-power/cand"), threshold_pct=5)
    print(summary_text(cmp)); render_comparison([base, cand], Path("compare.html"))
    sys.exit(cmp.exit_code)

**Points** are matched by their knob values, not by row order or key text: the knobs of
a row are the names in its ``point_key`` (``k1=v1,k2=v2``); their values are read from the
row's columns, so two runs whose knobs were declared in different orders still match.
Knobs named like a seed or a repeat (:data:`NOISE_KNOBS`) are left out of a point's
identity: the seeds/repeats of one knob setting form that point's noise sample. When a
study returns several rows per point, a non-metric column whose value differs between
those rows (e.g. ``phase``) is part of the identity too.

**Metrics** are the numeric columns whose name ends with a unit suffix
(:data:`UNIT_SUFFIXES`, optionally followed by a statistic such as ``_p99`` or ``_mean``)
and that are not knobs. The suffix also gives the default direction (energy, power, time:
lower is better; throughput: higher is better; clocks, percentages: neutral).

**Noise rule**, per matched point and metric, with ``n`` non-null samples, mean ``m`` and
sample standard deviation ``s`` (ddof=1) in each run::

    delta = m_c - m_b,   delta_pct = 100 * delta / |m_b|
    noise      if n_b >= 2 and n_c >= 2 and |delta| <= NOISE_K * sqrt(s_b^2/n_b + s_c^2/n_c)
    unchanged  else if |delta_pct| <= threshold
    regression / improvement  else, by the metric's direction ("changed" when neutral)
    missing    when either run has no value (not measured) for the point

``NOISE_K`` is 2 (a Welch-style two-standard-error band). With fewer than two samples on
either side there is no spread to judge, so only the threshold applies.

**Aggregate** per metric: over the points with both means, the geometric mean of
``m_c / m_b`` as a percent change (arithmetic mean of ``delta_pct`` when a mean is <= 0),
plus the count of each verdict.

**Gate and exit codes** (``charbench compare``): :data:`EXIT_OK` 0, no gated metric
regressed; :data:`EXIT_REGRESSION` 3, at least one matched point of a gated metric is a
regression (beyond the threshold and outside the noise band); 1, an error (runs of
different studies, no matching points, an unknown ``--metric`` (the message lists the
available ones), an unreadable run); 2, command-line usage. Gated metrics are the
``--metric`` names, else the study's defaults (:data:`DEFAULT_GATES`), else ``energy_j``
and ``avg_power_w`` when present.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from charbench.errors import CharbenchError, ConfigError
from charbench.results import RunStore

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REGRESSION = 3

DEFAULT_THRESHOLD_PCT = 5.0
#: half-width of the noise band in standard errors of the difference of means
NOISE_K = 2.0

LOWER = "lower"
HIGHER = "higher"
NEUTRAL = "neutral"

#: unit suffix -> default direction ("which way is better"). The longest matching suffix wins.
UNIT_SUFFIXES: dict[str, str] = {
    "_j": LOWER, "_kj": LOWER, "_mj": LOWER, "_uj": LOWER, "_nj": LOWER, "_pj": LOWER, "_wh": LOWER,
    "_w": LOWER, "_mw": LOWER, "_kw": LOWER,
    "_s": LOWER, "_ms": LOWER, "_us": LOWER, "_ns": LOWER,
    "_c": LOWER,
    "_per_token": LOWER, "_per_request": LOWER, "_per_iter": LOWER,
    "_tflops": HIGHER, "_gflops": HIGHER, "_flops": HIGHER,
    "_per_s": HIGHER, "_tok_s": HIGHER, "_per_j": HIGHER, "_per_net_j": HIGHER, "_per_w": HIGHER, "_per_joule": HIGHER, "_rps": HIGHER, "_qps": HIGHER,
    "_mhz": NEUTRAL, "_ghz": NEUTRAL, "_hz": NEUTRAL,
    "_pct": NEUTRAL, "_frac": NEUTRAL, "_ratio": NEUTRAL, "_x": NEUTRAL,
    "_bytes": NEUTRAL, "_kib": NEUTRAL, "_mib": NEUTRAL, "_gib": NEUTRAL, "_kb": NEUTRAL, "_mb": NEUTRAL, "_gb": NEUTRAL,
    "_tokens": NEUTRAL, "_bits": NEUTRAL, "_v": NEUTRAL, "_a": NEUTRAL,
}
#: timestamps (``t_s``, ``point_t0_s``, ``trace_start_s``): unit-suffixed but not a cost to compare
_TIMESTAMP = re.compile(r"(^|_)(t\d*|start|end)_s$")
#: statistic tokens allowed after the unit (``ttft_ms_p99``, ``power_w_mean``)
_STAT_SUFFIX = re.compile(r"(_(p\d+(\.\d+)?|mean|median|avg|min|max|std|stdev|sum|total))+$")

#: knob names whose values are noise samples of one setting, not distinct points
NOISE_KNOBS = frozenset({"seed", "seeds", "repeat", "rep", "repeat_index", "repetition", "trial", "run_index", "sample_index"})

#: columns every record carries that are neither knobs nor metrics
BOOKKEEPING = frozenset({"point_key", "point_index", "null_reasons", "provenance", "warnings", "completed_at"})

#: study -> gated metrics; each entry lists alternative column names, the first present one is used
DEFAULT_GATES: dict[str, tuple[tuple[str, ...], ...]] = {
    # energy per GEMM is normalized by the iteration count; energy_j covers a timed window
    "gemm-power": (("energy_per_gemm_j", "energy_j"), ("avg_power_w",)),
    "serve-sweep": (
        ("p99_ttft_ms", "ttft_p99_ms", "ttft_ms_p99"),
        ("p99_tpot_ms", "tpot_p99_ms", "tpot_ms_p99"),
        ("energy_per_output_token_j", "energy_per_token_j", "steady_energy_per_output_token_j"),
    ),
}
#: gates of a study without its own entry (only those present are used)
FALLBACK_GATES: tuple[tuple[str, ...], ...] = (("energy_j",), ("avg_power_w",))



class RegressionFound(CharbenchError):
    """A gated metric regressed beyond the threshold; the CLI exits with :data:`EXIT_REGRESSION`."""

    exit_code = EXIT_REGRESSION


VERDICTS = ("regression", "improvement", "changed", "noise", "unchanged", "missing")


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


def _finite(v: Any) -> bool:
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


# ---------------------------------------------------------------------------
# one run, grouped by point identity
# ---------------------------------------------------------------------------
@dataclass
class RunPoints:
    """A run's rows grouped by point identity.

    Attributes:
        store: the run folder.
        knobs: knob names (from the point keys), noise knobs included.
        metrics: metric columns (numeric, unit-suffixed, not knobs).
        groups: identity -> rows (several when seeds/repeats are present).
        labels: identity -> readable ``k=v, k=v`` text (sorted knob names).
    """

    store: RunStore
    knobs: list[str]
    metrics: list[str]
    groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]]
    labels: dict[tuple[tuple[str, str], ...], str]
    identity_columns: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)

    @property
    def noise_knobs(self) -> list[str]:
        """Knobs treated as seeds/repeats."""
        return [k for k in self.knobs if is_noise_knob(k)]

    def values(self, ident: tuple[tuple[str, str], ...], metric: str) -> list[float]:
        """Finite values of one metric at one point."""
        return [float(r[metric]) for r in self.groups.get(ident, []) if _finite(r.get(metric))]


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


def _row_knob(row: dict[str, Any], knob: str, parsed: dict[str, str]) -> str:
    if knob in row:
        return canonical_value(row[knob])
    return canonical_value(parsed.get(knob))


def _varying_in_point(rows: list[dict[str, Any]], exclude: set[str]) -> set[str]:
    """Non-metric, non-float columns whose value differs between rows of one point_key."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault(str(r.get("point_key")), []).append(r)
    out: set[str] = set()
    for group in by_key.values():
        if len(group) < 2:
            continue
        for c in {c for r in group for c in r}:
            if c in exclude or c in BOOKKEEPING or c.startswith("_") or is_noise_knob(c):
                continue
            vals = [r.get(c) for r in group]
            if any(isinstance(v, float) for v in vals):
                continue
            if len({canonical_value(v) for v in vals}) > 1:
                out.add(c)
    return out


def load_points(run_dir: Path | RunStore, identity_columns: Iterable[str] = (), ignore_knobs: Iterable[str] = ()) -> RunPoints:
    """Read a run folder and group its rows by point identity.

    Args:
        run_dir: the run folder (or an open store).
        identity_columns: extra non-knob columns that tell rows of one point apart.
        ignore_knobs: knobs left out of the identity (e.g. a constant knob the other run lacks).

    Raises:
        RunStoreError: not a run folder.
        ConfigError: the run has no completed points.
    """
    store = run_dir if isinstance(run_dir, RunStore) else RunStore.open(Path(run_dir))
    rows = store.records()
    if not rows:
        raise ConfigError(f"compare: run {store.path} has no completed points (status {store.meta.get('status')}); pick a run with results")
    knobs = knob_names(rows)
    metrics = metric_columns(rows, set(knobs))
    extra = sorted(set(identity_columns) | _varying_in_point(rows, set(knobs) | set(metrics)))
    ignored = set(ignore_knobs)
    groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    labels: dict[tuple[tuple[str, str], ...], str] = {}
    for r in rows:
        parsed = parse_point_key(str(r.get("point_key", "")))
        names = [k for k in knobs if not is_noise_knob(k) and k not in ignored and (k in r or k in parsed)]
        ident = tuple(sorted((k, _row_knob(r, k, parsed)) for k in names)) + tuple((c, canonical_value(r.get(c))) for c in extra)
        groups.setdefault(ident, []).append(r)
        labels.setdefault(ident, ", ".join(f"{k}={v}" for k, v in ident) or "(single point)")
    # unit-suffixed columns that are null in every row: not measured here (see null_reasons)
    unmeasured = sorted({c for r in rows for c in r if c not in knobs and metric_direction(c) is not None} - set(metrics) - BOOKKEEPING)
    unmeasured = [c for c in unmeasured if all(r.get(c) is None for r in rows)]
    return RunPoints(store, knobs, metrics, groups, labels, extra, unmeasured)


# ---------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------
@dataclass
class MetricSpec:
    """A compared metric: its direction and whether it gates the exit code."""

    name: str
    direction: str
    gated: bool = False


@dataclass
class PointDelta:
    """One metric at one matched point."""

    point: str
    metric: str
    n_b: int
    n_c: int
    mean_b: float | None
    mean_c: float | None
    std_b: float | None
    std_c: float | None
    delta: float | None
    delta_pct: float | None
    noise_band: float | None
    verdict: str
    gated: bool = False

    @property
    def noise_band_pct(self) -> float | None:
        """The noise band relative to the baseline mean (%)."""
        if self.noise_band is None or not self.mean_b:
            return None
        return 100.0 * self.noise_band / abs(self.mean_b)


@dataclass
class MetricSummary:
    """Aggregate of one metric over the matched points."""

    metric: str
    direction: str
    gated: bool
    points: int
    aggregate_pct: float | None
    aggregate_kind: str
    counts: dict[str, int]


@dataclass
class Comparison:
    """The result of :func:`compare_runs`."""

    baseline: RunPoints
    candidate: RunPoints
    threshold_pct: float
    metrics: list[MetricSpec]
    matched: list[str]
    only_baseline: list[str]
    only_candidate: list[str]
    deltas: list[PointDelta]
    summaries: list[MetricSummary]
    notes: list[str] = field(default_factory=list)

    @property
    def study(self) -> str:
        """The study both runs belong to."""
        return self.baseline.store.study

    @property
    def gated(self) -> list[MetricSpec]:
        """The metrics that decide the exit code."""
        return [m for m in self.metrics if m.gated]

    @property
    def regressions(self) -> list[PointDelta]:
        """Gated points that regressed beyond the threshold and outside the noise band."""
        return [d for d in self.deltas if d.gated and d.verdict == "regression"]

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_REGRESSION` when a gated metric regressed, else :data:`EXIT_OK`."""
        return EXIT_REGRESSION if self.regressions else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (``charbench compare --json``)."""
        return {
            "study": self.study,
            "baseline": str(self.baseline.store.path),
            "candidate": str(self.candidate.store.path),
            "threshold_pct": self.threshold_pct,
            "noise_k": NOISE_K,
            "gated_metrics": [{"name": m.name, "direction": m.direction} for m in self.gated],
            "matched_points": len(self.matched),
            "only_baseline": self.only_baseline,
            "only_candidate": self.only_candidate,
            "aggregates": [s.__dict__ for s in self.summaries],
            "regressions": [d.__dict__ for d in self.regressions],
            "notes": self.notes,
            "exit_code": self.exit_code,
        }


def parse_metric_option(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:higher|lower`` -> (name, direction or None).

    Raises:
        ConfigError: an unknown direction.
    """
    name, sep, direction = text.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"--metric {text!r}: give a metric name, e.g. --metric energy_j or --metric tflops_per_s:higher")
    if sep:
        direction = direction.strip().lower()
        if direction not in (LOWER, HIGHER):
            raise ConfigError(f"--metric {text!r}: direction must be 'higher' or 'lower' (e.g. {name}:lower)")
        return name, direction
    return name, None


def default_gates(study: str, available: Iterable[str]) -> list[str]:
    """The gated metrics of a study that are present in ``available``."""
    avail = set(available)
    out = []
    for alternatives in DEFAULT_GATES.get(study, FALLBACK_GATES):
        for name in alternatives:
            if name in avail:
                out.append(name)
                break
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def classify(b: list[float], c: list[float], direction: str, threshold_pct: float) -> tuple[str, dict[str, Any]]:
    """Verdict for one metric at one point (see the module docstring for the rule).

    Args:
        b: baseline samples (finite values).
        c: candidate samples.
        direction: ``lower``, ``higher`` or ``neutral``.
        threshold_pct: relative change (%) below which a change is not reported.

    Returns:
        (verdict, figures) with figures mean_b, mean_c, std_b, std_c, delta, delta_pct, noise_band.
    """
    mb, sb = _mean_std(b)
    mc, sc = _mean_std(c)
    fig: dict[str, Any] = {"mean_b": mb, "mean_c": mc, "std_b": sb, "std_c": sc, "delta": None, "delta_pct": None, "noise_band": None}
    if mb is None or mc is None:
        return "missing", fig
    delta = mc - mb
    fig["delta"] = delta
    fig["delta_pct"] = 100.0 * delta / abs(mb) if mb != 0 else None
    if len(b) >= 2 and len(c) >= 2 and sb is not None and sc is not None:
        band = NOISE_K * math.sqrt(sb * sb / len(b) + sc * sc / len(c))
        fig["noise_band"] = band
        if abs(delta) <= band:
            return "noise", fig
    if delta == 0 or (fig["delta_pct"] is not None and abs(fig["delta_pct"]) <= threshold_pct):
        return "unchanged", fig
    if direction == NEUTRAL:
        return "changed", fig
    worse = delta > 0 if direction == LOWER else delta < 0
    return ("regression" if worse else "improvement"), fig


def _aggregate(pairs: list[tuple[float, float]]) -> tuple[float | None, str]:
    if not pairs:
        return None, "none"
    if all(b > 0 and c > 0 for b, c in pairs):
        g = math.exp(sum(math.log(c / b) for b, c in pairs) / len(pairs))
        return 100.0 * (g - 1.0), "geomean ratio"
    pcts = [100.0 * (c - b) / abs(b) for b, c in pairs if b != 0]
    if not pcts:
        return None, "none"
    return sum(pcts) / len(pcts), "mean delta %"


def _resolve_metrics(base: RunPoints, cand: RunPoints, metric_opts: list[str] | None, notes: list[str]) -> list[MetricSpec]:
    common = [m for m in base.metrics if m in set(cand.metrics)]
    for side, pts, other in (("baseline", base, cand), ("candidate", cand, base)):
        only = [m for m in pts.metrics if m not in set(other.metrics)]
        if only:
            notes.append(f"metric(s) only in the {side}: {', '.join(only)}")
    available = sorted(set(base.metrics) | set(cand.metrics))
    gated: dict[str, str] = {}
    if metric_opts:
        for text in metric_opts:
            name, direction = parse_metric_option(text)
            if name not in available:
                unmeasured = [side for side, pts in (("baseline", base), ("candidate", cand)) if name in pts.unmeasured]
                if unmeasured:
                    pts = base if unmeasured[0] == "baseline" else cand
                    raise ConfigError(
                        f"--metric {name}: not measured in the {' and the '.join(unmeasured)} run (null in every point: "
                        f"{_null_reason(pts, name)}); gate on a measured metric: {', '.join(available) or '(none)'}"
                    )
                raise ConfigError(f"--metric {name}: no such metric in these runs; available: {', '.join(available) or '(none)'}")
            direction = direction or metric_direction(name)
            if direction not in (LOWER, HIGHER):
                raise ConfigError(f"--metric {name}: its unit does not say which way is better; write {name}:lower or {name}:higher")
            gated[name] = direction
    else:
        defaults = default_gates(base.store.study, available)
        for name in defaults:
            gated[name] = metric_direction(name) or LOWER
        if not defaults:
            null = default_gates(base.store.study, set(base.unmeasured) | set(cand.unmeasured))
            why = f"its default gated metric(s) {', '.join(null)} were not measured (null; see null_reasons)" if null else "it has no default gated metric in these runs"
            notes.append(f"nothing gates the exit code: {why}; choose with --metric NAME[:higher|lower]")
    specs = [MetricSpec(m, gated.get(m, metric_direction(m) or NEUTRAL), m in gated) for m in common]
    for name, direction in gated.items():
        if name not in common:  # a gated metric missing from one run: compared as "missing"
            specs.append(MetricSpec(name, direction, True))
    specs.sort(key=lambda s: (not s.gated, s.name))
    return specs


def _null_reason(pts: RunPoints, metric: str) -> str:
    """Why ``metric`` is null in a run (from the first row's ``null_reasons``)."""
    for rows in pts.groups.values():
        for r in rows:
            try:
                reason = json.loads(r.get("null_reasons") or "{}").get(metric)
            except (TypeError, ValueError):
                reason = None
            if reason:
                return str(reason)
    return "no reason recorded"


def compare_runs(
    baseline: Path | RunStore,
    candidate: Path | RunStore,
    metrics: list[str] | None = None,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
) -> Comparison:
    """Match the points of two runs and classify every metric's change.

    Args:
        baseline: the reference run folder.
        candidate: the run under test.
        metrics: ``NAME[:higher|lower]`` gated metrics (default: the study's, see :data:`DEFAULT_GATES`).
        threshold_pct: relative change (%) a gated metric may worsen before it is a regression.

    Raises:
        ConfigError: a negative threshold, runs of different studies, no matching points, unknown metrics.
        RunStoreError: a folder is not a run.
    """
    if not math.isfinite(threshold_pct) or threshold_pct < 0:
        raise ConfigError(f"--threshold {threshold_pct}: give a percentage >= 0 (e.g. --threshold 5)")
    bs = baseline if isinstance(baseline, RunStore) else RunStore.open(Path(baseline))
    cs = candidate if isinstance(candidate, RunStore) else RunStore.open(Path(candidate))
    if bs.study != cs.study:
        raise ConfigError(f"compare: baseline {bs.path} is a '{bs.study}' run and candidate {cs.path} a '{cs.study}' run; compare two runs of one study")
    b0, c0 = load_points(bs), load_points(cs)
    notes: list[str] = []
    # a knob only one run has, held at one value there, cannot tell points apart: leave it out
    ignored: set[str] = set()
    for side, pts, other in (("baseline", b0, c0), ("candidate", c0, b0)):
        for k in sorted(set(pts.knobs) - set(other.knobs)):
            values = {_row_knob(r, k, parse_point_key(str(r.get("point_key", "")))) for rows in pts.groups.values() for r in rows}
            if len(values) == 1:
                ignored.add(k)
                notes.append(f"knob {k}={next(iter(values))} only in the {side}; ignored for matching")
            else:
                notes.append(f"knob {k} only in the {side}, with {len(values)} values; its points match nothing")
    # both runs must tell multi-row points apart by the same columns
    extra = sorted(set(b0.identity_columns) | set(c0.identity_columns))
    base = load_points(bs, extra, ignored) if extra != b0.identity_columns or ignored else b0
    cand = load_points(cs, extra, ignored) if extra != c0.identity_columns or ignored else c0
    matched_ids = [i for i in base.groups if i in cand.groups]
    only_b = [base.labels[i] for i in base.groups if i not in cand.groups]
    only_c = [cand.labels[i] for i in cand.groups if i not in base.groups]
    if not matched_ids:
        eb = "; ".join(list(base.labels.values())[:3])
        ec = "; ".join(list(cand.labels.values())[:3])
        raise ConfigError(f"compare: no point of {cs.path} matches a point of {bs.path} by knob values (baseline e.g. {eb}; candidate e.g. {ec}); compare runs of the same sweep")
    if only_b or only_c:
        notes.append(f"{len(only_b)} point(s) only in the baseline and {len(only_c)} only in the candidate are not compared")
    noise = sorted(set(base.noise_knobs) | set(cand.noise_knobs))
    if noise:
        most = max(len(g) for pts in (base, cand) for g in pts.groups.values())
        tail = "" if most >= 2 else "; every point has a single sample here, so only the threshold applies"
        notes.append(f"seeds/repeats ({', '.join(noise)}) form each point's noise sample{tail}")
    specs = _resolve_metrics(base, cand, metrics, notes)
    deltas: list[PointDelta] = []
    summaries: list[MetricSummary] = []
    for spec in specs:
        counts = {v: 0 for v in VERDICTS}
        pairs: list[tuple[float, float]] = []
        for ident in matched_ids:
            b, c = base.values(ident, spec.name), cand.values(ident, spec.name)
            verdict, f = classify(b, c, spec.direction, threshold_pct)
            counts[verdict] += 1
            if f["mean_b"] is not None and f["mean_c"] is not None:
                pairs.append((f["mean_b"], f["mean_c"]))
            deltas.append(PointDelta(base.labels[ident], spec.name, len(b), len(c), verdict=verdict, gated=spec.gated, **f))
        agg, kind = _aggregate(pairs)
        summaries.append(MetricSummary(spec.name, spec.direction, spec.gated, len(pairs), agg, kind, counts))
        if spec.gated and counts["missing"]:
            notes.append(f"gated metric {spec.name}: {counts['missing']} point(s) not measured in one of the runs (see null_reasons); they do not gate")
    return Comparison(base, cand, threshold_pct, specs, [base.labels[i] for i in matched_ids], only_b, only_c, deltas, summaries, notes)


# ---------------------------------------------------------------------------
# text summary
# ---------------------------------------------------------------------------
def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}%" if pct else f"{v:.4g}"


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain, aligned text table (stable for logs and tests)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def summary_text(cmp: Comparison, max_points: int = 40) -> str:
    """The summary printed by ``charbench compare``: aggregates, notable points, verdict."""
    b, c = cmp.baseline.store, cmp.candidate.store
    out = [
        f"study {cmp.study}: baseline {b.meta.get('run_id')} ({b.meta.get('label') or 'no label'}) vs candidate {c.meta.get('run_id')} ({c.meta.get('label') or 'no label'})",
        f"{len(cmp.matched)} matched point(s); threshold {cmp.threshold_pct:g}%; noise = |delta| <= {NOISE_K:g} x std error when both runs have >= 2 samples",
        "",
    ]
    rows = []
    for s in cmp.summaries:
        n = s.counts
        rows.append([("* " if s.gated else "  ") + s.metric, s.direction, str(s.points), _fmt(s.aggregate_pct, pct=True),
                     str(n["regression"]), str(n["improvement"]), str(n["changed"]), str(n["noise"]), str(n["unchanged"]), str(n["missing"])])
    out.append(text_table(["metric (* gated)", "better", "points", "aggregate", "regr", "impr", "changed", "noise", "same", "missing"], rows))
    notable = [d for d in cmp.deltas if d.gated and d.verdict in ("regression", "improvement", "noise")]
    if notable:
        out.append("")
        out.append("gated metrics, per point:")
        prow = [[d.metric, d.point, _fmt(d.mean_b), _fmt(d.mean_c), _fmt(d.delta_pct, pct=True),
                 "-" if d.noise_band_pct is None else f"±{d.noise_band_pct:.2f}%", d.verdict] for d in notable[:max_points]]
        out.append(text_table(["metric", "point", "baseline", "candidate", "delta", "noise band", "verdict"], prow))
        if len(notable) > max_points:
            out.append(f"... {len(notable) - max_points} more in the HTML page")
    for note in cmp.notes:
        out.append(f"note: {note}")
    out.append("")
    if cmp.regressions:
        names = sorted({d.metric for d in cmp.regressions})
        out.append(f"REGRESSION: {len(cmp.regressions)} point(s) of {', '.join(names)} worse by more than {cmp.threshold_pct:g}% and outside noise (exit {EXIT_REGRESSION})")
    elif not cmp.gated:
        out.append("OK: no gated metric (exit 0)")
    else:
        out.append(f"OK: no gated metric ({', '.join(m.name for m in cmp.gated)}) regressed beyond {cmp.threshold_pct:g}% (exit 0)")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# HTML page
# ---------------------------------------------------------------------------
def html_escape(v: Any) -> str:
    """Text made safe for HTML (``<``, ``>``, ``&`` and quotes escaped); None becomes empty."""
    from markupsafe import escape

    return str(escape("" if v is None else str(v)))


_e = html_escape


def relative_link(target: Path, page: Path) -> str:
    """URL of ``target`` relative to the folder of ``page`` (keeps a published folder's links working)."""
    from urllib.parse import quote

    rel = os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)
    return quote(Path(rel).as_posix())


def _gpu_names(env: dict[str, Any]) -> str:
    gpus = env.get("gpus") or []
    names = [str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus]
    return ", ".join(names) if names else "none"


def run_facts(store: RunStore) -> dict[str, str]:
    """Study, label, date, status, git sha, host and GPU of a run (for tables)."""
    env = store.env()
    m = store.meta
    sha = env.get("git_sha") or ""
    return {
        "run": str(m.get("run_id", store.path.name)),
        "study": str(m.get("study", "")),
        "label": str(m.get("label") or ""),
        "started": str(m.get("started") or ""),
        "status": str(m.get("status") or ""),
        "points": f"{m.get('points_done', 0)}/{m.get('points_total') if m.get('points_total') is not None else '?'}",
        "failed": str(m.get("points_failed", 0)),
        "git": str(sha)[:10],
        "host": str(env.get("hostname") or ""),
        "device": str(m.get("device") or env.get("device") or ""),
        "gpu": _gpu_names(env),
    }


def _runs_section(cmp: Comparison, out: Path):  # -> Section
    from charbench.report import Section

    keys = ["run", "label", "started", "status", "points", "failed", "git", "host", "device", "gpu"]
    rows = []
    for role, pts in (("baseline", cmp.baseline), ("candidate", cmp.candidate)):
        f = run_facts(pts.store)
        rep = pts.store.path / "report.html"
        link = f'<a href="{_e(relative_link(rep, out))}">report</a>' if rep.exists() else f'<span class="muted">no report (charbench report {_e(pts.store.path)})</span>'
        rows.append("<tr><td>" + role + "</td>" + "".join(f"<td>{_e(f[k])}</td>" for k in keys) + f"<td>{link}</td></tr>")
        meta = pts.store.meta.get("meta") or {}
        if meta:
            rows.append(f'<tr><td></td><td colspan="{len(keys) + 1}" class="muted">' + _e(", ".join(f"{k}={v}" for k, v in meta.items())) + "</td></tr>")
    head = "".join(f"<th>{k}</th>" for k in ["", *keys, ""])
    return Section("Runs", f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>', anchor="runs")


def noise_rule_text(threshold_pct: float) -> str:
    """The noise rule in words, as shown on pages and in docs."""
    return (f"A change is noise when both runs have at least two samples (seeds/repeats) of the point and "
            f"|mean_c - mean_b| <= {NOISE_K:g} * sqrt(s_b^2/n_b + s_c^2/n_c); otherwise it counts only when it exceeds "
            f"the {threshold_pct:g}% threshold. Aggregates are geometric means of candidate/baseline ratios over the matched points.")


def _verdict_section(cmp: Comparison):  # -> Section
    from charbench.report import Section

    if cmp.regressions:
        names = sorted({d.metric for d in cmp.regressions})
        head = f'<p><span class="badge not-measured">regression</span> {len(cmp.regressions)} point(s) of {_e(", ".join(names))} worse by more than {cmp.threshold_pct:g}% and outside the noise band (exit code {EXIT_REGRESSION}).</p>'
    else:
        head = f'<p><span class="badge measured">ok</span> no gated metric regressed beyond {cmp.threshold_pct:g}% (exit code 0).</p>'
    gated = ", ".join(f"{m.name} ({m.direction} is better)" for m in cmp.gated) or "none"
    items = [f"<li>gated metrics: {_e(gated)}</li>", f"<li>{len(cmp.matched)} matched point(s)</li>"] + [f"<li>{_e(n)}</li>" for n in cmp.notes]
    return Section("Verdict", head + "<ul>" + "".join(items) + "</ul>", note=noise_rule_text(cmp.threshold_pct), anchor="verdict")


def _aggregate_section(cmp: Comparison):  # -> Section
    from charbench.report import Section

    rows = []
    for s in cmp.summaries:
        n = s.counts
        rows.append(
            f'<tr><td>{"&#9733; " if s.gated else ""}{_e(s.metric)}</td><td>{_e(s.direction)}</td><td>{s.points}</td>'
            f"<td>{_e(_fmt(s.aggregate_pct, pct=True))}</td><td>{_e(s.aggregate_kind)}</td>"
            + "".join(f"<td>{n[v]}</td>" for v in VERDICTS)
            + "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ["metric (&#9733; gated)", "better", "points", "aggregate", "kind", *VERDICTS])
    return Section("Aggregate deltas", f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>',
                   note="Per metric over the matched points; counts are points per verdict.", anchor="aggregate")


_COLORS = {"regression": "#d92d20", "improvement": "#039855", "changed": "#b54708", "noise": "#98a2b3", "unchanged": "#667085", "missing": "#d0d5dd"}


def _delta_figures(cmp: Comparison, max_metrics: int = 6) -> str:
    import plotly.graph_objects as go

    from charbench.report import figure_html

    moved = {s.metric: s.counts["regression"] + s.counts["improvement"] + s.counts["changed"] for s in cmp.summaries}
    # without gates: metrics with a direction first, the most changed first
    chosen = [m for m in cmp.metrics if m.gated] or sorted(cmp.metrics, key=lambda m: (m.direction == NEUTRAL, -moved.get(m.name, 0), m.name))
    parts = []
    for spec in chosen[:max_metrics]:
        ds = [d for d in cmp.deltas if d.metric == spec.name and d.delta_pct is not None]
        if not ds:
            parts.append(f'<p class="muted">{_e(spec.name)}: no point with values in both runs.</p>')
            continue
        fig = go.Figure()
        for verdict in VERDICTS:
            sel = [d for d in ds if d.verdict == verdict]
            # Points without a noise band (fewer than two samples a side) get no error bar at
            # all: a zero-length bar would claim a measured band of 0.
            for banded in (True, False):
                part = [d for d in sel if (d.noise_band_pct is not None) == banded]
                if not part:
                    continue
                fig.add_trace(go.Bar(
                    x=[d.point for d in part], y=[d.delta_pct for d in part], name=verdict, marker_color=_COLORS[verdict],
                    legendgroup=verdict, showlegend=banded or not any(d.noise_band_pct is not None for d in sel),
                    error_y=dict(type="data", array=[d.noise_band_pct for d in part], visible=True) if banded else None,
                    customdata=[[_fmt(d.mean_b), _fmt(d.mean_c), "-" if d.noise_band_pct is None else f"±{d.noise_band_pct:.2f}%"] for d in part],
                    hovertemplate="%{x}<br>delta %{y:.2f}%<br>baseline %{customdata[0]} → candidate %{customdata[1]}<br>noise band %{customdata[2]}<extra>" + verdict + "</extra>",
                ))
        for y in (cmp.threshold_pct, -cmp.threshold_pct):
            fig.add_hline(y=y, line_dash="dot", line_color="#667085")
        better = "lower" if spec.direction == LOWER else "higher" if spec.direction == HIGHER else "neutral"
        fig.update_layout(title=f"{spec.name}: candidate vs baseline ({better} is better{', gated' if spec.gated else ''})",
                          yaxis_title="delta (%)", xaxis_title="point", barmode="overlay", xaxis_type="category")
        fig.update_xaxes(categoryorder="array", categoryarray=[d.point for d in ds])  # run order, not trace order
        if len(ds) > 12 or max(len(d.point) for d in ds) > 30:
            # long knob lists would take the whole plot as tick labels: hover shows them instead
            fig.update_xaxes(showticklabels=False, title_text=f"{len(ds)} points, in run order (hover a bar for its knobs)")
        parts.append(figure_html(fig, height=380))
    return "\n".join(parts)


def _points_table(cmp: Comparison, gated_only: bool) -> str:
    import pandas as pd

    from charbench.report import table_html

    rows = [
        {"metric": d.metric, "point": d.point, "n_b": d.n_b, "n_c": d.n_c, "baseline": d.mean_b, "candidate": d.mean_c,
         "delta": d.delta, "delta_pct": d.delta_pct, "noise_band_pct": d.noise_band_pct, "verdict": d.verdict}
        for d in cmp.deltas if d.gated or not gated_only
    ]
    if not rows:
        return '<p class="muted">No rows.</p>'
    return table_html(pd.DataFrame(rows), max_rows=2000)


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, default=str, sort_keys=True)}


def _differences(cmp: Comparison) -> str:
    bs, cs = cmp.baseline.store, cmp.candidate.store
    skip = ("common.out", "common.label", "common.resume", "common.meta", "common.json")
    try:
        fb, fc = _flatten(bs.config()), _flatten(cs.config())
    except (OSError, ValueError):
        fb, fc = {}, {}
    env_keys = ("charbench_version", "git_sha", "hostname", "cpu_model", "python", "torch", "torch_cuda", "device", "gpus")
    eb, ec = bs.env(), cs.env()
    for k in env_keys:
        fb[f"env.{k}"] = json.dumps(eb.get(k), default=str, sort_keys=True)
        fc[f"env.{k}"] = json.dumps(ec.get(k), default=str, sort_keys=True)
    keys = sorted(k for k in set(fb) | set(fc) if fb.get(k) != fc.get(k) and not k.startswith(skip))
    if not keys:
        return '<p class="muted">Same configuration and environment.</p>'
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(fb.get(k, '(absent)'))}</td><td>{_e(fc.get(k, '(absent)'))}</td></tr>" for k in keys[:300])
    return f'<div class="table-wrap"><table><thead><tr><th>key</th><th>baseline</th><th>candidate</th></tr></thead><tbody>{rows}</tbody></table></div>'


def comparison_sections(cmp: Comparison, out: Path, prefix: str = ""):  # -> list[Section]
    """The sections of a comparison page (runs, verdict, aggregates, figures, points, differences)."""
    from charbench.report import Section

    sections = [_runs_section(cmp, out), _verdict_section(cmp), _aggregate_section(cmp)]
    sections.append(Section("Per-point deltas", _delta_figures(cmp), note="Bars: candidate minus baseline in % of the baseline mean; error bars: the noise band (none where a run has fewer than two samples of the point); dotted lines: the threshold.", anchor="figures"))
    table = _points_table(cmp, gated_only=True) if cmp.gated else ""
    all_rows = _points_table(cmp, gated_only=False)
    html = (table + f"<details><summary>all metrics ({len(cmp.deltas)} rows)</summary>{all_rows}</details>") if cmp.gated else all_rows
    sections.append(Section("Points", html, anchor="points"))
    if cmp.only_baseline or cmp.only_candidate:
        items = "".join(f"<li>baseline only: {_e(p)}</li>" for p in cmp.only_baseline[:200]) + "".join(f"<li>candidate only: {_e(p)}</li>" for p in cmp.only_candidate[:200])
        sections.append(Section("Unmatched points", f"<ul>{items}</ul>", anchor="unmatched"))
    sections.append(Section("Configuration and environment differences", _differences(cmp), anchor="differences"))
    if prefix:
        for i, s in enumerate(sections):
            s.title = f"{prefix}: {s.title}"
            s.anchor = f"{s.anchor}-{len(prefix)}-{i}" if s.anchor else ""
    return sections


def render_comparison(
    run_dirs: list[Path],
    out: Path,
    metrics: list[str] | None = None,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
    comparisons: list[Comparison] | None = None,
) -> Path:
    """Write an HTML page comparing ``run_dirs[1:]`` each with the baseline ``run_dirs[0]``.

    Args:
        run_dirs: baseline first, then one or more candidates (all of one study).
        out: the HTML file to write.
        metrics: gated metrics (``NAME[:higher|lower]``), default the study's.
        threshold_pct: regression threshold (%).
        comparisons: already computed comparisons (skips recomputing).

    Raises:
        ConfigError: fewer than two runs, or see :func:`compare_runs`.
    """
    from charbench.report import render_page
    from charbench.results import atomic_write_text

    if len(run_dirs) < 2 and not comparisons:
        raise ConfigError("compare: give a baseline run and at least one candidate run")
    out = Path(out)
    cmps = comparisons or [compare_runs(run_dirs[0], c, metrics, threshold_pct) for c in run_dirs[1:]]
    sections = []
    for i, cmp in enumerate(cmps):
        prefix = "" if len(cmps) == 1 else f"vs {cmp.candidate.store.meta.get('run_id')} ({i + 1}/{len(cmps)})"
        sections.extend(comparison_sections(cmp, out, prefix))
    first = cmps[0]
    b = first.baseline.store.meta
    cands = ", ".join(str(c.candidate.store.meta.get("run_id")) for c in cmps)
    worst = max(c.exit_code for c in cmps)
    status = "REGRESSION" if worst == EXIT_REGRESSION else "ok"
    title = f"charbench compare {first.study}: {status}"
    subtitle = f"baseline {b.get('run_id')}{' (' + str(b.get('label')) + ')' if b.get('label') else ''} · candidate {cands} · threshold {first.threshold_pct:g}%"
    atomic_write_text(out, render_page(title, sections, subtitle=subtitle))
    return out
