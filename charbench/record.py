"""Records: the one naming rule for metrics and the builder every study fills.

The naming rule (vLLM's form, so serving numbers read like ``vllm bench serve`` output)::

    [statistic_]quantity_unit        p99_ttft_ms, mean_gpu0_power_w, energy_net_per_gemm_j

The statistic, when there is one, comes first and is one of :data:`STATISTICS`; the unit
comes last and is one of :data:`UNITS` (the longest unit that matches wins, so
``output_throughput_tok_s`` is ``tok_s``, not ``s``). A window prefix (``steady_``) goes
after the statistic: ``mean_steady_power_w`` (see :func:`with_prefix`). Knobs keep their
CLI names (``request_rate_rps``, ``batch``) and bookkeeping columns are not metrics.

:class:`Record` replaces the magic ``_reasons``/``_provenance``/``_warnings`` keys: a value is
``set`` (with its provenance), ``null`` (with its reason) or ``derive``d from other keys, in
which case a missing source makes it null with that source's reason and its provenance is the
sources' (``estimated`` when any source is estimated).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

#: Statistics a metric name may start with.
STATISTICS: frozenset[str] = frozenset({"mean", "median", "p50", "p90", "p95", "p99", "min", "max", "std", "total"})

#: Units a metric name ends with (multi-part units are matched before their tails).
UNITS: frozenset[str] = frozenset({
    "s", "ms", "us", "j", "pj", "w", "mhz", "c", "pct", "frac", "rps", "tok_s", "tok_j", "count", "tokens", "bits",
    "flop", "flop_s", "tflop_s", "bytes", "mib", "h", "wh", "kwh", "kgco2e", "usd",
})

_UNITS_BY_LENGTH = sorted(UNITS, key=lambda u: -u.count("_"))

PROV_ESTIMATED = "estimated"

#: columns every stored record carries that are neither knobs nor metrics
BOOKKEEPING_COLUMNS: frozenset[str] = frozenset({"point_key", "point_index", "null_reasons", "provenance", "warnings", "completed_at"})

#: the machine's state around each point, added by the runner to every record (see
#: :mod:`charbench.noise`): 1-minute load average, mean CPU frequency, this process's
#: threads, and whether the machine was busy. Context for reading the metrics, not metrics:
#: compare never gates them and reports never chart them as results.
MACHINE_COLUMNS: frozenset[str] = frozenset({"machine_load1_count", "machine_cpu_mhz", "machine_threads_count", "machine_busy"})

#: what a record column is (:func:`column_role`)
KNOB, METRIC, MACHINE, BOOKKEEPING, DESCRIPTOR = "knob", "metric", "machine", "bookkeeping", "descriptor"


class MetricNameError(ValueError):
    """A key does not follow the naming rule."""


def parse_metric(name: str) -> tuple[str | None, str, str]:
    """Split a metric name into (statistic, quantity, unit).

    Args:
        name: a record key such as ``p99_ttft_ms``.

    Returns:
        ``(statistic or None, quantity, unit)``, e.g. ``("p99", "ttft", "ms")``.

    Raises:
        MetricNameError: the name has no known unit last or no quantity.
    """
    unit = next((u for u in _UNITS_BY_LENGTH if name.endswith("_" + u)), None)
    if unit is None:
        raise MetricNameError(f"metric {name!r} does not end in a unit (_{', _'.join(sorted(UNITS))}); "
                              "name it [statistic_]quantity_unit, e.g. p99_ttft_ms")
    head = name[: -len(unit) - 1]
    first, _, rest = head.partition("_")
    statistic = first if first in STATISTICS and rest else None
    quantity = rest if statistic else head
    if not quantity or quantity in STATISTICS:
        raise MetricNameError(f"metric {name!r} has no quantity between its statistic and unit; e.g. p99_ttft_ms")
    return statistic, quantity, unit


_KEY_NAME = re.compile(r"(?:^|,)([A-Za-z_][A-Za-z0-9_.\-]*)=")


def point_key_names(key: str) -> list[str]:
    """The knob names in a point key (``dtype=fp16,size=2048`` -> ``["dtype", "size"]``)."""
    return [m.group(1) for m in _KEY_NAME.finditer(str(key or ""))]


def run_knobs(point_keys: Iterable[Any], config_keys: Iterable[str] = ()) -> frozenset[str]:
    """A run's knobs: the names in its point keys (swept) and its study config's fields (held fixed).

    A fixed setting a record repeats (``max_concurrency``, ``burstiness``, ``idle_baseline_s``) is a
    knob too: set by the user, never measured, whatever its name ends in.

    Args:
        point_keys: the records' ``point_key`` values.
        config_keys: the fields of config.json's ``study_config``.
    """
    names = {n for k in point_keys for n in point_key_names(k)}
    return frozenset(names | set(config_keys))


def column_role(name: str, knobs: set[str] | frozenset[str] | list[str]) -> str:
    """What the record column ``name`` is: :data:`KNOB`, :data:`METRIC`, :data:`MACHINE`, :data:`BOOKKEEPING` or :data:`DESCRIPTOR`.

    Knobs are the point's parameters (the names in its ``point_key``; pass them as ``knobs``),
    whatever their names look like: ``request_rate_rps`` and ``power_limit_w`` end in a unit
    but are set, not measured. A metric is any other column that follows the naming rule
    (:func:`parse_metric`); the rest (``dtype``, ``experiment``, ``device_name``) describe the point.

    Args:
        name: a column of a stored record.
        knobs: the run's knob names.
    """
    if name in knobs:
        return KNOB
    if name in MACHINE_COLUMNS:
        return MACHINE
    if name in BOOKKEEPING_COLUMNS or name.startswith("_"):
        return BOOKKEEPING
    try:
        parse_metric(name)
    except MetricNameError:
        return DESCRIPTOR
    return METRIC


def metric_name(statistic: str | None, quantity: str, unit: str) -> str:
    """The key for (statistic, quantity, unit): the inverse of :func:`parse_metric`."""
    return "_".join(p for p in (statistic, quantity, unit) if p)


def with_prefix(name: str, prefix: str) -> str:
    """``name`` for a window ``prefix``: after the statistic (``mean_power_w`` -> ``mean_steady_power_w``).

    A name that is not a metric (``gpu0_power_kind``) just gets the prefix in front.
    """
    if not prefix:
        return name
    try:
        statistic, quantity, unit = parse_metric(name)
    except MetricNameError:
        return prefix + name
    return metric_name(statistic, prefix + quantity, unit)


def is_estimated(provenance: str | None) -> bool:
    """Whether a provenance string marks an estimated (modeled) value."""
    return str(provenance or "").startswith(PROV_ESTIMATED)


class Record(Mapping[str, Any]):
    """A flat record under construction: values with their null reasons, provenance and warnings.

    Read it like a dict (``rec["energy_j"]``, ``rec.get(...)``, ``"k" in rec``); write it
    only through :meth:`set`, :meth:`null`, :meth:`derive`, :meth:`merge` and :meth:`warn`,
    so that no value loses its reason or provenance.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}
        self.provenance: dict[str, str] = {}
        self.warnings: list[str] = []
        #: keys whose +inf is a value of their own (serve-sweep's max-throughput rate), kept as-is
        self.infinite_ok: set[str] = set()
        for k, v in (values or {}).items():
            self.set(k, v)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Record({self._values!r}, reasons={self.reasons!r}, provenance={self.provenance!r})"

    def set(self, key: str, value: Any, provenance: str | None = None, *, reason: str | None = None,
            allow_inf: bool = False) -> Record:
        """Store ``value`` under ``key``.

        Args:
            key: the column.
            value: its value; None needs ``reason`` (else it reads "not measured").
            provenance: what measured it (``nvml``, ``rapl``, ``estimated: ...``).
            reason: why a None value is missing.
            allow_inf: ``+inf`` is a meaningful value here (stored as-is; otherwise the
                runner turns non-finite numbers into nulls).
        """
        if value is None:
            return self.null(key, reason or "not measured")
        self._values[key] = value
        if allow_inf:
            self.infinite_ok.add(key)
        self.reasons.pop(key, None)
        if provenance is not None:
            self.provenance[key] = provenance
        else:
            self.provenance.pop(key, None)
        return self

    def update(self, values: Mapping[str, Any]) -> Record:
        """:meth:`set` each item (values without provenance, e.g. knobs and descriptors)."""
        for k, v in values.items():
            self.set(k, v)
        return self

    def null(self, key: str, reason: str) -> Record:
        """Store ``key`` as missing, with the reason the report shows."""
        self._values[key] = None
        self.reasons[key] = reason
        self.provenance.pop(key, None)
        return self

    def reason(self, key: str) -> str | None:
        """Why ``key`` is missing (None when it has a value)."""
        if self._values.get(key) is not None:
            return None
        return self.reasons.get(key, "not measured" if key in self._values else f"{key} was not recorded")

    def derive(self, key: str, fn: Callable[..., Any], *sources: str, formula: str | None = None,
               reason: str | None = None) -> Record:
        """``key = fn(*values of sources)``, null with the first missing source's reason.

        Args:
            key: the derived column.
            fn: computes it from the sources' values; returning None (e.g. a division by
                zero avoided) makes it null with ``reason``.
            sources: the keys it derives from.
            formula: how it is derived, appended to the inherited provenance.
            reason: why it is null when every source has a value but ``fn`` returned None.
        """
        for s in sources:
            if self._values.get(s) is None:
                return self.null(key, self.reason(s) or "not measured")
        value = fn(*(self._values[s] for s in sources))
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return self.null(key, reason or f"{formula or key} is undefined for these values")
        provs = list(dict.fromkeys(p for s in sources if (p := self.provenance.get(s))))
        prov = None
        if provs:
            estimated = [p for p in provs if is_estimated(p)]
            prov = estimated[0] if estimated else ",".join(provs)
        if formula and prov is not None:
            prov = f"{prov} ({formula})"
        return self.set(key, value, prov)

    def warn(self, message: str) -> Record:
        """Add a warning the run log and report show."""
        self.warnings.append(message)
        return self

    def merge(self, other: Mapping[str, Any]) -> Record:
        """Take ``other``'s values (later wins) with its reasons, provenance and warnings."""
        if isinstance(other, Record):
            for k, v in other.items():
                if v is None:
                    self.null(k, other.reasons.get(k, "not measured"))
                else:
                    self.set(k, v, other.provenance.get(k), allow_inf=k in other.infinite_ok)
            self.warnings.extend(other.warnings)
        else:
            self.update(other)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The values only (a copy)."""
        return dict(self._values)


def as_record(rec: Mapping[str, Any]) -> Record:
    """``rec`` as a :class:`Record` (a plain dict's None values read "not measured").

    Raises:
        TypeError: a plain dict carries the old ``_reasons``/``_provenance``/``_warnings`` keys.
    """
    if isinstance(rec, Record):
        return rec
    magic = sorted(k for k in rec if k.startswith("_"))
    if magic:
        raise TypeError(f"record keys {', '.join(magic)}: build the record with charbench.record.Record "
                        "(null(key, reason), set(key, value, provenance), warn(message)) instead of magic keys")
    return Record(rec)
