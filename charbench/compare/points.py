"""A run's records grouped by point identity, and the facts about a run shown in tables.

::

    pts = load_points(Path("runs/gemm-power/base"))
    pts.values(ident, "energy_j")                  # the finite samples of one point

Points are matched by their knob values, not by row order or key text: the knobs of a
row are the names in its ``point_key``; their values are read from the row's columns.
Noise knobs (seeds, repeats) are left out of a point's identity; when a study returns
several rows per point, a non-metric column that differs between them is part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from charbench.compare.columns import (
    BOOKKEEPING,
    canonical_value,
    is_finite_number,
    is_noise_knob,
    knob_names,
    metric_columns,
    metric_direction,
    parse_point_key,
)
from charbench.errors import ConfigError
from charbench.record import run_knobs
from charbench.results import RunStore


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
        return [float(r[metric]) for r in self.groups.get(ident, []) if is_finite_number(r.get(metric))]



def row_knob(row: dict[str, Any], knob: str, parsed: dict[str, str]) -> str:
    """The canonical value of ``knob`` in ``row`` (its column, else its text in the point key)."""
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


def _config_keys(store: RunStore) -> list[str]:
    """The fields of the run's study config (none when config.json is missing or unreadable)."""
    try:
        return list(((store.config() or {}).get("study_config") or {}).keys())
    except Exception:  # noqa: BLE001 - a damaged config.json must not stop a comparison of the results
        return []


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
    # fixed settings a record repeats (idle_baseline_s, max_duration_s) are knobs too: set, not measured
    # (the record schema's rule, charbench.record.run_knobs), so they are never compared as metrics
    metrics = metric_columns(rows, set(run_knobs((), _config_keys(store))) | set(knobs))
    extra = sorted(set(identity_columns) | _varying_in_point(rows, set(knobs) | set(metrics)))
    ignored = set(ignore_knobs)
    groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    labels: dict[tuple[tuple[str, str], ...], str] = {}
    for r in rows:
        parsed = parse_point_key(str(r.get("point_key", "")))
        names = [k for k in knobs if not is_noise_knob(k) and k not in ignored and (k in r or k in parsed)]
        ident = tuple(sorted((k, row_knob(r, k, parsed)) for k in names)) + tuple((c, canonical_value(r.get(c))) for c in extra)
        groups.setdefault(ident, []).append(r)
        labels.setdefault(ident, ", ".join(f"{k}={v}" for k, v in ident) or "(single point)")
    # unit-suffixed columns that are null in every row: not measured here (see null_reasons)
    unmeasured = sorted({c for r in rows for c in r if c not in knobs and metric_direction(c) is not None} - set(metrics) - BOOKKEEPING)
    unmeasured = [c for c in unmeasured if all(r.get(c) is None for r in rows)]
    return RunPoints(store, knobs, metrics, groups, labels, extra, unmeasured)



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

