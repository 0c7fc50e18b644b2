"""The noise rule, per-point verdicts and per-metric aggregates (pure arithmetic).

Per matched point and metric, with ``n`` non-null samples, mean ``m`` and sample standard
deviation ``s`` (ddof=1) in each run::

    delta = m_c - m_b,   delta_pct = 100 * delta / |m_b|
    noise      if n_b >= 2 and n_c >= 2 and |delta| <= NOISE_K * sqrt(s_b^2/n_b + s_c^2/n_c)
    unchanged  else if |delta_pct| <= threshold
    regression / improvement  else, by the metric's direction ("changed" when neutral)
    missing    when either run has no value (not measured) for the point

Aggregate per metric: the geometric mean of ``m_c / m_b`` as a percent change
(arithmetic mean of ``delta_pct`` when a mean is <= 0).
"""

from __future__ import annotations

import math
from typing import Any

from charbench.compare.columns import LOWER, NEUTRAL

#: half-width of the noise band in standard errors of the difference of means
NOISE_K = 2.0


VERDICTS = ("regression", "improvement", "changed", "noise", "unchanged", "missing")


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


def aggregate(pairs: list[tuple[float, float]]) -> tuple[float | None, str]:
    """(percent change, kind) over (baseline mean, candidate mean) pairs; (None, "none") without pairs."""
    if not pairs:
        return None, "none"
    if all(b > 0 and c > 0 for b, c in pairs):
        g = math.exp(sum(math.log(c / b) for b, c in pairs) / len(pairs))
        return 100.0 * (g - 1.0), "geomean ratio"
    pcts = [100.0 * (c - b) / abs(b) for b, c in pairs if b != 0]
    if not pcts:
        return None, "none"
    return sum(pcts) / len(pcts), "mean delta %"



def noise_rule_text(threshold_pct: float) -> str:
    """The noise rule in words, as shown on pages and in docs."""
    return (f"A change is noise when both runs have at least two samples (seeds/repeats) of the point and "
            f"|mean_c - mean_b| <= {NOISE_K:g} * sqrt(s_b^2/n_b + s_c^2/n_c); otherwise it counts only when it exceeds "
            f"the {threshold_pct:g}% threshold. Aggregates are geometric means of candidate/baseline ratios over the matched points.")

