"""Which metrics gate the exit code: ``--metric`` options, else the study's declared gates.

A study declares its gates in its :class:`charbench.studies.StudySpec`; a study without
any (or unknown to this installation) is gated on :data:`FALLBACK_GATES` when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from charbench.compare.columns import HIGHER, LOWER, NEUTRAL, metric_direction
from charbench.compare.points import RunPoints
from charbench.errors import ConfigError
from charbench.studies import find_study

#: gates of a study that declares none (only those present are used)
FALLBACK_GATES: tuple[tuple[str, ...], ...] = (("energy_j",), ("mean_power_w",))


@dataclass
class MetricSpec:
    """A compared metric: its direction and whether it gates the exit code."""

    name: str
    direction: str
    gated: bool = False
    #: the declared gates, not measured in these runs, that this metric gates in place of
    fallback_for: tuple[str, ...] = ()



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


def study_gates(study: str) -> tuple[tuple[str, ...], ...]:
    """The gates ``study`` declares (each a tuple of alternative names), else :data:`FALLBACK_GATES`."""
    spec = find_study(study)
    return spec.gate_alternatives if spec is not None and spec.gates else FALLBACK_GATES


def study_fallback_gates(study: str) -> tuple[str, ...]:
    """The time/throughput gates ``study`` declares for when its energy gates are not measured."""
    spec = find_study(study)
    return tuple(getattr(spec, "fallback_gates", ()) or ()) if spec is not None else ()


def unmeasured_gates(base: RunPoints, cand: RunPoints) -> list[str]:
    """The study's default gates that are null in every point of either run (not measured there)."""
    measured = set(base.metrics) & set(cand.metrics)
    null = (set(base.unmeasured) | set(cand.unmeasured)) - measured
    return default_gates(base.store.study, null)


def default_gates(study: str, available: Iterable[str]) -> list[str]:
    """The gated metrics of a study that are present in ``available`` (first present alternative of each gate)."""
    avail = set(available)
    out = []
    for alternatives in study_gates(study):
        for name in alternatives:
            if name in avail:
                out.append(name)
                break
    return out



def resolve_metrics(base: RunPoints, cand: RunPoints, metric_opts: list[str] | None, notes: list[str]) -> list[MetricSpec]:
    """The compared metrics of two runs, gated ones first; explanations are appended to ``notes``.

    Raises:
        ConfigError: a ``--metric`` that is unknown, not measured, or has no direction.
    """
    common = [m for m in base.metrics if m in set(cand.metrics)]
    for side, pts, other in (("baseline", base, cand), ("candidate", cand, base)):
        only = [m for m in pts.metrics if m not in set(other.metrics)]
        if only:
            notes.append(f"metric(s) only in the {side}: {', '.join(only)}")
    available = sorted(set(base.metrics) | set(cand.metrics))
    gated: dict[str, str] = {}
    fallback: list[str] = []
    null: list[str] = []
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
        study = base.store.study
        null = unmeasured_gates(base, cand)
        defaults = [g for g in default_gates(study, available) if g not in null]
        for name in defaults:
            gated[name] = metric_direction(name) or LOWER
        # energy/power gates are null without a meter: gate on the study's time/throughput gates
        # instead, so that a CPU-only CI job can still fail
        fallback = [g for g in study_fallback_gates(study) if g in common and g not in gated] if null else []
        for name in fallback:
            gated[name] = metric_direction(name) or LOWER
        if null:
            why = f"{', '.join(null)} not measured (null in every point: {_null_reason(base if null[0] in base.unmeasured else cand, null[0])})"
            if fallback:
                notes.append(f"{why}; gating on {', '.join(fallback)} instead")
            elif defaults:
                notes.append(f"{why}; gating on {', '.join(defaults)} only")
        if not gated:
            why = f"its default gated metric(s) {', '.join(null)} were not measured (null; see null_reasons)" if null else "it has no default gated metric in these runs"
            notes.append(f"nothing gates the exit code: {why}; choose with --metric NAME[:higher|lower]")
    replaced = tuple(null) if fallback else ()
    specs = [MetricSpec(m, gated.get(m, metric_direction(m) or NEUTRAL), m in gated, replaced if m in fallback else ()) for m in common]
    for name, direction in gated.items():
        if name not in common:  # a gated metric missing from one run: compared as "missing"
            specs.append(MetricSpec(name, direction, True))
    for name in null:
        if name in available and all(s.name != name for s in specs):
            # a declared gate measured in one run only: shown as "missing" per point, not gated
            specs.append(MetricSpec(name, metric_direction(name) or NEUTRAL, False))
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

