"""Compare a candidate run with a baseline run of the same study: deltas, noise, verdict.

::

    charbench compare BASELINE_RUN CANDIDATE_RUN                       # default gates of the study
    charbench compare BASE CAND --metric energy_j --metric tflops_per_s:higher --threshold 3

    cmp = compare_runs(Path("runs/gemm-power/base"), Path("runs/gemm-power/cand"), threshold_pct=5)
    print(summary_text(cmp)); sys.exit(cmp.exit_code)
    charbench.compare_page.render_comparison([base, cand], Path("compare.html"))   # the HTML page

This package is pure (records in, verdicts out: no HTML, no plotly); its modules:
:mod:`.columns` (knobs, metrics, directions), :mod:`.points` (a run's rows by point),
:mod:`.stats` (noise rule, verdicts, aggregates), :mod:`.gates` (which metrics gate),
:mod:`.runs` (:func:`compare_runs`), :mod:`.text` (the printed summary). The page is
rendered by :mod:`charbench.compare_page`.

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
``--metric`` names, else the gates the study declares in its
:class:`charbench.studies.StudySpec`, else ``energy_j`` and ``mean_power_w`` when present
(:data:`FALLBACK_GATES`).
"""


from charbench.compare.columns import (
    BOOKKEEPING,
    HIGHER,
    LOWER,
    NEUTRAL,
    NOISE_KNOBS,
    UNIT_SUFFIXES,
    canonical_value,
    is_noise_knob,
    is_number,
    knob_names,
    metric_columns,
    metric_direction,
    parse_point_key,
)
from charbench.compare.gates import FALLBACK_GATES, MetricSpec, default_gates, parse_metric_option, study_gates
from charbench.compare.points import RunPoints, load_points, run_facts
from charbench.compare.runs import (
    DEFAULT_THRESHOLD_PCT,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REGRESSION,
    EXIT_USAGE,
    Comparison,
    MetricSummary,
    PointDelta,
    RegressionFound,
    compare_runs,
)
from charbench.compare.stats import NOISE_K, VERDICTS, classify, noise_rule_text
from charbench.compare.text import summary_text, text_table

__all__ = [
    "BOOKKEEPING", "DEFAULT_THRESHOLD_PCT", "EXIT_ERROR", "EXIT_OK", "EXIT_REGRESSION", "EXIT_USAGE", "FALLBACK_GATES",
    "HIGHER", "LOWER", "NEUTRAL", "NOISE_K", "NOISE_KNOBS", "UNIT_SUFFIXES", "VERDICTS",
    "Comparison", "MetricSpec", "MetricSummary", "PointDelta", "RegressionFound", "RunPoints",
    "canonical_value", "classify", "compare_runs", "default_gates", "is_noise_knob", "is_number", "knob_names",
    "load_points", "metric_columns", "metric_direction", "noise_rule_text", "parse_metric_option", "parse_point_key",
    "run_facts", "study_gates", "summary_text", "text_table",
]
