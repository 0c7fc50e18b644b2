"""Compare a candidate run with a baseline run of the same study: match, classify, gate.

::

    cmp = compare_runs(Path("runs/gemm-power/base"), Path("runs/gemm-power/cand"), threshold_pct=5)
    cmp.exit_code        # EXIT_REGRESSION (3) when a gated metric regressed

The rules are in :mod:`charbench.compare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charbench.compare.columns import parse_point_key
from charbench.compare.gates import MetricSpec, resolve_metrics
from charbench.compare.points import RunPoints, load_points, row_knob
from charbench.compare.stats import NOISE_K, VERDICTS, aggregate, classify
from charbench.errors import CharbenchError, ConfigError
from charbench.results import RunStore

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REGRESSION = 3

DEFAULT_THRESHOLD_PCT = 5.0


class RegressionFound(CharbenchError):
    """A gated metric regressed beyond the threshold; the CLI exits with :data:`EXIT_REGRESSION`."""

    exit_code = EXIT_REGRESSION



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
    def gate_basis(self) -> str:
        """Why the gated metrics are these, when they stand in for unmeasured default gates ('' otherwise)."""
        stand_ins = [m for m in self.gated if m.fallback_for]
        if not stand_ins:
            return ""
        return f"gated on {', '.join(m.name for m in stand_ins)} because {', '.join(stand_ins[0].fallback_for)} were not measured"

    def verdict(self) -> str:
        """The one verdict line ``charbench compare`` prints (and its page shows)."""
        basis = f"; {self.gate_basis}" if self.gate_basis else ""
        if self.regressions:
            names = sorted({d.metric for d in self.regressions})
            return (f"REGRESSION: {len(self.regressions)} point(s) of {', '.join(names)} worse by more than "
                    f"{self.threshold_pct:g}% and outside noise{basis} (exit {EXIT_REGRESSION})")
        if not self.gated:
            return "OK: nothing gated the exit code (see the notes; choose with --metric NAME[:higher|lower]) (exit 0)"
        return (f"OK: no gated metric ({', '.join(m.name for m in self.gated)}) regressed beyond "
                f"{self.threshold_pct:g}%{basis} (exit 0)")

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
            "verdict": self.verdict(),
            "exit_code": self.exit_code,
        }



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
        metrics: ``NAME[:higher|lower]`` gated metrics (default: the study's declared gates, see :mod:`charbench.compare.gates`).
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
            values = {row_knob(r, k, parse_point_key(str(r.get("point_key", "")))) for rows in pts.groups.values() for r in rows}
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
    specs = resolve_metrics(base, cand, metrics, notes)
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
        agg, kind = aggregate(pairs)
        summaries.append(MetricSummary(spec.name, spec.direction, spec.gated, len(pairs), agg, kind, counts))
        if spec.gated and counts["missing"]:
            notes.append(f"gated metric {spec.name}: {counts['missing']} point(s) not measured in one of the runs (see null_reasons); they do not gate")
    return Comparison(base, cand, threshold_pct, specs, [base.labels[i] for i in matched_ids], only_b, only_c, deltas, summaries, notes)

